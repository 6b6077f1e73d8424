import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { PAGING_MODE_NAMES } from '@vmexit/core';
import { z } from 'zod';
import type { CellRecord } from './cell.js';
import { comparisonLabel } from './compare.js';
import { InputError } from './errors.js';
import { amount, array, count, inputProblem, object, oneOf, record, string } from './input-schema.js';
import { DIRTY_LOG_MODES, type MigrateResult } from './migrate.js';
import type { VariantRunResult } from './run-variant.js';

const require = createRequire(import.meta.url);

/** A result a report can show: a sweep's cell record, or a comparison's result (no cell: its seed and workload stand in). */
export type ReportInput = VariantRunResult | CellRecord;

/** One chart of a report: a title, what it shows, and its Vega-Lite spec (plain JSON, data inline). */
export interface ReportChart {
  readonly id: string;
  readonly title: string;
  readonly note: string;
  readonly spec: Record<string, unknown>;
}

interface Row {
  variant: string;
  workload: string;
  mode: string;
  /** The chart's panel (a facet row): the workload and the paging mode. */
  panel: string;
  seed: number;
}

/** What a report file holds: run results (a sweep's cells, a comparison's results) and migrations (`vmexit migrate --json`). */
export interface ReportData {
  readonly results: readonly ReportInput[];
  readonly migrations: readonly MigrateResult[];
}

const MIGRATE_SCHEMA: MigrateResult['schema'] = 'vmexit.migrate/1';

/**
 * The variant as a result describes it (`describeVariant`), as far as a chart's label reads it: the backend,
 * and unless native the MMU, the host page size when named, and the policies (names, or `{use, options}`).
 */
const variantFields = {
  backend: oneOf(['vmx', 'svm', 'none']),
  mmu: string.optional(),
  hostPages: string.optional(),
  policies: array(
    z.union([string, object({ use: string, options: record(z.unknown()).optional() })], { error: 'a policy name or an object with a use' }),
  ).optional(),
};
const needsMmu = (v: { backend: string; mmu?: string }, ctx: z.core.$RefinementCtx): void => {
  if (v.backend !== 'none' && v.mmu === undefined)
    ctx.addIssue({ code: 'custom', path: ['mmu'], message: `a string (the MMU of a ${v.backend} variant)`, input: v.mmu });
};

/** What the run charts read of a sweep's cell record (other fields are kept, unchecked). */
const cellRecordSchema = object({
  variant: object({ ...variantFields, mode: oneOf(PAGING_MODE_NAMES as unknown as readonly [string, ...string[]]) }).superRefine(needsMmu),
  workload: object({ input: string }),
  seed: count,
  guest: object({ faults: object({ total: count }) }),
  counters: object({ total: record(amount) }),
  cycles: object({ cycles: amount, breakdown: record(amount) }),
  cell: object({ key: string }),
});

/** What the migration chart reads of a `vmexit migrate --json` document. */
const migrationSchema = object({
  schema: z.literal(MIGRATE_SCHEMA),
  variant: object(variantFields).superRefine(needsMmu),
  workload: string,
  seed: count,
  dirtyLog: oneOf(DIRTY_LOG_MODES as unknown as readonly [string, ...string[]]),
  rounds: array(object({ round: count, dirtyPages: count, pagesSent: count })),
});

function claimsMigration(x: unknown): boolean {
  return typeof x === 'object' && x !== null && (x as { schema?: unknown }).schema === MIGRATE_SCHEMA;
}

function claimsCellRecord(x: unknown): boolean {
  return typeof x === 'object' && x !== null && typeof (x as CellRecord).cell?.key === 'string' && typeof (x as CellRecord).counters?.total === 'object';
}

/**
 * Reads what `vmexit report` charts from `file`: one `vmexit migrate --json` document, or JSON Lines of sweep
 * results (`results.jsonl`, one cell record a line) and of migration documents (one a line), in any mix. A line
 * (or document) that is neither, or one with a field the charts read missing or of the wrong type, is an
 * InputError naming the file, the line and the field (`FILE:3: variant.policies must be an array, not ...`).
 */
export function readReportData(file: string): ReportData {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new InputError(`${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let whole: unknown;
  try {
    whole = JSON.parse(text) as unknown;
  } catch {
    // not one JSON document: JSON Lines
  }
  if (claimsMigration(whole)) {
    const problem = inputProblem(migrationSchema, whole);
    if (problem !== null) throw new InputError(`${file}: ${problem}`);
    return { results: [], migrations: [whole as MigrateResult] };
  }
  const results: ReportInput[] = [];
  const migrations: MigrateResult[] = [];
  for (const [i, line] of text.split('\n').entries()) {
    if (line.trim().length === 0) continue;
    let x: unknown;
    try {
      x = JSON.parse(line);
    } catch (e) {
      throw new InputError(`${file}:${i + 1}: not a JSON line (${(e as Error).message})`);
    }
    const kind = claimsMigration(x) ? 'migration' : claimsCellRecord(x) ? 'result' : null;
    if (kind === null) throw new InputError(`${file}:${i + 1}: neither a sweep result (no cell.key or counters) nor a migration (schema ${MIGRATE_SCHEMA})`);
    const problem = inputProblem(kind === 'migration' ? migrationSchema : cellRecordSchema, x);
    if (problem !== null) throw new InputError(`${file}:${i + 1}: ${problem}`);
    if (kind === 'migration') migrations.push(x as MigrateResult);
    else results.push(x as CellRecord);
  }
  return { results, migrations };
}

/** A migration's label in a chart: its variant, how the dirty log was harvested, the workload and the seed. */
function migrationBaseLabel(m: MigrateResult): string {
  return `${comparisonLabel(m.variant as VariantRunResult['variant'])}, ${m.dirtyLog}, ${m.workload}, seed ${m.seed}`;
}

/** What else made a migration's rounds: the mode, cost model, vCPUs, RAM, link rate and stop rule (those a document has). */
function migrationSettings(m: MigrateResult): string {
  const x = m as Partial<MigrateResult>;
  const costModel = (m.variant as { costModel?: unknown }).costModel;
  return [
    String(m.mode),
    ...(typeof costModel === 'string' ? [costModel] : []),
    ...(typeof x.vcpus === 'number' ? [`${x.vcpus} vCPU${x.vcpus === 1 ? '' : 's'}`] : []),
    ...(typeof x.memory === 'number' ? [`${x.memory / 2 ** 20} MiB`] : []),
    ...(typeof x.copyRate === 'number' ? [`copy rate ${x.copyRate}`] : []),
    ...(typeof x.stopPages === 'number' ? [`stop pages ${x.stopPages}`] : []),
    ...(typeof x.maxRounds === 'number' ? [`max rounds ${x.maxRounds}`] : []),
  ].join(', ');
}

/**
 * Each migration's label: migrationBaseLabel, and where migrations of one such label differ in what else made
 * their rounds (`--vcpus`, `--copy-rate`, ...), those settings too, so that each migration is a line of its own.
 */
function migrationLabels(migrations: readonly MigrateResult[]): (m: MigrateResult) => string {
  return labelsApart(migrations, migrationBaseLabel, migrationSettings);
}

/** For each key of `items`, the set of the values its items bring. */
function setsByKey<T, V>(items: readonly T[], key: (x: T) => string, values: (x: T) => Iterable<V>): Map<string, Set<V>> {
  const sets = new Map<string, Set<V>>();
  for (const x of items) {
    const k = key(x);
    let set = sets.get(k);
    if (set === undefined) sets.set(k, (set = new Set()));
    for (const v of values(x)) set.add(v);
  }
  return sets;
}

/**
 * Each item's label: `base(x)`, and where items of one base label differ in `settings(x)`, those settings in
 * parentheses too, so that no line or bar mixes items of different settings.
 */
function labelsApart<T>(items: readonly T[], base: (x: T) => string, settings: (x: T) => string): (x: T) => string {
  const sets = setsByKey(items, base, (x) => [settings(x)]);
  return (x) => {
    const b = base(x);
    return sets.get(b)!.size > 1 ? `${b} (${settings(x)})` : b;
  };
}

/** The chart of migrations' rounds: the pages each harvest found dirty and the pages sent, round by round. */
function migrationChart(migrations: readonly MigrateResult[]): ReportChart {
  const labelOf = migrationLabels(migrations);
  const rows = migrations.flatMap((m) => {
    const label = labelOf(m);
    const last = m.rounds.length - 1;
    return m.rounds.flatMap((r) => {
      const round = r.round === last ? `${r.round} (stop)` : String(r.round);
      return [
        { migration: label, round: r.round, roundLabel: round, measure: 'dirty pages', pages: r.dirtyPages },
        { migration: label, round: r.round, roundLabel: round, measure: 'pages sent', pages: r.pagesSent },
      ];
    });
  });
  return {
    id: 'migration-rounds',
    title: 'live migration: dirty pages and pages sent per round',
    note: 'round 0 is the first full copy, the last round (stop) the stop-and-copy with the guest stopped; a symlog scale, so that the full copy and the last rounds both show',
    spec: {
      $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
      background: 'white',
      data: { values: rows },
      width: 600,
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'round', type: 'ordinal', title: 'round', axis: { labelAngle: 0 } },
        y: { field: 'pages', type: 'quantitative', title: 'pages', scale: { type: 'symlog' } },
        color: { field: 'migration', type: 'nominal', title: 'migration', legend: { labelLimit: 400, orient: 'bottom', direction: 'vertical' } },
        strokeDash: { field: 'measure', type: 'nominal', title: 'measure' },
        tooltip: [{ field: 'migration' }, { field: 'roundLabel', title: 'round' }, { field: 'measure' }, { field: 'pages', type: 'quantitative' }],
      },
    },
  };
}

/**
 * The charts of a report: for run results, exits per variant stacked by exit reason, the modelled cycles by
 * what they price, exits per guest fault, and the spread of exits across seeds (means across seeds where a
 * variant ran several: a seed without an exit reason or a priced counter counts as 0), one panel per workload
 * and paging mode, so that each bar is the mean of the cells summary.csv groups (same workload, variant and
 * mode); for migrations, the dirty pages and the pages sent per round.
 */
export function reportCharts(results: readonly ReportInput[], migrations: readonly MigrateResult[] = []): ReportChart[] {
  return [...(results.length > 0 ? runCharts(results) : []), ...(migrations.length > 0 ? [migrationChart(migrations)] : [])];
}

/**
 * The rows of a per-result breakdown (exits by reason, cycles by counter), zeros included: each result has a row
 * for every key that any result of its group (panel and variant) has, so that a mean across seeds counts a
 * seed without any of it as 0 rather than leaving it out (`mean` in Vega-Lite averages the rows there are).
 */
function breakdownRows<T extends string>(
  results: readonly ReportInput[],
  row: (r: ReportInput) => Row,
  parts: (r: ReportInput) => Record<string, number>,
  keyField: T,
  valueField: string,
): (Row & Record<string, string | number>)[] {
  const group = (r: ReportInput): string => {
    const b = row(r);
    return JSON.stringify([b.panel, b.variant]);
  };
  const keys = setsByKey(results, group, (r) => Object.keys(parts(r)));
  return results.flatMap((r) => {
    const own = parts(r);
    return [...keys.get(group(r))!].map((k) => ({ ...row(r), [keyField]: k, [valueField]: own[k] ?? 0 }));
  });
}

/** What a result ran with beyond its label's words: the cost model, vCPUs, guest RAM and personalities. */
function settingsOf(r: ReportInput): string {
  const v = r.variant as { costModel?: unknown; vcpus?: unknown; memory?: unknown; personalities?: unknown };
  const parts: string[] = [];
  if (typeof v.costModel === 'string') parts.push(v.costModel);
  if (typeof v.vcpus === 'number') parts.push(`${v.vcpus} vCPU${v.vcpus === 1 ? '' : 's'}`);
  if (typeof v.memory === 'number') parts.push(`${v.memory / 2 ** 20} MiB`);
  if (Array.isArray(v.personalities) && v.personalities.length > 0) parts.push(v.personalities.join(' '));
  return parts.join(', ');
}

/**
 * Each result's variant in the charts: its comparisonLabel, and where results of one label ran with different
 * settings (a results.jsonl of sweeps run with different --cost-model, --vcpus, --memory or --personality), the
 * settings too (`vmx shadow (core2-2007, 1 vCPU, 4 MiB)`), so that no bar averages runs of different settings.
 */
function reportLabels(results: readonly ReportInput[]): (r: ReportInput) => string {
  return labelsApart(results, (r) => comparisonLabel(r.variant), settingsOf);
}

function runCharts(results: readonly ReportInput[]): ReportChart[] {
  const labelOf = reportLabels(results);
  // One panel per workload and paging mode: cells of different modes are different cells, never averaged together.
  const base = (r: ReportInput): Row => {
    const workload = r.workload.input;
    const mode = String(r.variant.mode);
    return { variant: labelOf(r), workload, mode, panel: `${workload}, ${mode}`, seed: r.seed };
  };
  const exits = breakdownRows(
    results,
    base,
    (r) =>
      Object.fromEntries(
        Object.entries(r.counters.total)
          .filter(([k, n]) => k.startsWith('exits.') && !k.startsWith('exits.kind.') && n > 0)
          .map(([k, n]) => [`${String(r.variant.backend)} ${k.slice(6)}`, n]),
      ),
    'reason',
    'exits',
  );
  const cycles = breakdownRows(results, base, (r) => r.cycles.breakdown, 'priced', 'cycles');
  const perFault = results.map((r) => ({ ...base(r), exitsPerFault: r.guest.faults.total > 0 ? (r.counters.total.exits ?? 0) / r.guest.faults.total : 0 }));
  const spread = results.map((r) => ({ ...base(r), exits: r.counters.total.exits ?? 0, cycles: r.cycles.cycles }));
  // The seeds each bar averages: one count when every bar has the same (else the axis says "mean across seeds").
  const seedsPerBar = setsByKey(
    results,
    (r) => {
      const b = base(r);
      return JSON.stringify([b.panel, b.variant]);
    },
    (r) => [r.seed],
  );
  const counts = new Set([...seedsPerBar.values()].map((x) => x.size));
  const seedsTitle = counts.size === 1 ? (counts.has(1) ? '' : ` (mean of ${[...counts][0]} seeds)`) : ' (mean across seeds)';
  const common = { $schema: 'https://vega.github.io/schema/vega-lite/v6.json', background: 'white' };
  const facetPanel = { row: { field: 'panel', type: 'nominal', title: null } };
  return [
    {
      id: 'exits-by-reason',
      title: 'vmexits per variant, by exit reason',
      note: 'mean across seeds; each backend counts under its own exit reasons (VMX basic exit reasons, SVM exit codes)',
      spec: {
        ...common,
        data: { values: exits },
        width: 600,
        mark: 'bar',
        encoding: {
          ...facetPanel,
          y: { field: 'variant', type: 'nominal', title: null, sort: null },
          x: { aggregate: 'mean', field: 'exits', type: 'quantitative', title: `vmexits${seedsTitle}` },
          color: { field: 'reason', type: 'nominal', title: 'exit reason' },
          tooltip: [{ field: 'variant' }, { field: 'reason' }, { aggregate: 'mean', field: 'exits', type: 'quantitative' }],
        },
      },
    },
    {
      id: 'cycles-breakdown',
      title: 'modelled cycles, by what they price',
      note: "each counter times its figure in the variant's cost model",
      spec: {
        ...common,
        data: { values: cycles },
        width: 600,
        mark: 'bar',
        encoding: {
          ...facetPanel,
          y: { field: 'variant', type: 'nominal', title: null, sort: null },
          x: { aggregate: 'mean', field: 'cycles', type: 'quantitative', title: 'modelled cycles (mean across seeds)' },
          color: { field: 'priced', type: 'nominal', title: 'counter' },
          tooltip: [{ field: 'variant' }, { field: 'priced' }, { aggregate: 'mean', field: 'cycles', type: 'quantitative' }],
        },
      },
    },
    {
      id: 'exits-per-fault',
      title: 'vmexits per guest page fault',
      note: 'all exits over the faults the guest handled (mean across seeds)',
      spec: {
        ...common,
        data: { values: perFault },
        width: 600,
        mark: 'bar',
        encoding: {
          ...facetPanel,
          y: { field: 'variant', type: 'nominal', title: null, sort: null },
          x: { aggregate: 'mean', field: 'exitsPerFault', type: 'quantitative', title: 'exits per guest fault' },
          tooltip: [{ field: 'variant' }, { aggregate: 'mean', field: 'exitsPerFault', type: 'quantitative', format: '.3f' }],
        },
      },
    },
    {
      id: 'spread-across-seeds',
      title: 'spread of vmexits across seeds',
      note: 'each point is one seed; the bar spans min to max',
      spec: {
        ...common,
        data: { values: spread },
        facet: { row: { field: 'panel', type: 'nominal', title: null } },
        spec: {
          width: 600,
          layer: [
            {
              mark: 'rule',
              encoding: {
                y: { field: 'variant', type: 'nominal', title: null, sort: null },
                x: { aggregate: 'min', field: 'exits', type: 'quantitative', title: 'vmexits', scale: { zero: false } },
                x2: { aggregate: 'max', field: 'exits' },
              },
            },
            {
              mark: { type: 'point', filled: true },
              encoding: {
                y: { field: 'variant', type: 'nominal', sort: null },
                x: { field: 'exits', type: 'quantitative' },
                tooltip: [{ field: 'variant' }, { field: 'seed' }, { field: 'exits' }],
              },
            },
          ],
        },
      },
    },
  ];
}

/** A file of an installed package (found through the node_modules directories, as its exports map hides its build). */
function bundle(pkg: string, file: string): string {
  for (const dir of require.resolve.paths(pkg) ?? []) {
    const f = join(dir, pkg, file);
    if (existsSync(f)) return readFileSync(f, 'utf8').replace(/<\/script/gi, '<\\/script');
  }
  throw new Error(`the report needs ${pkg}/${file}: is ${pkg} installed?`);
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);
}

/**
 * One self-contained HTML page (works offline: the vega, vega-lite and vega-embed bundles are inlined from
 * their npm packages) with the charts of `reportCharts`, rendered as SVG. `title` heads the page.
 */
export function reportHtml(results: readonly ReportInput[], title = 'vmexit report', migrations: readonly MigrateResult[] = []): string {
  const charts = reportCharts(results, migrations);
  const labelOf = reportLabels(results);
  const variants = new Set(results.map(labelOf)).size;
  const holds = [
    ...(results.length > 0 || migrations.length === 0 ? [`${results.length} results, ${variants} variants`] : []),
    ...(migrations.length > 0 ? [`${migrations.length} migration${migrations.length === 1 ? '' : 's'}`] : []),
  ];
  const json = JSON.stringify(charts.map((c) => ({ id: c.id, spec: c.spec }))).replace(/</g, '\\u003c');
  const sections = charts
    .map((c) => `<section><h2>${escapeHtml(c.title)}</h2><p>${escapeHtml(c.note)}</p><div class="chart" id="${c.id}"></div></section>`)
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:70em}.chart{width:100%}section{margin-bottom:2em}p{color:#555}</style>
<script>${bundle('vega', 'build/vega.min.js')}</script>
<script>${bundle('vega-lite', 'build/vega-lite.min.js')}</script>
<script>${bundle('vega-embed', 'build/vega-embed.min.js')}</script>
</head><body>
<h1>${escapeHtml(title)}</h1>
<p>${escapeHtml(holds.join('; '))}.</p>
${sections}
<script>
const charts = ${json};
window.vmexitRendered = Promise.all(charts.map((c) => vegaEmbed('#' + c.id, c.spec, { renderer: 'svg', actions: false })));
</script>
</body></html>
`;
}
