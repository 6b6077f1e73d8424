import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import { resolveCostProfile, type CostProfile, type ExitTracer, type PagingModeName, type Variant, type Vm, type VmExit } from '@vmexit/core';
import { createTraceLoader, type Personality, type RunResult, type TraceLoader } from '@vmexit/guest';
import { compiledFile } from './cell.js';
import { InputError, RunFailure } from './errors.js';
import { provenance, type Provenance } from './provenance.js';
import { describeVariant, runChecked, runOnVariant, type CheckReport, type VariantRunResult } from './run-variant.js';
import type { SweepProgressInfo } from './progress.js';
import { exitCycles, resumedFaultFixed } from './trace-stats.js';
import { guestProgress } from './lock-time.js';
import { absoluteSpec, parseVariantSpec, type VariantContext, type VariantOverrides } from './variant-spec.js';

/** A variant of a comparison under a column label of the caller's choosing (`--label NAME=VARIANT`). */
export interface LabelledVariant {
  readonly spec: string;
  readonly label: string;
}

/** What `compareVariants` compares: the workload, the variant specs, and the mode, seed and checks of every run. */
export interface ComparisonOptions {
  readonly workload: string;
  /** Variant specs (config files or flag strings, see parseVariantSpec), each optionally with its own column label. */
  readonly variants: readonly (string | LabelledVariant)[];
  readonly mode: PagingModeName;
  readonly seed: number;
  readonly overrides?: VariantOverrides;
  readonly personalities?: readonly Personality[];
  readonly check?: boolean;
  readonly audit?: boolean;
  /**
   * Variants run at once, each on its own worker thread (default 1: one after the other in this thread). Every
   * variant's result is the same either way: each runs on a fresh VM composed from its spec.
   */
  readonly jobs?: number;
  /** Tally each exit reason's count and modelled cycles in the window (`exitReasons`), and show its share and cycles in the table. */
  readonly exitReasons?: boolean;
  /** Counters to show as rows of their own (a policy's counters): names, or globs such as `write_flood.*`. */
  readonly counters?: readonly string[];
  /** Called before each variant runs (in this thread; with `jobs` > 1, as each is handed to a thread). */
  readonly onVariant?: (label: string, index: number, count: number) => void;
  /** Called as variants finish (and once before the first): done, total, elapsed and ETA. */
  readonly onProgress?: (p: SweepProgressInfo) => void;
  readonly context?: VariantContext;
  /** The clock for progress (ms; default `Date.now`): a test's fixed clock. */
  readonly now?: () => number;
  /**
   * Loads the trace of a trace workload, for the variants run in this thread (default: a `createTraceLoader`
   * of this comparison's own, so that the trace is decoded once for all of them; give one to share it across
   * comparisons). Worker threads (`jobs` > 1) load it themselves.
   */
  readonly loadTrace?: TraceLoader;
}

/** One metric of the table: its value for each variant (null: not applicable) and the ratio to the first variant's. */
export interface ComparisonRow {
  readonly metric: string;
  readonly values: readonly (number | null)[];
  /** value / first variant's value; 1 when both are 0; null when either is not applicable, only the first is 0, or the metric is a share. */
  readonly ratios: readonly (number | null)[];
}

/**
 * One exit reason's part of a run, inside the counting window: how many exits, and their modelled cycles as
 * `vmexit trace stats` prices each exit (the round trip of its kind plus the handler's figure for what it
 * did: emulated, injected, or a fixed fault, a #PF or an EPT/NPT fault), and the user-space round trip of each
 * KVM_EXIT_DIRTY_RING_FULL its handling caused: by what the exit's handling counted (`ExitReasonTally.watch`),
 * so that a fault the MMU fixed, or found already fixed (`pf_spurious`, which ran the same handler), has the
 * `pf_fixed` handler and a PML-full exit has none, as the run's modelled cycles price them.
 */
export interface ExitReasonCost {
  readonly reason: string;
  readonly kind: string;
  readonly count: number;
  readonly cycles: number;
}

/** One variant's result in a comparison: the run's result, its column label, the spec it came from, and where it came from. */
export type ComparisonResult = VariantRunResult & {
  label: string;
  spec: string;
  check?: CheckReport;
  /** Per exit reason in the counting window, most frequent first (empty for a native run); with the `exitReasons` option only. */
  exitReasons?: readonly ExitReasonCost[];
  provenance: Provenance;
};

/** What `compareVariants` returns and `vmexit compare --json` prints (schema `vmexit.compare/1`): each variant's result and the metric table. */
export interface ComparisonDocument {
  readonly schema: 'vmexit.compare/1';
  readonly workload: string;
  readonly mode: PagingModeName;
  readonly seed: number;
  /** The `counters` patterns asked for (their rows are in the table). */
  readonly counters?: readonly string[];
  readonly results: readonly ComparisonResult[];
  /** The side-by-side table as data: the rows `formatComparison` prints, columns in `results` order. */
  readonly table: readonly ComparisonRow[];
}

/**
 * Tallies each exit reason's count and modelled cycles inside the counting window (a window start clears the
 * tally, as it restarts the run's counters), at the cost of one map lookup per exit.
 */
export class ExitReasonTally implements ExitTracer {
  private counting = false;
  private readonly byReason = new Map<string, { reason: string; kind: string; count: number; cycles: number }>();
  /** Reads a counter of a vCPU (null: the VM is not watched), and each vCPU's `pf_fixed` / `dirty_ring_full_exits` at its last exit. */
  private statOf: ((vcpu: number, name: string) => number) | null = null;
  private readonly fixedSeen: number[] = [];
  private readonly ringFullSeen: number[] = [];
  constructor(private readonly profile: CostProfile) {}
  /**
   * Watches the VM's counters, so that each exit is priced by what its handling counted, as the run's modelled
   * cycles price those counters: the `pf_fixed` handler when the exit fixed a fault or found it already fixed
   * (`pf_spurious`: the same handler ran; not for a PML-full exit), and the user-space round trip of each
   * KVM_EXIT_DIRTY_RING_FULL it caused (`dirty_ring_full_exits`). Unwatched (`vmexit trace stats`, which reads a
   * trace file), a resumed fault is priced as fixed unless it is a PML-full exit, and ring-full trips are not seen.
   */
  watch(vm: Pick<Vm, 'stats'>): void {
    this.statOf = (vcpu, name) => vm.stats[vcpu]?.get(name) ?? 0;
    this.fixedSeen.length = 0;
    this.ringFullSeen.length = 0;
    for (let v = 0; v < vm.stats.length; v++) {
      this.fixedSeen.push(this.statOf(v, 'pf_fixed') + this.statOf(v, 'pf_spurious'));
      this.ringFullSeen.push(this.statOf(v, 'dirty_ring_full_exits'));
    }
  }
  traceExit(exit: VmExit): void {
    // Kept in step at every exit, counted or not: what the exit's handling added to the vCPU's counters.
    let fixed: boolean | undefined;
    let ringFull = 0;
    if (this.statOf !== null) {
      const v = exit.vcpu;
      const f = this.statOf(v, 'pf_fixed') + this.statOf(v, 'pf_spurious');
      fixed = f > (this.fixedSeen[v] ?? 0);
      this.fixedSeen[v] = f;
      const rf = this.statOf(v, 'dirty_ring_full_exits');
      ringFull = rf - (this.ringFullSeen[v] ?? 0);
      this.ringFullSeen[v] = rf;
    }
    if (!this.counting) return;
    const name = exit.hw.name;
    let r = this.byReason.get(name);
    if (r === undefined) this.byReason.set(name, (r = { reason: name, kind: exit.kind, count: 0, cycles: 0 }));
    r.count++;
    r.cycles += exitCycles(
      this.profile,
      exit.kind,
      exit.resolution?.kind,
      fixed ?? resumedFaultFixed(exit.kind, exit.resolution?.kind, exit.kind === 'nested-fault' && exit.pmlFull === true),
    );
    if (ringFull > 0) r.cycles += ringFull * this.profile.userspaceExit.cycles;
  }
  traceMmuEvent(): void {}
  traceWindow(phase: 'start' | 'end'): void {
    if (phase === 'start') this.byReason.clear();
    this.counting = phase === 'start';
  }
  /** Most frequent first, then by name. */
  reasons(): ExitReasonCost[] {
    return [...this.byReason.values()].map((r) => ({ ...r })).sort((a, b) => b.count - a.count || (a.reason < b.reason ? -1 : 1));
  }
}

/** What one variant of a comparison needs: serialisable, so that a worker thread can run it. */
export interface CompareTask {
  readonly spec: string;
  readonly label?: string;
  readonly workload: string;
  readonly mode: PagingModeName;
  readonly seed: number;
  readonly overrides: VariantOverrides;
  readonly personalities: readonly Personality[];
  readonly check: boolean;
  readonly audit: boolean;
  readonly exitReasons?: boolean;
}

/** Runs one variant of a comparison in this thread. */
export async function runCompareTask(t: CompareTask, context?: VariantContext, composed?: Variant, loadTrace?: TraceLoader): Promise<ComparisonResult> {
  const variant = composed ?? (await parseVariantSpec(t.spec, t.overrides, context));
  const started = provenance(variant);
  const tally = t.exitReasons !== true || variant.backend === 'none' ? undefined : new ExitReasonTally(resolveCostProfile(variant.costModel));
  const reasons = (): { exitReasons?: ExitReasonCost[] } => (t.exitReasons === true ? { exitReasons: tally?.reasons() ?? [] } : {});
  const runOpts = {
    workload: t.workload,
    mode: t.mode,
    seed: t.seed,
    personalities: t.personalities,
    variant,
    audit: t.audit,
    tracer: tally,
    sources: context?.sources,
    loadTrace,
    onVm: (vm: Vm) => tally?.watch(vm),
  };
  const label = (r: VariantRunResult): string => t.label ?? comparisonLabel(r.variant);
  if (t.check && variant.backend !== 'none') {
    const c = await runChecked(runOpts);
    return { ...c.run.result, label: label(c.run.result), spec: t.spec, check: c.check, ...reasons(), provenance: started };
  }
  const r = await runOnVariant(runOpts);
  return { ...r.result, label: label(r.result), spec: t.spec, ...reasons(), provenance: started };
}

/** A compare task's result across a thread: the result, or the error it stopped with (classes do not cross). */
export type CompareOutcome =
  { readonly ok: true; readonly result: ComparisonResult } | { readonly ok: false; readonly error: { name: string; message: string; exitCode?: number } };

/** runCompareTask with any error turned into data (the worker thread's entry). */
export async function runCompareTaskOutcome(t: CompareTask, loadTrace?: TraceLoader): Promise<CompareOutcome> {
  try {
    return { ok: true, result: await runCompareTask(t, undefined, undefined, loadTrace) };
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    const message = err instanceof InputError || err instanceof RunFailure ? err.message : `${err.name}: ${err.message}`;
    return { ok: false, error: { name: err.name, message, exitCode: (err as { exitCode?: number }).exitCode } };
  }
}

const GLOB = /^[A-Za-z0-9_.:*-]+$/;

/** `--counter` patterns, checked: names or globs of letters, digits, `_ . : -` and `*`. */
export function checkCounterPatterns(patterns: readonly string[]): string[] {
  for (const p of patterns)
    if (!GLOB.test(p)) throw new InputError(`--counter '${p}': expected a counter name or a glob such as 'write_flood.*' (letters, digits, _ . : - and *)`);
  return [...patterns];
}

/** Whether `name` matches the glob `pattern` (`*` is any run of characters, dots included). */
export function counterMatches(pattern: string, name: string): boolean {
  return new RegExp(
    `^${pattern
      .split('*')
      .map((part) => part.replace(/\./g, '\\.'))
      .join('.*')}$`,
  ).test(name);
}

/**
 * Runs every variant on the same workload, mode and seed, each on a fresh VM (one after the other, or `jobs`
 * at once on worker threads), and returns their results in the order given with the comparison table.
 * What `vmexit compare --json` prints.
 */
export async function compareVariants(o: ComparisonOptions): Promise<ComparisonDocument> {
  if (o.variants.length === 0) throw new InputError('--variant: give at least one variant');
  const jobs = o.jobs ?? 1;
  if (!Number.isInteger(jobs) || jobs < 1) throw new InputError(`--jobs: expected a positive integer, got ${jobs}`);
  const counters = checkCounterPatterns(o.counters ?? []);
  const given = o.variants.map((v) => (typeof v === 'string' ? { spec: v, label: undefined } : v));
  // Every variant is composed here first, so that a bad one stops the comparison before any runs.
  const variants: { spec: string; label?: string; variant: Variant }[] = [];
  for (const { spec, label } of given) variants.push({ spec, label, variant: await parseVariantSpec(spec, o.overrides ?? {}, o.context) });
  checkColumnLabels(variants);
  const task = (spec: string, label: string | undefined): CompareTask => ({
    spec,
    ...(label !== undefined ? { label } : {}),
    workload: o.workload,
    mode: o.mode,
    seed: o.seed,
    overrides: o.overrides ?? {},
    personalities: o.personalities ?? [],
    check: o.check === true,
    audit: o.audit === true,
    ...(o.exitReasons === true ? { exitReasons: true } : {}),
  });
  const now = o.now ?? Date.now;
  const start = now();
  let done = 0;
  const progress = (): void => {
    const elapsed = now() - start;
    o.onProgress?.({ done, total: variants.length, skipped: 0, elapsedMs: elapsed, etaMs: done === 0 ? null : (elapsed / done) * (variants.length - done) });
  };
  progress();
  const results: ComparisonResult[] = new Array(variants.length);
  const threads = Math.min(jobs, variants.length, availableParallelism() * 4);
  if (threads <= 1) {
    const loadTrace = o.loadTrace ?? createTraceLoader();
    for (const [i, { spec, label, variant }] of variants.entries()) {
      o.onVariant?.(label ?? spec, i, variants.length);
      results[i] = { ...(await runCompareTask(task(spec, label), o.context, variant, loadTrace)), spec };
      done++;
      progress();
    }
  } else {
    if (o.context?.sources !== undefined) throw new InputError('--jobs: variants whose modules are bound in code (context.sources) run in this thread only');
    const pool = new Piscina({ filename: compiledFile('cell-worker'), name: 'compareTask', minThreads: threads, maxThreads: threads, idleTimeout: 1000 });
    try {
      await Promise.all(
        variants.map(async ({ spec, label }, i) => {
          o.onVariant?.(label ?? spec, i, variants.length);
          const outcome = (await pool.run(task(absoluteSpec(spec, o.context?.cwd), label))) as CompareOutcome;
          if (!outcome.ok) {
            const e = outcome.error;
            throw e.exitCode === 2 ? new InputError(`--variant ${spec}: ${e.message}`) : new RunFailure(`--variant ${spec}: ${e.message}`);
          }
          results[i] = { ...outcome.result, spec };
          done++;
          progress();
        }),
      );
    } finally {
      await pool.destroy();
    }
  }
  return {
    schema: 'vmexit.compare/1',
    workload: o.workload,
    mode: o.mode,
    seed: o.seed,
    ...(counters.length > 0 ? { counters } : {}),
    results,
    table: comparisonTable(results, { counters }),
  };
}

/** `vmx shadow pte-update,bypass-guest-pf`, `vmx tdp host-pages=2m` or `native`: the words of a variant spec. */
export function variantLabel(v: RunResult['variant']): string {
  if (v.backend === 'none') return 'native';
  const pol = (v.policies as (string | { use: string })[] | undefined) ?? [];
  const names = pol.map((p) => (typeof p === 'string' ? p : p.use));
  const hostPages = typeof v.hostPages === 'string' ? ` host-pages=${v.hostPages}` : '';
  return `${v.backend} ${String(v.mmu)}${hostPages}${names.length > 0 ? ` ${names.join(',')}` : ''}`;
}

/**
 * Each label given (`--label NAME=VARIANT`) names one column: not twice, and not the name another column gets
 * by itself (its `comparisonLabel`), which would make two columns of one name. Variants given without a label
 * may share a name (the same variant twice).
 */
function checkColumnLabels(variants: readonly { spec: string; label?: string; variant: Variant }[]): void {
  const given = new Map<string, string>();
  for (const { spec, label } of variants) {
    if (label === undefined) continue;
    const first = given.get(label);
    if (first !== undefined)
      throw new InputError(`--label: the label '${label}' is given twice ('${label}=${first}', '${label}=${spec}'); give each column a name of its own`);
    given.set(label, spec);
  }
  for (const { spec, label, variant } of variants) {
    if (label !== undefined) continue;
    const name = comparisonLabel(describeVariant(variant) as RunResult['variant']);
    const clash = given.get(name);
    if (clash !== undefined)
      throw new InputError(
        `--label: the label '${name}' (of '${name}=${clash}') is also the name of the column of --variant '${spec}'; give it a name of its own`,
      );
  }
}

/**
 * A variant's column label: backend, MMU and policies, each policy with the options it was given
 * (`write-flood(count=per-vcpu,threshold=4)`), so that two variants that differ only in options differ.
 */
export function comparisonLabel(v: RunResult['variant']): string {
  if (v.backend === 'none') return 'native';
  const pol = (v.policies as (string | { use: string; options?: Record<string, unknown> })[] | undefined) ?? [];
  const names = pol.map((p) => {
    if (typeof p === 'string') return p;
    const opts = Object.entries(p.options ?? {});
    return opts.length === 0 ? p.use : `${p.use}(${opts.map(([k, x]) => `${k}=${typeof x === 'string' ? x : JSON.stringify(x)}`).join(',')})`;
  });
  return variantLabel({ ...v, policies: [] }) + (names.length > 0 ? ` ${names.join(',')}` : '');
}

/**
 * The exit kinds (core's VmExit kinds, counted as `exits.kind.<kind>` on either backend) under the names a
 * reader comparing VMX with SVM looks for: the same event has a different exit reason on each (a #PF is VMX
 * EXCEPTION_NMI and SVM VMEXIT_EXCP14; a CR3 load CR_ACCESS and VMEXIT_CR3_WRITE).
 */
export const EXIT_KIND_NAMES: Readonly<Record<string, string>> = {
  exception: '#PF (intercepted exception)',
  'cr-write': 'CR / EFER write',
  invlpg: 'INVLPG',
  'nested-fault': 'EPT / NPT fault',
  mmio: 'MMIO',
};

/**
 * One row of the comparison: a label and how to read its value from a result; `null` where the metric does
 * not exist for that variant (an exit reason of the other backend, or any exit reason of a native run).
 */
export interface Metric {
  readonly label: string;
  /** The row's name in the JSON table (default: the label, trimmed). */
  readonly name?: string;
  /** Reads the metric from one variant's result; null where the metric does not exist for it. */
  readonly value: (r: ComparisonInput) => number | null;
  readonly digits?: number;
  /** A fraction, printed as a percentage, with no ratio to the first variant. */
  readonly share?: boolean;
}

/** What a row reads: a run's result, and its exit reasons' costs when it was run by compareVariants. */
export type ComparisonInput = VariantRunResult & { readonly exitReasons?: readonly ExitReasonCost[] };

/** Which rows `comparisonTable` adds to the standard ones. */
export interface ComparisonMetricOptions {
  /** `counters` patterns: each counter of the results that matches gets a row, after the standard rows. */
  readonly counters?: readonly string[];
}

const exitsOf = (r: VariantRunResult): number => r.counters.total.exits ?? 0;
const counter =
  (name: string) =>
  (r: VariantRunResult): number =>
    r.counters.total[name] ?? 0;
const backendOf = (r: VariantRunResult): string => String(r.variant.backend);

/**
 * The rows of the table, in order: guest faults, vmexits by common exit kind, then by the backend's own exit
 * reason (`vmx EXCEPTION_NMI`, `svm VMEXIT_EXCP14`: not applicable, '-', to a variant of the other backend or
 * a native run), each reason with its share of the variant's exits and, for results of compareVariants, its
 * modelled cycles; exits per guest fault; the MMU's and the cost model's figures; then the counters that
 * `counters` asks for.
 */
export function comparisonMetrics(results: readonly ComparisonInput[], options: ComparisonMetricOptions = {}): Metric[] {
  const kinds = new Set<string>();
  const reasons = new Map<string, Set<string>>(); // backend (in the order of the variants) -> reasons seen on it
  for (const r of results) {
    for (const [k, n] of Object.entries(r.counters.total)) {
      if (!k.startsWith('exits.') || n <= 0) continue;
      if (k.startsWith('exits.kind.')) kinds.add(k.slice('exits.kind.'.length));
      else {
        let set = reasons.get(backendOf(r));
        if (set === undefined) reasons.set(backendOf(r), (set = new Set()));
        set.add(k.slice('exits.'.length));
      }
    }
  }
  const kindOrder = Object.keys(EXIT_KIND_NAMES);
  const withCycles = results.some((r) => r.exitReasons !== undefined);
  const byReason: Metric[] = [];
  for (const backend of reasons.keys()) {
    for (const reason of [...reasons.get(backend)!].sort()) {
      const own = (r: ComparisonInput): boolean => backendOf(r) === backend;
      const name = `${backend} ${reason}`;
      byReason.push({ label: `  ${name}`, value: (r) => (own(r) ? counter(`exits.${reason}`)(r) : null) });
      if (withCycles)
        byReason.push({
          label: '    share of exits',
          name: `${name} share`,
          share: true,
          value: (r) => (own(r) ? (exitsOf(r) > 0 ? counter(`exits.${reason}`)(r) / exitsOf(r) : 0) : null),
        });
      if (withCycles)
        byReason.push({
          label: '    cycles (modelled)',
          name: `${name} cycles`,
          value: (r) => (own(r) && r.exitReasons !== undefined ? (r.exitReasons.find((x) => x.reason === reason)?.cycles ?? 0) : null),
        });
    }
  }
  const picked: Metric[] = [];
  const patterns = options.counters ?? [];
  if (patterns.length > 0) {
    const names = new Set<string>();
    for (const p of patterns) {
      if (!p.includes('*')) names.add(p);
      else for (const r of results) for (const k of Object.keys(r.counters.total)) if (counterMatches(p, k)) names.add(k);
    }
    picked.push({ label: 'counters', value: () => null }, ...[...names].sort().map((k) => ({ label: `  ${k}`, value: counter(k) })));
  }
  return [
    { label: 'guest faults', value: (r) => r.guest.faults.total },
    { label: 'vmexits', value: exitsOf },
    ...[...kinds]
      .sort((a, b) => kindOrder.indexOf(a) - kindOrder.indexOf(b))
      .map((k) => ({ label: `  ${EXIT_KIND_NAMES[k] ?? k}`, value: counter(`exits.kind.${k}`) })),
    ...(byReason.length > 0 ? [{ label: 'vmexits by exit reason', value: () => null }, ...byReason] : []),
    { label: 'exits per guest fault', value: (r) => (r.guest.faults.total > 0 ? exitsOf(r) / r.guest.faults.total : 0), digits: 3 },
    { label: 'faults fixed (pf_fixed)', value: counter('pf_fixed') },
    { label: 'faults injected (pf_guest)', value: counter('pf_guest') },
    { label: 'emulated writes', value: counter('insn_emulation') },
    { label: 'shadow pages zapped', value: counter('mmu_shadow_zapped') },
    // The vCPUs' TLB flushes by the MMU (KVM's per-vCPU `tlb_flush`): one remote flush (`remote_tlb_flush`, VM-wide)
    // flushes every vCPU's TLB and counts one of these on each, so adding the two would count each flush twice.
    { label: 'TLB flushes', value: (r) => r.counters.total.tlb_flush ?? 0 },
    ...(results.some((r) => r.variant.mmu === 'tdp') ? walkMetrics : []),
    { label: 'modelled cycles', value: (r) => r.cycles.cycles },
    ...(results.some((r) => r.counters.total['mmu_lock.acquired'] !== undefined) ? lockMetrics : []),
    ...picked,
  ];
}

/**
 * The MMU lock and the fast page fault, shown when a variant ran with a dirty log (the runs that count
 * `mmu_lock.acquired`): acquisitions, contended acquisitions and the cycles spun (with several vCPUs, the
 * lock's timeline, lab's lock-time.ts), fast fixes, and guest progress: guest accesses per 1000 modelled cycles
 * (the cycles above plus GUEST_ACCESS_CYCLES per access), whose ratio is how much faster the guest got on.
 */
const lockMetrics: readonly Metric[] = [
  { label: 'mmu_lock acquired', value: counter('mmu_lock.acquired') },
  { label: 'mmu_lock contended', value: counter('mmu_lock.contended') },
  { label: 'mmu_lock spin cycles', value: counter('mmu_lock.spin_cycles') },
  { label: 'fast fixes (pf_fast)', value: counter('pf_fast') },
  {
    label: 'guest progress (accesses/kcycle)',
    name: 'guest progress',
    value: (r) => guestProgress(r.counters.total['guest.accesses'] ?? 0, r.cycles.cycles),
    digits: 3,
  },
];

/**
 * What two-dimensional paging pays instead of exits: every TLB miss walks the guest's tables with each
 * guest-physical address translated by EPT/NPT (n guest levels over m second-stage levels make n * (m + 1) + m
 * references: 24 for 4 + 4, SDM Vol. 3C §29.3.3, AMD APM Vol. 2 §15.25.5; `walk_refs` counts those made).
 * Shown when a variant runs on TDP, so that the table has the trade-off. The references are per walk: an
 * access whose walk faults (a guest #PF, an EPT violation) is re-executed once the fault is handled, misses
 * the TLB again and walks again, as on hardware, so `walks` counts every walk while `tlb_misses` counts the
 * accesses that missed (once each). Per walk, the figure is at most 24 for 4 + 4 levels; per missed access it
 * is not (a faulting access pays for two walks or more).
 */
const walkMetrics: readonly Metric[] = [
  { label: 'TLB misses', value: counter('tlb_misses') },
  { label: 'walks', value: counter('walks') },
  { label: 'walk references (walk_refs)', value: counter('walk_refs') },
  {
    label: 'walk references per walk',
    value: (r) => ((r.counters.total.walks ?? 0) > 0 ? (r.counters.total.walk_refs ?? 0) / r.counters.total.walks! : 0),
    digits: 2,
  },
];

/** The globs of `counters` that match no counter of any result (a typo, or a plugin that did not run). */
export function unmatchedCounters(results: readonly VariantRunResult[], counters: readonly string[]): string[] {
  return counters.filter((p) => p.includes('*') && !results.some((r) => Object.keys(r.counters.total).some((k) => counterMatches(p, k))));
}

/** The table as data: every metric's values and ratios to the first variant (see ComparisonRow). */
export function comparisonTable(results: readonly ComparisonInput[], options: ComparisonMetricOptions = {}): ComparisonRow[] {
  return comparisonMetrics(results, options).map((m) => {
    const values = results.map((r) => m.value(r));
    const base = values[0] ?? null;
    const ratios = values.map((v) => (m.share === true || v === null || base === null ? null : base === 0 ? (v === 0 ? 1 : null) : v / base));
    return { metric: m.name ?? m.label.trim(), values, ratios };
  });
}
