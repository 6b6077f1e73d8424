import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';
import { describe, expect, it } from 'vitest';
import { migrate, parseVariantSpec, reportCharts, reportHtml, runVariant, type LabRunResult, type MigrateResult } from '../src/index.js';

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
