import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { TraceStats } from '@vmexit/lab';
import { captureStdio } from '../helpers/stdio.js';
import { main } from '../../src/program.js';

const { out, err } = captureStdio();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-trace-stats-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('trace stats', () => {
  it("counts per exit reason exactly the exits the run's counters hold, with shares and modelled cycles", async () => {
    const trace = path.join(tmp, 't.jsonl');
    expect(await main(['run', '--workload', 'fork-cow:pages=8,forks=1', '--backend', 'vmx', '--mmu', 'shadow', '--json', '--trace', trace])).toBe(0);
    const run = JSON.parse(out.join('')) as { counters: { total: Record<string, number> }; cycles: { breakdown: Record<string, number> } };
    out.length = 0;
    expect(await main(['trace', 'stats', trace, '--json'])).toBe(0);
    const s = JSON.parse(out.join('')) as TraceStats;
    expect(s.windowed).toBe(true);
    expect(s.exits).toBe(run.counters.total.exits);
    for (const r of s.reasons) expect(r.count, r.reason).toBe(run.counters.total[`exits.${r.reason}`]);
    expect(s.reasons.reduce((a, r) => a + r.share, 0)).toBeCloseTo(1, 12);
    for (const r of s.reasons) expect(r.cycles.min).toBeLessThanOrEqual(r.cycles.mean);
    out.length = 0;
    expect(await main(['trace', 'stats', trace])).toBe(0);
    expect(out.join('')).toMatch(
      /^\d+ exits in the counting window .*\nexit reason +samples +share +min cycles +mean cycles +max cycles +total cycles\nEXCEPTION_NMI +\d+ +\d+\.\d\d%/,
    );
    out.length = 0;
    expect(await main(['trace', 'stats', trace, '--all', '--json'])).toBe(0);
    expect((JSON.parse(out.join('')) as TraceStats).exits).toBeGreaterThan(s.exits); // the boot's exits too
  }, 120_000);

  it('exits 2 on a file that is not a trace', async () => {
    const bad = path.join(tmp, 'bad.jsonl');
    fs.writeFileSync(bad, 'hello\n');
    expect(await main(['trace', 'stats', bad])).toBe(2);
    expect(err.join('')).toMatch(/bad\.jsonl:1: not a JSON line/);
    expect(await main(['trace', 'stats', path.join(tmp, 'none.jsonl')])).toBe(2);
  });
});
