import { merge, type MonoTypeOperatorFunction, type Observable } from 'rxjs';
import { tap } from 'rxjs';
import { Machine } from '../machine/machine.js';
import type { MemslotSpec } from '../machine/guest-memory.js';
import { NativeHooks } from '../machine/hooks.js';
import type { Vcpu } from '../machine/vcpu.js';
import { resolveCostProfile, type CostModelInput } from '../cost/schema.js';
import { modelCycles, type CostReport } from '../cost/model.js';
import { mmuEventKindsOf, type MmuDecisionOf, type MmuEvent } from '../exits/mmu-events.js';
import { countAndObserveExits, isNoopObservers, type ExitRecorder, type ExitTracer } from '../exits/observers.js';
import { ExitChannel, exitPipeline, MmuEventChannel, mmuEventPipeline } from '../exits/pipeline.js';
import type { FaultPolicy, PolicySetupContext, PolicyVcpuContext } from '../exits/policy.js';
import { keyCache, mergeStats, Stats, type StatCell } from '../exits/stats.js';

const mmuEventKey = keyCache('mmu_events.');
import type { VmExit } from '../exits/vm-exit.js';
import { CAPABILITIES, type Backend } from './backend.js';
import { composeVariant } from './compose.js';
import { DEFAULT_MODULE_SOURCES, type ModuleSources } from './modules.js';
import type { Mmu, MmuHost } from './mmu.js';
import { TYPES } from './tokens.js';
import { VariantError, type Variant, type VariantInput } from './variant.js';
import { VmHooks } from './vm-hooks.js';
import type { Container } from 'inversify';

export interface CreateVmOptions {
  /** Where the backend, MMU and built-in policy modules come from (default: the monorepo's package names). */
  readonly sources?: ModuleSources;
  /** Seed of the machine's scheduler. */
  readonly seed?: number;
  /** The guest-physical layout (default: one RAM slot of `variant.memory` bytes from 0). */
  readonly memslots?: readonly MemslotSpec[];
  /** The guest's MAXPHYADDR, 36..52 (default 46). */
  readonly maxPhyAddr?: number;
  /** The host's (the processor's) MAXPHYADDR, from the guest's to 52 (default: the guest's). */
  readonly hostMaxPhyAddr?: number;
  /** Observers to use instead of the container's (no-op) ones. */
  readonly tracer?: ExitTracer;
  readonly recorder?: ExitRecorder;
}

/** The counters of a VM: per vCPU, and their merge. */
export interface VmCounters {
  readonly perVcpu: readonly Record<string, number>[];
  readonly total: Record<string, number>;
}

/**
 * A composed VM: the machine, the backend and MMU below it, one exit pipeline and one MMU-event stream per
 * vCPU. Per-vCPU counters under KVM's names; the VM's totals are their merge. The vCPUs' `hooks` are the
 * VM's (`VmHooks`), or native ones for backend 'none'.
 */
export class Vm implements MmuHost {
  readonly machine: Machine;
  readonly vcpus: readonly Vcpu[];
  readonly stats: readonly Stats[];
  readonly backendStates: readonly unknown[];
  readonly hooks: readonly VmHooks[];
  /** Every exit of every vCPU after its pipeline (hot; subscribe before running). */
  readonly exits$: Observable<VmExit>;
  private readonly exitChannels: ExitChannel[] = [];
  private readonly mmuChannels: MmuEventChannel[] = [];
  /** Per vCPU: how an event that no policy may decide is decided, counted, traced and recorded. */
  private readonly mmuDirect: ((ev: MmuEvent, fallback: unknown) => void)[] = [];
  /** Per vCPU: the event kinds its policies may decide (the others need no stream), or null for all kinds. */
  private readonly mmuDecidable: (ReadonlySet<MmuEvent['kind']> | null)[] = [];
  /** Per vCPU: its MMU-event counters when no tracer or recorder would see its events (see `decideByDefault`), else null. */
  private readonly mmuQuiet: (MmuEventCounts | null)[] = [];

  constructor(
    readonly variant: Variant,
    readonly backend: Backend | null,
    readonly mmu: Mmu | null,
    readonly policies: readonly { policy: FaultPolicy<unknown>; options: unknown }[],
    private readonly capabilities: (name: string) => unknown,
    tracer: ExitTracer,
    recorder: ExitRecorder,
    seed: number,
    machineOptions: { memslots?: readonly MemslotSpec[]; maxPhyAddr?: number; hostMaxPhyAddr?: number } = {},
  ) {
    this.machine = new Machine({
      memoryBytes: variant.memory,
      vcpus: variant.vcpus,
      seed,
      memslots: machineOptions.memslots,
      maxPhyAddr: machineOptions.maxPhyAddr,
      hostMaxPhyAddr: machineOptions.hostMaxPhyAddr,
    });
    this.vcpus = this.machine.vcpus;
    this.stats = this.vcpus.map(() => new Stats());
    const backendStates: unknown[] = [];
    const hooks: VmHooks[] = [];
    if (backend !== null && mmu !== null) {
      const mode = mmu.name;
      for (const v of this.vcpus) backendStates.push(backend.createState(v.id, mode));
      mmu.init(this);
      const setupCtx = this.setupContext(backend, mmu, backendStates, null);
      for (const { policy, options } of policies) policy.setup?.({ ...setupCtx, options });
      for (const v of this.vcpus) {
        const stats = this.stats[v.id]!;
        const vctx = this.setupContext(backend, mmu, backendStates, v);
        const ctxFor = (options: unknown): PolicyVcpuContext<unknown> => ({ ...vctx, options }) as PolicyVcpuContext<unknown>;
        const exitOps = policies.flatMap(({ policy, options }) => (policy.exits ? [policy.exits(ctxFor(options))] : []));
        const mmuOps = policies.flatMap(({ policy, options }) => (policy.mmuEvents ? [policy.mmuEvents(ctxFor(options))] : []));
        let vmHooks: VmHooks | null = null;
        const channel = new ExitChannel(exitPipeline(exitOps, (e) => vmHooks!.handleExit(e), [countAndObserveExits(stats, tracer, recorder)]));
        vmHooks = new VmHooks(v, backend, backendStates[v.id], mmu, channel, stats);
        const quiet = isNoopObservers(tracer, recorder);
        const eventCounts = new MmuEventCounts(stats);
        const mmuObserver: MonoTypeOperatorFunction<MmuEvent> = tap((ev: MmuEvent) => {
          eventCounts.count(ev.kind);
          if (quiet) return;
          tracer.traceMmuEvent(ev);
          recorder.recordMmuEvent(ev);
        });
        let mmuChannel: MmuEventChannel | null = null;
        mmuChannel = new MmuEventChannel(mmuEventPipeline(() => mmuChannel!, mmuOps, [mmuObserver]));
        // An event no policy on this vCPU may decide (none takes MMU events, or none names its kind): the MMU's
        // own choice stands, so the event needs no stream; it is still counted, traced and recorded exactly as
        // the pipeline's observers would.
        this.mmuDirect.push((ev: MmuEvent, fallback: unknown) => {
          (ev as { decision: unknown }).decision = fallback;
          ev.decidedBy = 'mmu';
          eventCounts.count(ev.kind);
          tracer.traceMmuEvent(ev);
          recorder.recordMmuEvent(ev);
        });
        this.mmuDecidable.push(mmuEventKindsOf(mmuOps));
        this.mmuQuiet.push(quiet ? eventCounts : null);
        this.exitChannels.push(channel);
        this.mmuChannels.push(mmuChannel);
        hooks.push(vmHooks);
        v.hooks = vmHooks;
        mmu.attachVcpu(v);
      }
    } else {
      for (const v of this.vcpus) v.hooks = new NativeHooks();
    }
    this.backendStates = backendStates;
    this.hooks = hooks;
    this.exits$ = merge(...this.exitChannels.map((c) => c.output));
  }

  private setupContext(backend: Backend, mmu: Mmu, backendStates: unknown[], vcpu: Vcpu | null): Omit<PolicyVcpuContext<unknown>, 'options'> {
    const base: Omit<PolicySetupContext<unknown>, 'options'> = {
      backend,
      mmu,
      vcpus: this.vcpus,
      backendStates,
      capability: <T>(name: string): T => this.capabilities(name) as T,
    };
    if (vcpu === null) return base as Omit<PolicyVcpuContext<unknown>, 'options'>;
    const stats = this.stats[vcpu.id]!;
    return { ...base, vcpu, backendState: backendStates[vcpu.id], count: (name: string, n = 1) => stats.add(name, n) };
  }

  /** MmuHost: adds to a vCPU's KVM-named counter. */
  count(vcpuId: number, name: string, n = 1): void {
    this.stats[vcpuId]!.add(name, n);
  }

  /** MmuHost: an MMU decision through the vCPU's `mmuEvents` stream (policies first, then `fallback`). */
  decide<E extends MmuEvent>(event: E, fallback: MmuDecisionOf<E>): MmuDecisionOf<E> {
    const decidable = this.mmuDecidable[event.vcpu];
    if (decidable !== undefined && decidable !== null && !decidable.has(event.kind)) {
      this.mmuDirect[event.vcpu]!(event, fallback);
      return fallback;
    }
    const ch = this.mmuChannels[event.vcpu];
    if (ch === undefined) return fallback;
    return ch.decide(event, fallback);
  }

  /** MmuHost: no policy, tracer or recorder would see this MMU event: count it, and the MMU's choice stands. */
  decideByDefault(vcpuId: number, kind: MmuEvent['kind']): boolean {
    const q = this.mmuQuiet[vcpuId];
    if (q === undefined || q === null) return false;
    const decidable = this.mmuDecidable[vcpuId];
    if (decidable === undefined || decidable === null || decidable.has(kind)) return false;
    q.count(kind);
    return true;
  }

  /** Per-vCPU counters (with the guest-side counts the cost model prices) and their merge. */
  counters(): VmCounters {
    const perVcpu = this.vcpus.map((v) => {
      const s = this.stats[v.id]!.snapshot();
      s['guest.page_faults'] = v.pageFaultsDelivered;
      s['guest.accesses'] = v.accesses;
      s['walks'] = v.walks;
      s['walk_refs'] = v.walkRefs;
      s['tlb_misses'] = v.tlb.misses;
      return Object.fromEntries(Object.entries(s).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    });
    return { perVcpu, total: mergeStats(perVcpu) };
  }

  /** Modelled cycles of the run so far under the variant's cost model (or `profile`). */
  cycles(profile: CostModelInput = this.variant.costModel): CostReport {
    return modelCycles(resolveCostProfile(profile), this.counters().total);
  }
}

/** The `mmu_events.<kind>` counters of one vCPU, each cell taken at its first event (no lookup after that). */
class MmuEventCounts {
  private pteWrite: StatCell | null = null;
  private flood: StatCell | null = null;
  private prefetch: StatCell | null = null;
  private unsync: StatCell | null = null;
  private trackedWrite: StatCell | null = null;

  constructor(private readonly stats: Stats) {}

  count(kind: MmuEvent['kind']): void {
    switch (kind) {
      case 'pte-write':
        (this.pteWrite ??= this.stats.cell(mmuEventKey(kind))).n++;
        return;
      case 'flood':
        (this.flood ??= this.stats.cell(mmuEventKey(kind))).n++;
        return;
      case 'prefetch':
        (this.prefetch ??= this.stats.cell(mmuEventKey(kind))).n++;
        return;
      case 'unsync':
        (this.unsync ??= this.stats.cell(mmuEventKey(kind))).n++;
        return;
      case 'tracked-write':
        (this.trackedWrite ??= this.stats.cell(mmuEventKey(kind))).n++;
        return;
      default:
        this.stats.add(mmuEventKey(kind));
    }
  }
}

/**
 * Composes `variant` (validated by `variantSchema`) into a VM: loads the backend's, the MMU's and the
 * policies' ContainerModules into one inversify container, checks every policy's needs, and builds the
 * machine. Any problem throws a VariantError listing them all; nothing is created then.
 */
export async function createVm(variant: VariantInput, options: CreateVmOptions = {}): Promise<Vm> {
  const comp = await composeVariant(variant, options.sources ?? DEFAULT_MODULE_SOURCES);
  if (comp.problems.length > 0 || comp.variant === null) throw new VariantError(comp.problems);
  const c: Container = comp.container;
  const v = comp.variant;
  const backend = v.backend === 'none' ? null : c.get<Backend>(TYPES.Backend);
  const mmu = v.backend === 'none' ? null : c.get<Mmu>(TYPES.Mmu);
  if (backend !== null && backend.name !== v.backend)
    throw new VariantError([{ path: 'backend', message: `the module for '${v.backend}' bound a '${backend.name}' backend` }]);
  const capability = (name: string): unknown => {
    const cap = CAPABILITIES[name];
    if (cap === undefined || !c.isBound(cap.token)) throw new RangeError(`capability '${name}' is not bound in this VM`);
    return c.get(cap.token);
  };
  return new Vm(
    v,
    backend,
    mmu,
    comp.policies,
    capability,
    options.tracer ?? c.get<ExitTracer>(TYPES.ExitTracer),
    options.recorder ?? c.get<ExitRecorder>(TYPES.ExitRecorder),
    options.seed ?? 0,
    {
      memslots: options.memslots,
      maxPhyAddr: options.maxPhyAddr,
      hostMaxPhyAddr: options.hostMaxPhyAddr,
    },
  );
}
