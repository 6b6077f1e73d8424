import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';
import { describe, expect, it } from 'vitest';
import {
  migrate,
  parseVariantSpec,
  reportCharts,
  reportHtml,
  runCell,
  runVariant,
  summarize,
  type CellRecord,
  type LabRunResult,
  type MigrateResult,
} from '../src/index.js';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = fileURLToPath(new URL('./artifacts/', import.meta.url));
const have = fs.existsSync(CHROMIUM) && spawnSync(CHROMIUM, ['--version'], { stdio: 'ignore' }).status === 0;
if (!have && process.env.CI) throw new Error(`CI: ${CHROMIUM} is missing (.ci/run installs Debian's chromium)`);

describe('reportHtml', () => {
  it.skipIf(!have)(
    'renders every chart in headless Chromium, offline, with no console error',
    async () => {
      // Two variants x two seeds of a tiny workload: enough for stacks, a breakdown and a spread.
      const results: LabRunResult[] = [];
      for (const v of ['vmx shadow', 'vmx shadow unsync'])
        for (const seed of [1, 2]) results.push(await runVariant(v, 'fork-cow:pages=8,forks=1', { seed, overrides: { memory: '4M' } }));
      // Two migrations (bitmap and ring harvests) of a small dirty_log_test: the rounds chart.
      const variant = await parseVariantSpec('vmx shadow', { memory: '4M' });
      const migrations: MigrateResult[] = [];
      for (const dirtyLog of ['bitmap', 'ring'] as const)
        migrations.push(
          await migrate({
            workload: 'dirty-log-test:pages=128,iterations=40,writes=32',
            mode: 'long4',
            seed: 1,
            personalities: [],
            variant,
            dirtyLog,
            ringEntries: 256,
            copyRate: 4000,
            maxRounds: 5,
            stopPages: 0,
          }),
        );
      expect(migrations.map((m) => m.rounds.length)).toEqual([6, 6]); // the full copy, then 5 rounds, the last the stop-and-copy
      const html = reportHtml(results, 'test report', migrations);
      expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+href=/); // self-contained
      fs.mkdirSync(ARTIFACTS, { recursive: true });
      const file = path.join(ARTIFACTS, 'report.html');
      fs.writeFileSync(file, html);
      const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-chromium-'));
      const browser = await puppeteer.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: [
          '--headless',
          '--no-sandbox',
          '--disable-gpu',
          '--disable-quic',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
          `--user-data-dir=${profile}`,
        ],
      });
      try {
        const page = await browser.newPage();
        const problems: string[] = [];
        page.on('console', (m) => {
          if (m.type() === 'error') problems.push(m.text());
        });
        page.on('pageerror', (e) => problems.push(String(e)));
        page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()}`));
        await page.setViewport({ width: 1000, height: 800 });
        await page.goto(`file://${file}`, { waitUntil: 'load' });
        await page.evaluate('window.vmexitRendered.then(() => true)');
        const drawn = await page.$$eval('.chart', (els) =>
          els.map((e) => ({ id: e.id, svg: e.querySelector('svg') !== null, marks: e.querySelectorAll('svg path, svg rect, svg line').length })),
        );
        expect(drawn.map((d) => d.id)).toEqual(reportCharts(results, migrations).map((c) => c.id));
        expect(drawn.map((d) => d.id)).toContain('migration-rounds');
        // The rounds chart: a line per migration and measure (2 x 2), and a point per round of each.
        const rounds = await page.$eval('#migration-rounds', (e) => ({
          lines: e.querySelectorAll('svg .mark-line.role-mark path').length,
          points: e.querySelectorAll('svg .mark-symbol.role-mark path').length,
        }));
        expect(rounds.lines).toBe(4);
        expect(rounds.points).toBe(2 * migrations.reduce((n, m) => n + m.rounds.length, 0));
        for (const d of drawn) {
          expect(d.svg, d.id).toBe(true);
          expect(d.marks, d.id).toBeGreaterThan(4);
        }
        expect(problems).toEqual([]);
        await page.screenshot({ path: `${ARTIFACTS}report.png`, fullPage: true });
      } finally {
        await browser.close();
        fs.rmSync(profile, { recursive: true, force: true });
      }
    },
    180_000,
  );
});

/** The bars and rules the charts drew, as Vega's scenegraph holds them: each mark item's datum (its plain fields). */
async function drawnData(file: string): Promise<Record<string, unknown>[][]> {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-chromium-'));
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', `--user-data-dir=${profile}`],
  });
  try {
    const page = await browser.newPage();
    await page.goto(`file://${file}`, { waitUntil: 'load' });
    const json = await page.evaluate(`window.vmexitRendered.then((rs) => {
      const walk = (mark, out) => {
        for (const it of mark.items ?? []) {
          if (it.datum && mark.role === 'mark') {
            const d = { mark: mark.marktype };
            for (const [k, v] of Object.entries(it.datum)) if (typeof v !== 'object') d[k] = v;
            out.push(d);
          }
          for (const child of it.items ?? []) walk(child, out);
        }
      };
      return JSON.stringify(rs.map((r) => { const out = []; walk(r.view.scenegraph().root, out); return out; }));
    })`);
    return JSON.parse(json as string) as Record<string, unknown>[][];
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

describe('reportHtml charts, as drawn', () => {
  it.skipIf(!have)(
    "draws each bar at summary.csv's mean of its cells: one panel per paging mode, a seed without an exit reason counted as 0",
    async () => {
      // mprotect-storm:pages=8,rounds=4 on vmx shadow, 2 vCPUs, 8 MiB, in long4 and pae, seeds 1 and 2. Its counts
      // (mprotect stores each present pte twice, as Linux's change_pte_range does, and PAE's set_pte is two 4-byte
      // stores, each an emulated write under shadow paging):
      //   long4: EXCEPTION_NMI 168 (seed 1), 158 (seed 2); INVLPG 73, 66; CR_ACCESS 4, 4
      //   pae:   EXCEPTION_NMI 222 (seed 1), 209 (seed 2); INVLPG 73, 66; CR_ACCESS 4, 4
      const records: CellRecord[] = [];
      for (const mode of ['long4', 'pae'] as const)
        for (const seed of [1, 2])
          records.push(
            await runCell({
              kind: 'run',
              workload: 'mprotect-storm:pages=8,rounds=4',
              variant: 'vmx shadow',
              mode,
              seed,
              overrides: { memory: '8M', vcpus: '2' },
            }),
          );
      const exitsOf = (r: CellRecord): number[] => ['EXCEPTION_NMI', 'INVLPG', 'CR_ACCESS'].map((k) => r.counters.total[`exits.${k}`]!);
      expect(records.map(exitsOf)).toEqual([
        [168, 73, 4],
        [158, 66, 4],
        [222, 73, 4],
        [209, 66, 4],
      ]);
      // A third long4 seed without INVLPG exits (the seed-2 record, its INVLPG count taken out): its mean is
      // (73 + 66 + 0) / 3 = 46.333..., not (73 + 66) / 2 = 69.5 as a mean of the rows there are would give.
      const two = records[1]!;
      // Its exits: 228 - 66 = 162.
      const { 'exits.INVLPG': _invlpg, 'exits.kind.invlpg': _kind, ...withoutInvlpg } = two.counters.total;
      const total = { ...withoutInvlpg, exits: 228 - 66 };
      records.push({ ...two, seed: 3, cell: { ...two.cell, seed: 3, key: 'seed3-no-invlpg' }, counters: { ...two.counters, total } });
      fs.mkdirSync(ARTIFACTS, { recursive: true });
      const file = path.join(ARTIFACTS, 'report-modes.html');
      fs.writeFileSync(file, reportHtml(records, 'two modes'));
      const [exits, , , spread] = await drawnData(file);
      const bars = Object.fromEntries(exits!.map((b) => [`${String(b.panel)} ${String(b.reason)}`, b.mean_exits]));
      const w = 'mprotect-storm:pages=8,rounds=4';
      // long4: EXCEPTION_NMI (168 + 158 + 158) / 3 = 161.333..., INVLPG (73 + 66 + 0) / 3 = 46.333..., CR_ACCESS 4;
      // pae: (222 + 209) / 2 = 215.5, (73 + 66) / 2 = 69.5, 4. (Before, one panel per workload averaged both modes:
      // EXCEPTION_NMI (168 + 158 + 158 + 222 + 209) / 5 = 183, INVLPG (73 + 66 + 73 + 66) / 4 = 69.5.)
      const expected: Record<string, number> = {
        [`${w}, long4 vmx EXCEPTION_NMI`]: 484 / 3,
        [`${w}, long4 vmx INVLPG`]: 139 / 3,
        [`${w}, long4 vmx CR_ACCESS`]: 4,
        [`${w}, pae vmx EXCEPTION_NMI`]: 215.5,
        [`${w}, pae vmx INVLPG`]: 69.5,
        [`${w}, pae vmx CR_ACCESS`]: 4,
      };
      expect(Object.keys(bars).sort()).toEqual(Object.keys(expected).sort());
      for (const [k, v] of Object.entries(expected)) expect(bars[k], k).toBeCloseTo(v, 9);
      // ... which are summary.csv's means of the same groups.
      for (const g of summarize(records))
        for (const reason of ['EXCEPTION_NMI', 'INVLPG', 'CR_ACCESS'])
          expect(bars[`${g.workload}, ${g.mode} vmx ${reason}`] as number).toBeCloseTo(g.counters[`exits.${reason}`]!.mean, 9);
      // The spread: one rule per panel, from its own cells' min to max of all exits (long4 245, 228, 162; pae 299, 279).
      expect(spread!.filter((m) => m.mark === 'rule').map((m) => [m.min_exits, m.max_exits])).toEqual([
        [162, 245],
        [279, 299],
      ]);
    },
    180_000,
  );
});

describe('reportCharts', () => {
  it('never puts runs of different settings under one variant label (sweeps of different --cost-model in one results.jsonl)', async () => {
    // demand-fault:pages=64 on vmx shadow, 4 MiB, seed 1: the exceptions' round trips are 193 x 1,360 = 262,480 cycles
    // under server-2020s and 193 x 3,300 = 636,900 under core2-2007. Labelled alike ("vmx shadow"), one bar showed their
    // mean, (262,480 + 636,900) / 2 = 449,690, a figure neither run has.
    const cell = { kind: 'run', workload: 'demand-fault:pages=64', variant: 'vmx shadow', mode: 'long4', seed: 1 } as const;
    const records = [await runCell({ ...cell, overrides: { memory: '4M' } }), await runCell({ ...cell, overrides: { memory: '4M', costModel: 'core2-2007' } })];
    const cycles = reportCharts(records).find((c) => c.id === 'cycles-breakdown')!.spec.data as {
      values: { variant: string; priced: string; cycles: number }[];
    };
    const exceptions = cycles.values.filter((x) => x.priced === 'exits.kind.exception').map((x) => [x.variant, x.cycles]);
    expect(exceptions).toEqual([
      ['vmx shadow (server-2020s, 1 vCPU, 4 MiB)', 262_480],
      ['vmx shadow (core2-2007, 1 vCPU, 4 MiB)', 636_900],
    ]);
    expect(reportHtml(records)).toContain('<p>2 results, 2 variants.</p>');
    // Runs that differ in nothing but their seed keep the plain label.
    expect(new Set((reportCharts([records[0]!]).find((c) => c.id === 'cycles-breakdown')!.spec.data as typeof cycles).values.map((x) => x.variant))).toEqual(
      new Set(['vmx shadow']),
    );
  });
});

describe("the exits chart's axis", () => {
  it('says how many seeds a bar averages only when every bar averages as many', async () => {
    const cell = { kind: 'run', workload: 'demand-fault:pages=8', mode: 'long4', overrides: { memory: '4M' } } as const;
    const vmx = [1, 2].map((seed) => runCell({ ...cell, variant: 'vmx shadow', seed }));
    const svm = [1, 2].map((seed) => runCell({ ...cell, variant: 'svm shadow', seed }));
    const [v1, v2, s1, s2] = await Promise.all([...vmx, ...svm]);
    const title = (rs: CellRecord[]): unknown => (reportCharts(rs)[0]!.spec.encoding as { x: { title: string } }).x.title;
    expect(title([v1!, v2!, s1!, s2!])).toBe('vmexits (mean of 2 seeds)');
    // vmx shadow over seeds 1 and 2, svm shadow over seed 1 alone (before: "mean of 2 seeds", the seeds of all bars).
    expect(title([v1!, v2!, s1!])).toBe('vmexits (mean across seeds)');
    expect(title([v1!, s1!])).toBe('vmexits');
  }, 120_000);
});

describe('the migration chart', () => {
  it('draws each migration as lines of its own, also two that differ only in --copy-rate (one line went through both)', async () => {
    const variant = await parseVariantSpec('vmx shadow', { memory: '4M' });
    const workload = 'dirty-log-test:pages=128,iterations=40,writes=32';
    const runs: MigrateResult[] = [];
    for (const copyRate of [4000, 1000])
      runs.push(await migrate({ workload, mode: 'long4', seed: 1, personalities: [], variant, dirtyLog: 'bitmap', copyRate, maxRounds: 5, stopPages: 0 }));
    expect(runs.map((m) => [m.vcpus, m.memory, m.copyRate, m.stopPages, m.maxRounds])).toEqual([
      [1, 4 * 2 ** 20, 4000, 0, 5],
      [1, 4 * 2 ** 20, 1000, 0, 5],
    ]);
    // The rounds differ: the slower link leaves more dirty pages per round.
    expect(runs.map((m) => m.rounds.map((r) => r.dirtyPages))).toEqual([
      [1024, 81, 29, 31, 30, 30],
      [1024, 126, 54, 29, 28, 27],
    ]);
    const rows = (reportCharts([], runs)[0]!.spec.data as { values: { migration: string; measure: string; pages: number }[] }).values;
    const base = `vmx shadow, bitmap, ${workload}, seed 1`;
    const dirty = (label: string): number[] => rows.filter((x) => x.migration === label && x.measure === 'dirty pages').map((x) => x.pages);
    expect(dirty(`${base} (long4, server-2020s, 1 vCPU, 4 MiB, copy rate 4000, stop pages 0, max rounds 5)`)).toEqual([1024, 81, 29, 31, 30, 30]);
    expect(dirty(`${base} (long4, server-2020s, 1 vCPU, 4 MiB, copy rate 1000, stop pages 0, max rounds 5)`)).toEqual([1024, 126, 54, 29, 28, 27]);
    // One migration alone keeps the short label.
    expect(new Set((reportCharts([], [runs[0]!])[0]!.spec.data as { values: { migration: string }[] }).values.map((x) => x.migration))).toEqual(
      new Set([base]),
    );
  }, 120_000);
});
