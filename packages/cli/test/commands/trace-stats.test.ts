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

// A tiny run (4 MiB of guest RAM: boot and the memory digest grow with it).
const RUN = ['--workload', 'fork-cow:pages=8,forks=1', '--backend', 'vmx', '--mmu', 'shadow', '--memory', '4M'];
type Line = { type: string; reason?: string; kind?: string; phase?: string };
const lines = (file: string): Line[] =>
  fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as Line);

describe('run --trace-filter / --trace-sample', () => {
  it('keeps 1 in N of the exits of the reasons named, every window line, and no MMU line unless asked; the counters do not change', async () => {
    const full = path.join(tmp, 'full.jsonl');
    const some = path.join(tmp, 'some.jsonl');
    expect(await main(['run', ...RUN, '--json', '--trace', full])).toBe(0);
    const fullRun = JSON.parse(out.join('')) as { counters: unknown; memoryDigest: string };
    out.length = 0;
    expect(await main(['run', ...RUN, '--json', '--trace', some, '--trace-filter', 'EXCEPTION_NMI,invlpg', '--trace-sample', '3'])).toBe(0);
    const someRun = JSON.parse(out.join('')) as { counters: unknown; memoryDigest: string };
    expect(someRun.counters).toEqual(fullRun.counters);
    expect(someRun.memoryDigest).toBe(fullRun.memoryDigest);
    const a = lines(full);
    const b = lines(some);
    expect(b[0]).toEqual({ type: 'trace-selection', filter: ['EXCEPTION_NMI', 'invlpg'], sample: 3 });
    // The selected exits are the full trace's exits of those reasons, the 1st, 4th, 7th, ...
    const picked = a.filter((l) => l.type === 'exit' && (l.reason === 'EXCEPTION_NMI' || l.kind === 'invlpg')).filter((_, i) => i % 3 === 0);
    expect(picked.length).toBeGreaterThan(2);
    expect(b.filter((l) => l.type === 'exit')).toEqual(picked);
    expect(b.filter((l) => l.type === 'window')).toEqual(a.filter((l) => l.type === 'window'));
    expect(a.some((l) => l.type === 'mmu')).toBe(true);
    expect(b.some((l) => l.type === 'mmu')).toBe(false);
    expect(b.filter((l) => l.type === 'page-fault')).toEqual(a.filter((l) => l.type === 'page-fault'));
    out.length = 0;
    expect(await main(['trace', 'stats', some])).toBe(0);
    expect(out.join('')).toMatch(/^the trace holds only the exits of EXCEPTION_NMI, invlpg, 1 in 3 of them: samples/m);
    expect(err.join('')).toBe('');
  }, 120_000);

  it.each([
    [['--trace-filter', 'EXCEPTION_NMI'], /--trace-filter: selects what --trace FILE writes; give --trace too/],
    [['--trace', 'T', '--trace-filter', 'exception nmi'], /--trace-filter: 'exception nmi' is not an exit reason of VMX \(EXCEPTION_NMI, /],
    // An unknown exit reason, and one of the other backend's (the run is on VMX): named, with the valid ones listed.
    [
      ['--trace', 'T', '--trace-filter', 'EXCEPTION_NMI,NO_SUCH_EXIT'],
      /^vmexit: --trace-filter: 'NO_SUCH_EXIT' is not an exit reason of VMX \(EXCEPTION_NMI, EXTERNAL_INTERRUPT, .*, CR_ACCESS, .*, PML_FULL\), an exit kind \(exception, cr-write, invlpg, nested-fault, mmio\) or mmu\n$/,
    ],
    [['--trace', 'T', '--trace-filter', 'VMEXIT_NPF'], /--trace-filter: 'VMEXIT_NPF' is not an exit reason of VMX \(/],
    [['--trace', 'T', '--trace-sample', '0'], /--trace-sample: expected an integer from 1 to 2147483647, got '0'/],
    [['--trace', 'T', '--trace-sample', '1.5'], /--trace-sample: expected an integer from 1 to 2147483647, got '1.5'/],
    [['--trace', 'T', '--trace-sample', '-3'], /--trace-sample: expected an integer from 1 to 2147483647, got '-3'/],
    [['--trace', 'T', '--trace-sample', '2147483648'], /--trace-sample: expected an integer from 1 to 2147483647, got '2147483648'/],
  ])('exits 2 on %j and writes no trace', async (extra, message) => {
    const args = extra.map((x) => (x === 'T' ? path.join(tmp, 'never.jsonl') : x));
    expect(await main(['run', ...RUN, ...args])).toBe(2);
    expect(err.join('')).toMatch(message);
    expect(fs.existsSync(path.join(tmp, 'never.jsonl'))).toBe(false);
  });

  it('leaves an existing trace file as it was when a filter names an unknown exit reason', async () => {
    const file = path.join(tmp, 'kept.jsonl');
    fs.writeFileSync(file, 'an older trace\n');
    expect(await main(['run', ...RUN, '--trace', file, '--trace-filter', 'NO_SUCH_EXIT'])).toBe(2);
    expect(fs.readFileSync(file, 'utf8')).toBe('an older trace\n');
    expect(fs.readdirSync(tmp).filter((f) => f.startsWith('kept.jsonl') && f !== 'kept.jsonl')).toEqual([]);
  });

  it('takes the exit codes of SVM on an SVM run', async () => {
    const file = path.join(tmp, 'svm.jsonl');
    expect(await main(['run', ...RUN.map((a) => (a === 'vmx' ? 'svm' : a)), '--trace', file, '--trace-filter', 'VMEXIT_EXCP14'])).toBe(0);
    expect(lines(file)[0]).toEqual({ type: 'trace-selection', filter: ['VMEXIT_EXCP14'], sample: 1 });
    const exits = lines(file).filter((l) => l.type === 'exit');
    expect(exits.length).toBeGreaterThan(0);
    expect(exits.every((l) => l.reason === 'VMEXIT_EXCP14')).toBe(true);
  });

  it('names a filter entry that matched nothing', async () => {
    // EPT_VIOLATION is a VMX exit reason, but shadow paging never takes it.
    expect(await main(['run', ...RUN, '--trace', path.join(tmp, 'x.jsonl'), '--trace-filter', 'EPT_VIOLATION'])).toBe(0);
    expect(err.join('')).toBe('vmexit: --trace-filter: EPT_VIOLATION matched nothing in this run\n');
  });
});

describe('trace stats', () => {
  it("counts per exit reason exactly the exits the run's counters hold, with shares and modelled cycles", async () => {
    const trace = path.join(tmp, 't.jsonl');
    expect(await main(['run', ...RUN, '--json', '--trace', trace])).toBe(0);
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
