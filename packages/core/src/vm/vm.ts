import { merge, Subject, type Observable } from 'rxjs';
import { Machine } from '../machine/machine.js';
import type { MemslotSpec } from '../machine/guest-memory.js';
import { NativeHooks } from '../machine/hooks.js';
import type { Vcpu } from '../machine/vcpu.js';
import { resolveCostProfile, type CostModelInput } from '../cost/schema.js';
import { modelCycles, type CostReport } from '../cost/model.js';
import type { MmuDecisionOf, MmuEvent, MmuEventKind } from '../exits/mmu-events.js';
import { exitObserver, isNoopObservers, type ExitRecorder, type ExitTracer } from '../exits/observers.js';
import { namedPolicy } from '../exits/policy.js';
import { mergeStats, Stats, type StatCell } from '../exits/stats.js';
import type { VmExit } from '../exits/vm-exit.js';
import { CAPABILITIES, type Backend } from './backend.js';
import { composeVariant } from './compose.js';
import { DEFAULT_MODULE_SOURCES, type ModuleSources } from './modules.js';
import type { Mmu, MmuHost } from './mmu.js';
import type { FaultPolicy, PolicySetupContext, PolicyVcpuContext } from './policy.js';
import { TYPES } from './tokens.js';
import { VariantError, type HostPages, type Variant, type VariantInput } from './variant.js';
import { VcpuMmuEvents } from './vcpu-mmu-events.js';
import { VmHooks } from './vm-hooks.js';
import type { Container } from 'inversify';

/** How `createVm` builds the VM beyond the variant: module sources, scheduler seed, memslots, MAXPHYADDR, and the tracer and recorder to bind. */
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
 *
 * Its public streams, `exits$` and `mmuEvents$`, are hot (subscribe before running) and complete when the VM
 * is disposed (`dispose()`, once its runs are over), so that `toArray()`, `count()` and `lastValueFrom` end;
 * a subscription after that completes at once. A failure in a vCPU's pipeline (a policy that throws, an exit
 * nobody resolved) reaches their subscribers as an error, also after `dispose()`, never as a completion.
 *
 * @example
 * const vm = await createVm({ backend: 'vmx', mmu: 'shadow', memory: '16M' });
 * const exits = lastValueFrom(vm.exits$.pipe(count()));
 * // ... run the guest on vm.vcpus ...
 * vm.dispose();
 * console.log(await exits); // every exit of the run
 */
export class Vm implements MmuHost {
  readonly machine: Machine;
  readonly vcpus: readonly Vcpu[];
  readonly stats: readonly Stats[];
  readonly backendStates: readonly unknown[];
  readonly hooks: readonly VmHooks[];
  /**
   * Every exit of every vCPU after its pipeline, resolved (hot: subscribe before running). Completes at
   * `dispose()`; errors with what failed a vCPU's exit pipeline.
   */
  readonly exits$: Observable<VmExit>;
  /**
   * Every MMU decision of every vCPU after its `mmuEvents` pipeline, decided (hot: subscribe before running).
   * Subscribed before the run, it sees every event the MMU meets; one that comes later misses the kinds that
   * no policy decides (the MMU stopped building their events at the first one: counted only). Completes at
   * `dispose()`; errors with what failed a vCPU's MMU-event pipeline.
   */
  readonly mmuEvents$: Observable<MmuEvent>;
  /** Per vCPU: its MMU decisions (the `mmuEvents` pipeline, see VcpuMmuEvents). */
  private readonly mmuEvents: VcpuMmuEvents[] = [];
  /** Completes at `dispose()`: ends the public streams also of a VM without vCPU pipelines (backend 'none'). */
  private readonly ended = new Subject<never>();
  private isDisposed = false;
  /** The host page size backing guest RAM (`variant.hostPages`; undefined: 4 KiB), for the MMU. */
  readonly hostPages: HostPages | undefined;

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
    this.hostPages = variant.hostPages;
    this.stats = this.vcpus.map(() => new Stats());
    const backendStates: unknown[] = [];
    const hooks: VmHooks[] = [];
    if (backend !== null && mmu !== null) {
      const mode = mmu.name;
      for (const v of this.vcpus) backendStates.push(backend.createState(v.id, mode, { maxPhyAddr: v.ctx.maxPhyAddr, hostMaxPhyAddr: v.hostMaxPhyAddr }));
      this.backendStates = backendStates;
      mmu.init(this);
      const setupCtx = this.setupContext(backend, mmu, backendStates, null);
      for (const [i, { policy, options }] of policies.entries()) refusing(i, policy, 'setup', () => policy.setup?.({ ...setupCtx, options }));
      for (const v of this.vcpus) {
        const stats = this.stats[v.id]!;
        const vctx = this.setupContext(backend, mmu, backendStates, v);
        const ctxFor = (options: unknown): PolicyVcpuContext<unknown> => ({ ...vctx, options }) as PolicyVcpuContext<unknown>;
        const exitOps = policies.flatMap(({ policy, options }, i) =>
          policy.exits
            ? [
                namedPolicy(
                  policy.name,
                  refusing(i, policy, 'exits', () => policy.exits!(ctxFor(options))),
                ),
              ]
            : [],
        );
        const mmuOps = policies.flatMap(({ policy, options }, i) =>
          policy.mmuEvents
            ? [
                namedPolicy(
                  policy.name,
                  refusing(i, policy, 'mmuEvents', () => policy.mmuEvents!(ctxFor(options))),
                ),
              ]
            : [],
        );
        // The exit route of this vCPU: VmHooks -> its exit pipeline (exitOps, then VmHooks.handleExit, then
        // the counters and observers) -> the resolution VmHooks acts on. MMU decisions: VcpuMmuEvents.
        const vmHooks = new VmHooks(v, backend, backendStates[v.id], mmu, stats, exitOps, [], {
          reuseExits: isNoopObservers(tracer, recorder),
          observe: exitObserver(stats, tracer, recorder), // countAndObserveExits, in the handler's link
        });
        this.mmuEvents.push(new VcpuMmuEvents(stats, mmuOps, tracer, recorder));
        hooks.push(vmHooks);
        v.hooks = vmHooks;
        mmu.attachVcpu(v);
      }
    } else {
      for (const v of this.vcpus) v.hooks = new NativeHooks();
    }
    this.backendStates = backendStates;
    this.hooks = hooks;
    // `ended` emits nothing: no work per exit or event, only what makes the merges complete at dispose().
    this.exits$ = merge(...hooks.map((h) => h.channel.output), this.ended);
    this.mmuEvents$ = merge(...this.mmuEvents.map((m) => m.output), this.ended);
  }

  /** Whether `dispose()` was called. */
  get disposed(): boolean {
    return this.isDisposed;
  }

  /**
   * Ends the VM's streams, once (later calls do nothing): `exits$` and `mmuEvents$` complete (a pipeline that
   * failed keeps its error for them), the pipelines' operators are unsubscribed, and an exit or MMU decision
   * after this fails with E_PIPELINE_CLOSED. Counters, memory and the machine stay readable.
   */
  dispose(): void {
    if (this.isDisposed) return;
    this.isDisposed = true;
    const why = 'the VM was disposed';
    for (const h of this.hooks) h.channel.close(why);
    for (const m of this.mmuEvents) m.close(why);
    this.ended.complete();
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

  /** MmuHost: the control state (VMCS, VMCB) of vCPU `vcpuId`. */
  backendState(vcpuId: number): unknown {
    return this.backendStates[vcpuId];
  }

  /** MmuHost: adds to a vCPU's KVM-named counter. */
  count(vcpuId: number, name: string, n = 1): void {
    this.stats[vcpuId]!.add(name, n);
  }

  /** MmuHost: the cell of a vCPU's KVM-named counter (created at 0: take it at the first add). */
  counter(vcpuId: number, name: string): StatCell {
    return this.stats[vcpuId]!.cell(name);
  }

  /** MmuHost: an MMU decision through the vCPU's `mmuEvents` pipeline (policies first, then `fallback`). */
  decide<E extends MmuEvent>(event: E, fallback: MmuDecisionOf<E>): MmuDecisionOf<E> {
    const route = this.mmuEvents[event.vcpu];
    return route === undefined ? fallback : route.decide(event, fallback);
  }

  /** MmuHost: nothing would see an MMU event of this kind on this vCPU: it is counted, and the MMU's choice stands. */
  decideByDefault(vcpuId: number, kind: MmuEventKind): boolean {
    const route = this.mmuEvents[vcpuId];
    return route !== undefined && route.decideByDefault(kind);
  }

  /** MmuHost: whether nothing outside this vCPU's MMU-event pipeline can keep an event now (the MMU may refill one). */
  reusesEvents(vcpuId: number): boolean {
    const route = this.mmuEvents[vcpuId];
    return route !== undefined && route.reusable;
  }

  /** MmuHost: whether every MMU event of this kind on this vCPU is decided by default (fixed at composition). */
  decidesByDefault(vcpuId: number, kind: MmuEventKind): boolean {
    const route = this.mmuEvents[vcpuId];
    return route !== undefined && route.decidesByDefault(kind);
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

/**
 * Calls a policy's `setup`, `exits` or `mmuEvents` while the VM is built: what it throws refuses the VM (the
 * policy API: "throw to refuse a VM"), as a VariantError on `policies.<i>` that names the policy and its reason.
 */
function refusing<R>(i: number, policy: FaultPolicy<unknown>, step: 'setup' | 'exits' | 'mmuEvents', f: () => R): R {
  try {
    return f();
  } catch (e) {
    throw new VariantError([
      { path: `policies.${i}`, message: `policy '${policy.name}' refused the VM in ${step}(): ${e instanceof Error ? e.message : String(e)}` },
    ]);
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
