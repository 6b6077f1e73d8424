import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { captureStdio } from '../helpers/stdio.js';
import { main } from '../../src/program.js';

// `vmexit run --trace FILE`: the lines are written as the run goes (a failed run leaves them up to the
// failure), window lines mark what the counters cover, and every address is unsigned hex.

const FAILING_POLICY = path.resolve(import.meta.dirname, '../fixtures/failing-policy/index.mjs');

const { out, err } = captureStdio();
let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-run-trace-'));
});

afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

type Line = Record<string, unknown> & { type: string };

function readTrace(file: string): Line[] {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as Line);
}

/** Every string value of `v` that looks like hex, at any depth. */
function hexStrings(v: unknown): string[] {
  if (typeof v === 'string') return /^-?0x/.test(v) ? [v] : [];
  if (typeof v === 'object' && v !== null) return Object.values(v).flatMap(hexStrings);
  return [];
}

describe('run', () => {
  describe('--trace', () => {
    it('marks the measured window: the exits between its last start and its end are the exits counted', async () => {
      const file = path.join(dir, 't.jsonl');
      expect(await main(['run', '--workload', 'demand-fault:pages=20', '--memory', '16M', '--trace', file, '--json'])).toBe(0);
      const r = JSON.parse(out.join('')) as { counters: { total: Record<string, number> } };
      const lines = readTrace(file);
      const marks = lines.flatMap((l, i) => (l.type === 'window' ? [[i, l.phase]] : []));
      // After boot the window starts; demand-fault starts it again where its touching begins and ends it
      // where the touching ends (the mmap before and the exit's teardown after are not counted).
      expect(marks.map(([, p]) => p)).toEqual(['start', 'start', 'end']);
      const [start, end] = [marks[1]![0] as number, marks[2]![0] as number];
      const inWindow = lines.slice(start + 1, end);
      expect(inWindow.filter((l) => l.type === 'exit')).toHaveLength(r.counters.total.exits!);
      expect(r.counters.total.exits).toBe(3 * 20 + 1);
      // Boot's exits are traced too, before the first start.
      expect(lines.slice(0, marks[0]![0] as number).filter((l) => l.type === 'exit').length).toBeGreaterThan(0);
      // The guest-visible faults follow at the end.
      expect(lines.slice(end + 1).every((l) => l.type === 'exit' || l.type === 'mmu' || l.type === 'page-fault')).toBe(true);
      expect(lines.filter((l) => l.type === 'page-fault').length).toBeGreaterThanOrEqual(20);
    });

    it('writes every address in one unsigned hex format, exits and page faults alike', async () => {
      const file = path.join(dir, 't.jsonl');
      expect(await main(['run', '--workload', 'fork-cow:pages=16,forks=1', '--memory', '16M', '--trace', file])).toBe(0);
      const lines = readTrace(file);
      const hex = lines.flatMap(hexStrings);
      expect(hex.length).toBeGreaterThan(100);
      expect(hex.filter((h) => !/^0x[0-9a-f]+$/.test(h))).toEqual([]);
      // The guest kernel's direct map is in the upper half: its addresses are written as 0xffff8…, not -0x….
      const exitAddrs = lines.filter((l) => l.type === 'exit' && typeof l.address === 'string').map((l) => l.address as string);
      expect(exitAddrs.some((a) => a.startsWith('0xffff8'))).toBe(true);
      const pf = lines.filter((l) => l.type === 'page-fault');
      expect(pf).toHaveLength(40);
      expect(pf.every((l) => /^0x[0-9a-f]+$/.test(l.address as string))).toBe(true);
    });

    it('a run that fails part way leaves the trace up to the failure, and says why it stops', async () => {
      // Where the window starts, from a run that completes (same variant, workload and seed: same exits).
      const ok = path.join(dir, 'ok.jsonl');
      const config = (exit: number) => {
        const f = path.join(dir, `fail-${exit}.json`);
        fs.writeFileSync(f, JSON.stringify({ backend: 'vmx', memory: '16M', policies: [{ use: FAILING_POLICY, options: { exit } }] }));
        return f;
      };
      expect(await main(['run', '--config', config(1e9), '--workload', 'demand-fault:pages=20', '--trace', ok])).toBe(0);
      const okLines = readTrace(ok);
      expect(okLines.filter((l) => l.type === 'window').at(-1)).toEqual({ type: 'window', phase: 'end' });
      const starts = okLines.flatMap((l, i) => (l.type === 'window' && l.phase === 'start' ? [i] : []));
      const firstInWindow = okLines.slice(starts[1]!).find((l) => l.type === 'exit')!;
      const failAt = (firstInWindow.seq as number) + 10;

      const file = path.join(dir, 'fail.jsonl');
      fs.writeFileSync(file, 'the old trace\n');
      // A policy that throws stops the run (ExitError E_POLICY_FAILED): exit 1 with the layer, the code and the
      // message, no stack trace (program.ts runStopped). The command failed, so FILE keeps its old contents; the
      // trace up to the failure is left beside it, in the partial file, which stderr names.
      err.length = 0;
      expect(await main(['run', '--config', config(failAt), '--workload', 'demand-fault:pages=20', '--trace', file])).toBe(1);
      const partial = `${file}.partial-${process.pid}`;
      expect(err.join('')).toMatch(
        new RegExp(
          `^vmexit: --trace: the run failed; ${file} keeps its old contents, and ${partial} holds the trace up to the failure\n` +
            'vmexit: the run stopped: ExitError E_POLICY_FAILED: .*\\(Error: fail-at: exit #\\d+ \\(EXCEPTION_NMI\\), as asked\\)\n$',
        ),
      );
      expect(err.join('')).not.toMatch(/\n\s+at /);
      expect(fs.readFileSync(file, 'utf8')).toBe('the old trace\n');
      const lines = readTrace(partial);
      const exits = lines.filter((l) => l.type === 'exit');
      // Every exit before the failing one, exactly as in the run that completed, then the reason.
      expect(exits.map((l) => l.seq)).toEqual(Array.from({ length: failAt - 1 }, (_, i) => i + 1));
      expect(exits).toEqual(okLines.filter((l) => l.type === 'exit').slice(0, failAt - 1));
      expect(lines.filter((l) => l.type === 'window').map((l) => l.phase)).toEqual(['start', 'start']);
      expect(lines.at(-1)).toMatchObject({ type: 'aborted', error: expect.stringContaining(`fail-at: exit #${failAt}`) });
      expect(lines.filter((l) => l.type === 'page-fault')).toEqual([]);
    });

    it('leaves no file on bad input, and refuses a file it cannot write (exit 2)', async () => {
      const file = path.join(dir, 't.jsonl');
      expect(await main(['run', '--workload', 'demand-fault:pages=100000', '--memory', '16M', '--trace', file])).toBe(2);
      expect(err.join('')).toMatch(/free pages/);
      expect(fs.readdirSync(dir)).toEqual([]);
      err.length = 0;
      expect(await main(['run', '--workload', 'demand-fault:pages=4', '--memory', '16M', '--trace', path.join(dir, 'no', 'such', 'dir.jsonl')])).toBe(2);
      expect(err.join('')).toMatch(/--trace: cannot write .*dir\.jsonl \(ENOENT\)/);
      expect(out.join('')).toBe('');
    });
  });
});
