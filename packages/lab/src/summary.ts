import type { CellRecord } from './cell.js';

/** Mean, sample standard deviation (n - 1; 0 for one value), min and max. */
export interface Spread {
  readonly n: number;
  readonly mean: number;
  readonly sd: number;
  readonly min: number;
  readonly max: number;
}

/** Mean, sample standard deviation, min and max of `xs` (all 0 for an empty list). */
export function spread(xs: readonly number[]): Spread {
  const n = xs.length;
  if (n === 0) return { n: 0, mean: 0, sd: 0, min: 0, max: 0 };
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  const sd = n > 1 ? Math.sqrt(xs.reduce((a, x) => a + (x - mean) ** 2, 0) / (n - 1)) : 0;
  return { n, mean, sd, min: Math.min(...xs), max: Math.max(...xs) };
}

/** A group of cells that differ only in the seed. */
export interface SummaryGroup {
  readonly workload: string;
  readonly variant: string;
  readonly mode: string;
  /** What the cells ran with beyond the variant spec, as the sweep's flags (`--memory 4194304 --cost-model core2-2007`; '' for none). */
  readonly settings: string;
  readonly seeds: readonly number[];
  /** Counter -> its spread across the seeds: every counter of counters.total, plus `cycles`, `guest.faults` and `guest.sigsegv`. */
  readonly counters: Readonly<Record<string, Spread>>;
}

/** The values a summary covers for one result: the windowed counters, modelled cycles, guest faults and SIGSEGVs. */
export function summaryValues(r: CellRecord): Record<string, number> {
  return { ...r.counters.total, cycles: r.cycles.cycles, 'guest.faults': r.guest.faults.total, 'guest.sigsegv': r.guest.sigsegv };
}

/** A cell's overrides and personalities as the sweep's flags that set them (`--vcpus 2 --memory 8388608`), in a fixed order. */
export function cellSettings(cell: Pick<CellRecord['cell'], 'overrides' | 'personalities'>): string {
  const o = cell.overrides ?? {};
  const flags: string[] = [];
  if (o.vcpus !== undefined) flags.push(`--vcpus ${o.vcpus}`);
  if (o.memory !== undefined) flags.push(`--memory ${o.memory}`);
  if (o.hostPages !== undefined) flags.push(`--host-pages ${o.hostPages}`);
  if (o.costModel !== undefined) flags.push(`--cost-model ${o.costModel}`);
  if ((cell.personalities ?? []).length > 0) flags.push(`--personality ${cell.personalities!.join(',')}`);
  return flags.join(' ');
}

/**
 * The records grouped by workload, variant, mode and settings (overrides and personalities; in first-seen
 * order), each counter's spread across seeds.
 */
export function summarize(records: readonly CellRecord[]): SummaryGroup[] {
  const groups = new Map<string, { w: string; v: string; m: string; settings: string; rs: CellRecord[] }>();
  for (const r of records) {
    const settings = cellSettings(r.cell);
    const key = JSON.stringify([r.cell.workload, r.cell.variant, r.cell.mode, settings]);
    let g = groups.get(key);
    if (g === undefined) groups.set(key, (g = { w: r.cell.workload, v: r.cell.variant, m: r.cell.mode, settings, rs: [] }));
    g.rs.push(r);
  }
  return [...groups.values()].map((g) => {
    const rs = [...g.rs].sort((a, b) => a.cell.seed - b.cell.seed);
    const values = rs.map(summaryValues);
    const names = [...new Set(values.flatMap((v) => Object.keys(v)))].sort();
    const counters: Record<string, Spread> = {};
    for (const name of names) counters[name] = spread(values.map((v) => v[name] ?? 0));
    return { workload: g.w, variant: g.v, mode: g.m, settings: g.settings, seeds: rs.map((r) => r.cell.seed), counters };
  });
}

function csvField(s: string): string {
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/**
 * A number of summary.csv in full precision: the shortest decimal that reads back as the same double (`String`),
 * so that a mean or sd is not cut to fewer digits than it has. (It was `toPrecision(10)` with its trailing zeros
 * stripped, which cut 201.33333333333334 to 201.3333333 and, past 1e10, stripped the exponent's own zero:
 * 10000000000.5 became "1.000000000e+1", a value of 10.)
 */
function fmt(x: number): string {
  return String(x);
}

/**
 * summary.csv: one row per group and counter: workload, variant, mode, seeds (n), counter, mean, sd (sample,
 * n - 1), min, max; the numbers in full precision (`fmt`). Where two groups would have the same workload, variant
 * and mode (a directory that holds sweeps run with different --memory, --cost-model, ...), the variant column
 * of each also names its settings (`vmx shadow --cost-model core2-2007`), so that no two groups share a label.
 */
export function summaryCsv(records: readonly CellRecord[]): string {
  const rows = ['workload,variant,mode,seeds,counter,mean,sd,min,max'];
  const groups = summarize(records);
  const plain = (g: SummaryGroup): string => JSON.stringify([g.workload, g.variant, g.mode]);
  const uses = new Map<string, number>();
  for (const g of groups) uses.set(plain(g), (uses.get(plain(g)) ?? 0) + 1);
  for (const g of groups) {
    const variant = uses.get(plain(g))! > 1 && g.settings !== '' ? `${g.variant} ${g.settings}` : g.variant;
    for (const [name, s] of Object.entries(g.counters)) {
      rows.push([csvField(g.workload), csvField(variant), g.mode, String(s.n), csvField(name), fmt(s.mean), fmt(s.sd), fmt(s.min), fmt(s.max)].join(','));
    }
  }
  return `${rows.join('\n')}\n`;
}
