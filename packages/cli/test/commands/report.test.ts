import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { captureStdio } from '../helpers/stdio.js';
import { main } from '../../src/program.js';

const { out, err } = captureStdio();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-report-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

// A small pre-copy migration: KVM's dirty_log_test pattern in a 4 MiB guest, the link fast enough for several rounds.
const MIGRATE = [
  'migrate',
  '--workload',
  'dirty-log-test:pages=128,iterations=40,writes=32',
  '--memory',
  '4M',
  '--copy-rate',
  '1000',
  '--stop-pages',
  '0',
  '--json',
];

async function migrateJson(extra: string[] = []): Promise<string> {
  out.length = 0;
  expect(await main([...MIGRATE, ...extra])).toBe(0);
  return out.join('');
}

describe('report', () => {
  it('charts a `vmexit migrate --json` document: the dirty pages and the pages sent per round', async () => {
    const file = path.join(tmp, 'm.json');
    fs.writeFileSync(file, await migrateJson());
    out.length = 0;
    expect(await main(['report', file, '-o', path.join(tmp, 'm.html')])).toBe(0);
    expect(out.join('')).toBe(`${path.join(tmp, 'm.html')}: 1 migration\n`);
    const html = fs.readFileSync(path.join(tmp, 'm.html'), 'utf8');
    expect(html).toMatch(/<div class="chart" id="migration-rounds">/);
    expect(html).not.toMatch(/id="exits-by-reason"/); // no run results, no run charts
    expect(html).toMatch(/<p>1 migration\.<\/p>/);
    expect(html).toMatch(/"measure":"dirty pages"/);
  }, 60_000);

  it('charts JSON Lines of migrations (bitmap and ring), one a line', async () => {
    const docs = [await migrateJson(), await migrateJson(['--dirty-log', 'ring', '--dirty-ring-size', '256'])];
    const file = path.join(tmp, 'm.jsonl');
    fs.writeFileSync(file, docs.map((d) => `${JSON.stringify(JSON.parse(d))}\n`).join(''));
    out.length = 0;
    expect(await main(['report', file, '-o', path.join(tmp, 'ml.html')])).toBe(0);
    expect(out.join('')).toBe(`${path.join(tmp, 'ml.html')}: 2 migrations\n`);
    const html = fs.readFileSync(path.join(tmp, 'ml.html'), 'utf8');
    expect(html).toMatch(/"migration":"vmx shadow, bitmap, dirty-log-test:pages=128,iterations=40,writes=32, seed 1"/);
    expect(html).toMatch(/"migration":"vmx shadow, ring, dirty-log-test:pages=128,iterations=40,writes=32, seed 1"/);
  }, 60_000);

  it('exits 2, naming the file and the line, on a line that is neither a sweep result nor a migration; writes nothing', async () => {
    const file = path.join(tmp, 'bad.jsonl');
    fs.writeFileSync(file, `${JSON.stringify({ schema: 'vmexit.run/1' })}\n`);
    expect(await main(['report', file, '-o', path.join(tmp, 'bad.html')])).toBe(2);
    expect(err.join('')).toBe(`vmexit: ${file}:1: neither a sweep result (no cell.key or counters) nor a migration (schema vmexit.migrate/1)\n`);
    expect(fs.existsSync(path.join(tmp, 'bad.html'))).toBe(false);
  });
});
