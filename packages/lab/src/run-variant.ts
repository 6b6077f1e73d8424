import {
  resolveCostProfile,
  JsonLinesTracer,
  VariantError,
  createVm,
  DirtyLog,
  type DirtyLogMmu,
  hexU64,
  modelCycles,
  PT_ACCESSED,
  PT_DIRTY,
  type CostReport,
  type ExitTracer,
  type ModuleSources,
  type PagingModeName,
  type Variant,
  type Vm,
} from '@vmexit/core';
import {
  createTraceLoader,
  GuestConfigError,
  TraceError,
  WorkloadError,
  nativeCounters,
  runWorkload,
  type GuestFaultEvent,
  type Personality,
  type RunOutcome,
  type RunResult,
  type TraceLoader,
} from '@vmexit/guest';
import { InputError, RunFailure } from './errors.js';
import { checkModeMemory } from './variant-spec.js';
import { timeMmuLock } from './lock-time.js';

/** What one run needs: the workload and guest shape, and the variant below it. */
export interface VariantRunOptions {
  readonly workload: string;
  readonly mode: PagingModeName;
  readonly seed: number;
  readonly personalities: readonly Personality[];
  /** The composed variant (backend, mmu, policies, vcpus, memory, cost model). */
  readonly variant: Variant;
  /** Check the MMU's invariants after every exit (`--audit`). */
  readonly audit?: boolean;
  /** Where exits and MMU decisions are traced (`--trace`). */
  readonly tracer?: ExitTracer;
  /** Called as the run goes: accesses made so far, and the total when the workload knows it. */
  readonly onProgress?: (accesses: number, total: number | null) => void;
  /** Where the variant's modules come from (default: the monorepo's packages); tests bind their own MMU here. */
  readonly sources?: ModuleSources;
  /** Loads a trace workload (default: read and decode the file); runs on one trace may share one (`createTraceLoader`). */
  readonly loadTrace?: TraceLoader;
  /** Called with the VM once it is composed, before the guest boots (not for a native run). */
  readonly onVm?: (vm: Vm) => void;
}

/** What a composed policy declares it counts (`FaultPolicy.counters`): its name and the counters, in print order. */
export interface PolicyCounters {
  readonly policy: string;
  readonly counters: readonly string[];
}

/**
 * A RunResult with the modelled cycles of the variant's cost model, and, when the variant composes policies,
 * `policyCounters`: each composed policy in the order of `variant.policies`, with the counters it declares
 * (`FaultPolicy.counters`, keys of `counters.total`), so that a reader of the result needs no policy object.
 */
export type VariantRunResult = RunResult & { cycles: CostReport; policyCounters?: readonly PolicyCounters[] };

/** One run on a variant: its result (counters, cycles, digest) and how the run ended. */
export interface VariantRunOutcome {
  readonly result: VariantRunResult;
  readonly outcome: RunOutcome;
  readonly vm: Vm | null;
}

/**
 * `variant` with the `pml` policy (page-modification logging) composed, when it is not already: what
 * `vmexit migrate --dirty-log pml` and `dirty-log-test:harvest=pml` run on, so that a backend or MMU without PML
 * is refused at composition, naming the capability it lacks.
 */
export function withPmlPolicy(variant: Variant): Variant {
  if (variant.policies.some((p) => p.use === 'pml')) return variant;
  return { ...variant, policies: [...variant.policies, { use: 'pml', options: {} }] };
}

/** Whether a workload spec is dirty-log-test harvested with PML (`dirty-log-test:...harvest=pml...`). */
function harvestsWithPml(workload: string): boolean {
  return /^dirty-log-test:(.*,)?harvest=pml(,|$)/.test(workload);
}

/** The VM of a variant with a backend (bad input becomes an InputError), with the MMU's audit after every exit under `--audit`. */
async function composeVariantVm(o: VariantRunOptions): Promise<Vm> {
  const v = harvestsWithPml(o.workload) ? withPmlPolicy(o.variant) : o.variant;
  let vm: Vm;
  try {
    vm = await createVm(
      { ...v, guest: { ...v.guest, mode: o.mode, personality: o.personalities.length > 0 ? o.personalities.join(',') : 'linux' } },
      { seed: o.seed, tracer: o.tracer, sources: o.sources },
    );
  } catch (e) {
    if (e instanceof VariantError) throw new InputError(`invalid variant:\n${e.message}`);
    throw e;
  }
  o.onVm?.(vm);
  if (o.audit === true) {
    const mmu = vm.mmu;
    if (mmu === null || mmu.audit === undefined) throw new InputError(`--audit: the '${v.mmu}' MMU has no audit`);
    for (const h of vm.hooks) h.afterExit = () => mmu.audit!();
  }
  return vm;
}

/**
 * Runs a workload on a variant: natively for backend `none`, otherwise on a VM composed by `createVm` (the
 * guest OS model boots on the VM's machine, so every exit of its page-table writes, faults and CR3 loads goes
 * through the variant). The counters are the VM's, per vCPU and merged, from the end of boot to the end of the
 * run; modelled cycles price them under the variant's cost model. Bad input becomes an InputError (exit 2).
 */
export async function runOnVariant(o: VariantRunOptions): Promise<VariantRunOutcome> {
  const v = harvestsWithPml(o.workload) ? withPmlPolicy(o.variant) : o.variant;
  checkModeMemory(o.mode, v.memory);
  const vm = v.backend === 'none' ? null : await composeVariantVm(o);
  let outcome: RunOutcome;
  try {
    outcome = runWorkload({
      workload: o.workload,
      mode: o.mode,
      vcpus: v.vcpus,
      memory: v.memory,
      seed: o.seed,
      personalities: o.personalities,
      machine: vm === null ? undefined : vm.machine,
      variant: describeVariant(v),
      counters:
        vm === null
          ? undefined
          : (_machine, at) => {
              o.tracer?.traceWindow?.(at);
              const c = vm.counters();
              return { total: c.total, vcpus: c.perVcpu.map((x) => ({ ...x })) };
            },
      onProgress: o.onProgress,
      loadTrace: o.loadTrace,
      dirtyLog: vm === null ? undefined : () => attachDirtyLog(vm),
    });
  } catch (e) {
    if (e instanceof WorkloadError || e instanceof TraceError || e instanceof GuestConfigError) throw new InputError(e.message);
    throw e;
  }
  const profile = resolveCostProfile(v.costModel);
  const total =
    v.backend === 'none' ? { ...outcome.result.counters.total, 'guest.page_faults': outcome.result.guest.faults.total } : outcome.result.counters.total;
  const result: VariantRunResult = {
    ...outcome.result,
    cycles: modelCycles(profile, total),
    // Only with policies, so that the results of variants without them stay as they were.
    ...(vm !== null && vm.policies.length > 0
      ? { policyCounters: vm.policies.map(({ policy }) => ({ policy: policy.name, counters: [...(policy.counters ?? [])] })) }
      : {}),
  };
  return { result, outcome, vm };
}

/**
 * A dirty log attached to the VM's MMU, for a workload that harvests it itself (dirty-log-test's `harvest`):
 * attached only on request, since an attached log changes what the MMU counts (`mmu_lock.acquired`; with several
 * vCPUs the lock is timed too, `timeMmuLock`: `mmu_lock.contended`, `mmu_lock.spin_cycles`). Null when the MMU
 * has no dirty logging.
 */
function attachDirtyLog(vm: Vm): DirtyLog | null {
  const mmu = vm.mmu as (Partial<DirtyLogMmu> & { name: string }) | null;
  if (mmu === null || typeof mmu.attachDirtyLog !== 'function') return null;
  const log = new DirtyLog(vm.machine.memory);
  mmu.attachDirtyLog(log);
  if (mmu.mmuLock !== undefined) timeMmuLock(vm, { mmuLock: mmu.mmuLock });
  return log;
}

/** The variant as it appears in a result: what it is, not where its modules came from. */
export function describeVariant(v: Variant): Record<string, unknown> {
  return {
    backend: v.backend,
    ...(v.backend === 'none' ? {} : { mmu: v.mmu, policies: v.policies.map((p) => (Object.keys(p.options).length > 0 ? p : p.use)) }),
    // Only when the variant names one (absent: 4 KiB), so that results of variants without it stay as they were.
    ...(v.hostPages !== undefined ? { hostPages: v.hostPages } : {}),
    costModel: typeof v.costModel === 'string' ? v.costModel : v.costModel.name,
  };
}

/**
 * What a guest can observe of a run, as `--check` compares it: the #PFs its handler received in order (with
 * the kind its handler resolved each as, `sigsegv` for the ones that ended in SIGSEGV), the SIGSEGVs it sent,
 * and its final memory.
 */
export interface GuestView {
  readonly events: {
    readonly length: number;
    /** The `i`-th #PF the guest's handler received. */
    at(i: number): GuestFaultEvent;
  };
  readonly sigsegv: number;
  readonly memory: {
    /** Bytes of guest RAM (every memslot). */
    readonly size: number;
    /** The 32-bit word at guest-physical address `pa` (zero in a page never written). */
    read32(pa: number): number;
    /** The gfns of the pages that have host memory behind them (written at least once), ascending. */
    backedGfns(): number[];
  };
  readonly memoryDigest: string;
  /**
   * Guest-physical addresses of paging-structure entries in which the guest cleared A or D (1 to 0) and
   * then did not invalidate the translations that use the entry (the precondition of `stale-accessed-dirty`).
   * The guest OS model records none: it never clears A or D in a live entry (fork writes A=0 only into the
   * child's new entries) and it invalidates after every change that lowers rights.
   */
  readonly staleFlagEntries?: ReadonlySet<number>;
}

/** The guest's view of a run of the guest OS model. */
export function guestViewOf(o: RunOutcome): GuestView {
  return { events: o.events, sigsegv: o.result.guest.sigsegv, memory: o.machine.memory, memoryDigest: o.result.memoryDigest };
}

/**
 * The differences between a native run and a virtualized one that the architecture allows, so a guest
 * cannot take them as a sign of a hypervisor; `--check` accepts these and names the rule in its report.
 * None occurs on the bundled workloads today (the shadow MMU syncs every write-protected gpte write before
 * the guest runs on, so it never keeps a translation the hardware would not): the table is what a variant
 * that keeps stale translations longer (unsync pages, bypassed not-present faults) may show.
 */
export const ALLOWED_DIFFERENCES = {
  'spurious-page-fault': {
    rule: 'SDM Vol. 3A §4.10.4.3',
    when:
      'a #PF in one run only, that the guest resolved as spurious (its pte already allowed the access, so its handler changed nothing): ' +
      'after software raises the rights of an entry (P, R/W or U/S 0 to 1, XD 1 to 0) without invalidating, a processor may still use ' +
      'the old translation and fault, "but no other adverse behavior"',
  },
  'stale-accessed-dirty': {
    rule: 'SDM Vol. 3A §4.8, §4.10.4.3',
    when:
      'a final-memory word of a guest paging-structure entry that differs only in A (bit 5) or D (bit 6), where the guest cleared that ' +
      'flag without invalidating: a processor that still caches a translation using the entry may access through it without setting the flag again',
  },
} as const;
/** The id of an allowed native-vs-variant difference (a key of ALLOWED_DIFFERENCES). */
export type AllowedDifferenceId = keyof typeof ALLOWED_DIFFERENCES;

/** One difference `--check` accepted: which rule, and where. */
export interface AllowedDifference {
  readonly id: AllowedDifferenceId;
  readonly rule: string;
  readonly detail: string;
}

/** The first difference a guest could see: an event (by its index in each run's sequence) or a memory word. */
export type CheckDifference =
  | {
      readonly what: 'event';
      readonly nativeIndex: number;
      readonly variantIndex: number;
      readonly native: GuestFaultEvent | null;
      readonly variant: GuestFaultEvent | null;
    }
  | { readonly what: 'sigsegv-count'; readonly native: number; readonly variant: number }
  | MemoryDifference;

/** A word of final memory (null gpa: the memory sizes differ). */
export interface MemoryDifference {
  readonly what: 'memory';
  readonly gpa: number | null;
  readonly native: number | null;
  readonly variant: number | null;
}

/** What `--check` compares, and where the first difference is. */
export interface CheckReport {
  readonly ok: boolean;
  readonly compared: { readonly faults: number; readonly sigsegv: number };
  /** The first difference, in words, or null. */
  readonly divergence: string | null;
  readonly first: CheckDifference | null;
  /** The differences the architecture allows that were found, each with its rule (the first 20); none on the bundled workloads. */
  readonly allowed: readonly AllowedDifference[];
  readonly allowedTotal: number;
}

/** A and D, bits 5 and 6 of every paging-structure entry format (SDM Vol. 3A §4.8; Tables 4-4..4-20). */
const PTE_ACCESSED_DIRTY = PT_ACCESSED | PT_DIRTY;
const PAGE_BYTES = 4096;
const PAGE_WORDS = PAGE_BYTES / 4;
/** At most this many allowed differences are listed one by one. */
const ALLOWED_LISTED = 20;

/**
 * `--check`: compares what the guest observed natively and under the variant (a guest must not be able to
 * tell that it runs virtualized): event by event, the #PFs its handler received (address, error
 * code, vCPU, process, and how the handler resolved it, which marks the ones that ended in SIGSEGV), then the
 * number of SIGSEGVs, then the final memory word by word. A difference that ALLOWED_DIFFERENCES allows is
 * listed in `allowed` with its rule; the first other one makes the report fail, naming both sides.
 */
export function compareGuestViews(native: GuestView, virt: GuestView): CheckReport {
  const a = native.events;
  const b = virt.events;
  const allowed: AllowedDifference[] = [];
  let allowedCount = 0;
  const allow = (id: AllowedDifferenceId, detail: string): void => {
    allowedCount++;
    if (allowed.length < ALLOWED_LISTED) allowed.push({ id, rule: ALLOWED_DIFFERENCES[id].rule, detail });
  };
  let first: CheckDifference | null = null;
  let divergence: string | null = null;
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const x = i < a.length ? a.at(i) : null;
    const y = j < b.length ? b.at(j) : null;
    if (x !== null && y !== null && sameEvent(x, y)) {
      i++;
      j++;
      continue;
    }
    // A fault in one run that the guest found spurious changed nothing it can see afterwards: skip it.
    if (x !== null && x.kind === 'spurious') {
      allow('spurious-page-fault', `native guest event #${i}: ${fmtEvent(x)}`);
      i++;
      continue;
    }
    if (y !== null && y.kind === 'spurious') {
      allow('spurious-page-fault', `variant guest event #${j}: ${fmtEvent(y)}`);
      j++;
      continue;
    }
    first = { what: 'event', nativeIndex: i, variantIndex: j, native: x, variant: y };
    const side = (e: GuestFaultEvent | null, n: number, total: number): string =>
      e === null ? `nothing (the guest received ${total} events, the last #${n - 1})` : fmtEvent(e);
    divergence = `guest event #${i}${i === j ? '' : ` (#${j} under the variant)`}: natively ${side(x, i, a.length)}, under the variant ${side(y, j, b.length)}`;
    break;
  }
  if (first === null && native.sigsegv !== virt.sigsegv) {
    first = { what: 'sigsegv-count', native: native.sigsegv, variant: virt.sigsegv };
    divergence = `SIGSEGVs: ${native.sigsegv} natively, ${virt.sigsegv} under the variant`;
  }
  if (first === null && native.memoryDigest !== virt.memoryDigest) {
    const m = compareMemory(native, virt, allow);
    if (m !== null) {
      first = m;
      const at =
        m.gpa === null
          ? ' (guest memory sizes differ)'
          : ` (first at guest-physical ${hexU64(m.gpa)}: ${hexU64(m.native!)} natively, ${hexU64(m.variant!)} under the variant)`;
      divergence = `final guest memory differs: digest ${native.memoryDigest} natively, ${virt.memoryDigest} under the variant${at}`;
    }
  }
  return { ok: divergence === null, compared: { faults: a.length, sigsegv: native.sigsegv }, divergence, first, allowed, allowedTotal: allowedCount };
}

function sameEvent(x: GuestFaultEvent, y: GuestFaultEvent): boolean {
  return x.address === y.address && x.errorCode === y.errorCode && x.vcpu === y.vcpu && x.pid === y.pid && x.kind === y.kind;
}

function fmtEvent(e: GuestFaultEvent): string {
  const pf = `#PF at ${hexU64(e.address)} error code ${e.errorCode} on vCPU ${e.vcpu} (pid ${e.pid}`;
  return e.kind === 'sigsegv' ? `SIGSEGV after ${pf})` : `${pf}, ${e.kind})`;
}

/** The first word of final memory that differs beyond what ALLOWED_DIFFERENCES allows, or null. */
function compareMemory(native: GuestView, virt: GuestView, allow: (id: AllowedDifferenceId, detail: string) => void): MemoryDifference | null {
  const xm = native.memory;
  const ym = virt.memory;
  if (xm.size !== ym.size) return { what: 'memory', gpa: null, native: null, variant: null };
  const stale = new Set([...(native.staleFlagEntries ?? []), ...(virt.staleFlagEntries ?? [])]);
  // Only pages that either run wrote can differ (a page never written reads as zeros in both): in
  // guest-physical order, word by word.
  const gfns = [...new Set([...xm.backedGfns(), ...ym.backedGfns()])].sort((a, b) => a - b);
  for (const gfn of gfns) {
    for (let k = 0; k < PAGE_WORDS; k++) {
      const gpa = gfn * PAGE_BYTES + k * 4;
      const x = xm.read32(gpa);
      const y = ym.read32(gpa);
      if (x === y) continue;
      if (((x ^ y) & ~PTE_ACCESSED_DIRTY) === 0 && stale.has(gpa)) {
        allow('stale-accessed-dirty', `the entry at guest-physical ${hexU64(gpa)}: ${hexU64(x)} natively, ${hexU64(y)} under the variant`);
        continue;
      }
      return { what: 'memory', gpa, native: x, variant: y };
    }
  }
  return null;
}

/** Runs natively and under the variant and compares; a divergence is a RunFailure naming the first difference. */
export async function runChecked(o: VariantRunOptions): Promise<{ run: VariantRunOutcome; check: CheckReport }> {
  // Both runs replay one decoded trace (a trace workload is read once).
  const loadTrace = o.loadTrace ?? createTraceLoader();
  const native = await runOnVariant({
    ...o,
    variant: { ...o.variant, backend: 'none', policies: [] },
    audit: false,
    tracer: undefined,
    onProgress: undefined,
    loadTrace,
  });
  const run = await runOnVariant({ ...o, loadTrace });
  const check = compareGuestViews(guestViewOf(native.outcome), guestViewOf(run.outcome));
  return { run, check };
}

/** A `--check` divergence as the CLI reports it: a RunFailure (exit 1) naming the first differing event. */
export function checkFailure(check: CheckReport): RunFailure {
  return new RunFailure(`--check: the guest can tell it runs virtualized: ${check.divergence}`);
}

export { JsonLinesTracer, nativeCounters };
