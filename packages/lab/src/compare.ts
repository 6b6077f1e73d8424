import type { PagingModeName, Variant } from '@vmexit/core';
import type { Personality, RunResult } from '@vmexit/guest';
import { InputError } from './errors.js';
import { provenance, type Provenance } from './provenance.js';
import { runChecked, runOnVariant, type CheckReport, type VariantRunResult } from './run-variant.js';
import { parseVariantSpec, type VariantContext, type VariantOverrides } from './variant-spec.js';

export interface ComparisonOptions {
  readonly workload: string;
  /** Variant specs: config files or flag strings (see parseVariantSpec). */
  readonly variants: readonly string[];
  readonly mode: PagingModeName;
  readonly seed: number;
  readonly overrides?: VariantOverrides;
  readonly personalities?: readonly Personality[];
  readonly check?: boolean;
  readonly audit?: boolean;
  /** Called before each variant runs (progress for long comparisons). */
  readonly onVariant?: (label: string, index: number, count: number) => void;
  readonly context?: VariantContext;
}

/** One metric of the table: its value for each variant (null: not applicable) and the ratio to the first variant's. */
export interface ComparisonRow {
  readonly metric: string;
  readonly values: readonly (number | null)[];
  /** value / first variant's value; 1 when both are 0; null when either is not applicable or only the first is 0. */
  readonly ratios: readonly (number | null)[];
}

/** One variant's result in a comparison: the run's result, its column label, the spec it came from, and where it came from. */
export type ComparisonResult = VariantRunResult & { label: string; spec: string; check?: CheckReport; provenance: Provenance };

export interface ComparisonDocument {
  readonly schema: 'vmexit.compare/1';
  readonly workload: string;
  readonly mode: PagingModeName;
  readonly seed: number;
  readonly results: readonly ComparisonResult[];
  /** The side-by-side table as data: the rows `formatComparison` prints, columns in `results` order. */
  readonly table: readonly ComparisonRow[];
}

/**
 * Runs every variant on the same workload, mode and seed (one after the other, each on a fresh VM) and
 * returns their results with the comparison table. What `vmexit compare --json` prints.
 */
export async function compareVariants(o: ComparisonOptions): Promise<ComparisonDocument> {
  if (o.variants.length === 0) throw new InputError('--variant: give at least one variant');
  const variants: { spec: string; variant: Variant }[] = [];
  for (const spec of o.variants) variants.push({ spec, variant: await parseVariantSpec(spec, o.overrides ?? {}, o.context) });
  const results: ComparisonResult[] = [];
  for (const [i, { spec, variant }] of variants.entries()) {
    o.onVariant?.(spec, i, variants.length);
    const started = provenance(variant);
    const runOpts = {
      workload: o.workload,
      mode: o.mode,
      seed: o.seed,
      personalities: o.personalities ?? [],
      variant,
      audit: o.audit,
      sources: o.context?.sources,
    };
    if (o.check === true && variant.backend !== 'none') {
      const c = await runChecked(runOpts);
      results.push({ ...c.run.result, label: comparisonLabel(c.run.result.variant), spec, check: c.check, provenance: started });
    } else {
      const r = await runOnVariant(runOpts);
      results.push({ ...r.result, label: comparisonLabel(r.result.variant), spec, provenance: started });
    }
  }
  return { schema: 'vmexit.compare/1', workload: o.workload, mode: o.mode, seed: o.seed, results, table: comparisonTable(results) };
}

/** `vmx shadow pte-update,bypass-guest-pf` or `native`. */
export function variantLabel(v: RunResult['variant']): string {
  if (v.backend === 'none') return 'native';
  const pol = (v.policies as (string | { use: string })[] | undefined) ?? [];
  const names = pol.map((p) => (typeof p === 'string' ? p : p.use));
  return `${v.backend} ${String(v.mmu)}${names.length > 0 ? ` ${names.join(',')}` : ''}`;
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
  readonly value: (r: VariantRunResult) => number | null;
  readonly digits?: number;
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
 * a native run), exits per guest fault, and the MMU's and the cost model's figures.
 */
export function comparisonMetrics(results: readonly VariantRunResult[]): Metric[] {
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
  const byReason: Metric[] = [];
  for (const backend of reasons.keys()) {
    for (const reason of [...reasons.get(backend)!].sort()) {
      byReason.push({ label: `  ${backend} ${reason}`, value: (r) => (backendOf(r) === backend ? counter(`exits.${reason}`)(r) : null) });
    }
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
    { label: 'TLB flushes', value: (r) => (r.counters.total.tlb_flush ?? 0) + (r.counters.total.remote_tlb_flush ?? 0) },
    { label: 'modelled cycles', value: (r) => r.cycles.cycles },
  ];
}

/** The table as data: every metric's values and ratios to the first variant (see ComparisonRow). */
export function comparisonTable(results: readonly VariantRunResult[]): ComparisonRow[] {
  return comparisonMetrics(results).map((m) => {
    const values = results.map((r) => m.value(r));
    const base = values[0] ?? null;
    const ratios = values.map((v) => (v === null || base === null ? null : base === 0 ? (v === 0 ? 1 : null) : v / base));
    return { metric: m.label.trim(), values, ratios };
  });
}
