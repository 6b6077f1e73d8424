import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import type { CellRecord } from './cell.js';
import { comparisonLabel } from './compare.js';
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
  seed: number;
}

/**
 * The charts of a report: exits per variant stacked by exit reason, the modelled cycles by what they price,
 * exits per guest fault, and the spread of exits across seeds. Values are means across seeds where a
 * variant ran several. Migration rounds (dirty pages per round) are a further chart when results hold them.
 */
export function reportCharts(results: readonly ReportInput[]): ReportChart[] {
  const base = (r: ReportInput): Row => ({ variant: comparisonLabel(r.variant), workload: r.workload.input, mode: String(r.variant.mode), seed: r.seed });
  const exits = results.flatMap((r) =>
    Object.entries(r.counters.total)
      .filter(([k, n]) => k.startsWith('exits.') && !k.startsWith('exits.kind.') && n > 0)
      .map(([k, n]) => ({ ...base(r), reason: `${String(r.variant.backend)} ${k.slice(6)}`, exits: n })),
  );
  const cycles = results.flatMap((r) => Object.entries(r.cycles.breakdown).map(([k, c]) => ({ ...base(r), priced: k, cycles: c })));
  const perFault = results.map((r) => ({ ...base(r), exitsPerFault: r.guest.faults.total > 0 ? (r.counters.total.exits ?? 0) / r.guest.faults.total : 0 }));
  const spread = results.map((r) => ({ ...base(r), exits: r.counters.total.exits ?? 0, cycles: r.cycles.cycles }));
  const seeds = new Set(results.map((r) => r.seed)).size;
  const common = { $schema: 'https://vega.github.io/schema/vega-lite/v6.json', background: 'white' };
  const facetWorkload = { row: { field: 'workload', type: 'nominal', title: null } };
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
          ...facetWorkload,
          y: { field: 'variant', type: 'nominal', title: null, sort: null },
          x: { aggregate: 'mean', field: 'exits', type: 'quantitative', title: `vmexits${seeds > 1 ? ` (mean of ${seeds} seeds)` : ''}` },
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
          ...facetWorkload,
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
          ...facetWorkload,
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
        facet: { row: { field: 'workload', type: 'nominal', title: null } },
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
export function reportHtml(results: readonly ReportInput[], title = 'vmexit report'): string {
  const charts = reportCharts(results);
  const variants = new Set(results.map((r) => comparisonLabel(r.variant))).size;
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
<p>${results.length} results, ${variants} variants. Migration rounds (dirty pages per round) appear here for results that hold migrations.</p>
${sections}
<script>
const charts = ${json};
window.vmexitRendered = Promise.all(charts.map((c) => vegaEmbed('#' + c.id, c.spec, { renderer: 'svg', actions: false })));
</script>
</body></html>
`;
}
