import type { CellRecord } from './cell.js';

/** Mean, sample standard deviation (n - 1; 0 for one value), min and max. */
export interface Spread {
  readonly n: number;
  readonly mean: number;
  readonly sd: number;
  readonly min: number;
  readonly max: number;
}

export function spread(xs: readonly number[]): Spread {
  const n = xs.length;
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  const sd = n > 1 ? Math.sqrt(xs.reduce((a, x) => a + (x - mean) ** 2, 0) / (n - 1)) : 0;
  return { n, mean, sd, min: Math.min(...xs), max: Math.max(...xs) };
}

/** A group of cells that differ only in the seed. */
export interface SummaryGroup {
  readonly workload: string;
  readonly variant: string;
  readonly mode: string;
  readonly seeds: readonly number[];
  /** Counter -> its spread across the seeds: every counter of counters.total, plus `cycles`, `guest.faults` and `guest.sigsegv`. */
  readonly counters: Readonly<Record<string, Spread>>;
}

/** The values a summary covers for one result: the windowed counters, modelled cycles, guest faults and SIGSEGVs. */
export function summaryValues(r: CellRecord): Record<string, number> {
  return { ...r.counters.total, cycles: r.cycles.cycles, 'guest.faults': r.guest.faults.total, 'guest.sigsegv': r.guest.sigsegv };
}

/** The records grouped by workload, variant and mode (in first-seen order), each counter's spread across seeds. */
export function summarize(records: readonly CellRecord[]): SummaryGroup[] {
  const groups = new Map<string, { w: string; v: string; m: string; rs: CellRecord[] }>();
  for (const r of records) {
    const key = JSON.stringify([r.cell.workload, r.cell.variant, r.cell.mode, r.cell.personalities ?? [], r.cell.overrides ?? {}]);
    let g = groups.get(key);
    if (g === undefined) groups.set(key, (g = { w: r.cell.workload, v: r.cell.variant, m: r.cell.mode, rs: [] }));
    g.rs.push(r);
  }
  return [...groups.values()].map((g) => {
    const rs = [...g.rs].sort((a, b) => a.cell.seed - b.cell.seed);
    const values = rs.map(summaryValues);
    const names = [...new Set(values.flatMap((v) => Object.keys(v)))].sort();
    const counters: Record<string, Spread> = {};
    for (const name of names) counters[name] = spread(values.map((v) => v[name] ?? 0));
    return { workload: g.w, variant: g.v, mode: g.m, seeds: rs.map((r) => r.cell.seed), counters };
  });
}

function csvField(s: string): string {
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function fmt(x: number): string {
  return Number.isInteger(x) ? String(x) : x.toPrecision(10).replace(/\.?0+$/, '');
}

/** summary.csv: one row per group and counter: workload, variant, mode, seeds (n), counter, mean, sd, min, max. */
export function summaryCsv(records: readonly CellRecord[]): string {
  const rows = ['workload,variant,mode,seeds,counter,mean,sd,min,max'];
  for (const g of summarize(records)) {
    for (const [name, s] of Object.entries(g.counters)) {
      rows.push([csvField(g.workload), csvField(g.variant), g.mode, String(s.n), csvField(name), fmt(s.mean), fmt(s.sd), fmt(s.min), fmt(s.max)].join(','));
    }
  }
  return `${rows.join('\n')}\n`;
}
