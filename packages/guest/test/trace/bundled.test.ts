import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { decodeVxt } from '../../src/trace/vxt.js';
import { describeVxt } from '../../src/trace/describe.js';
import { importLackey } from '../../src/trace/lackey.js';
import type { VxtTrace } from '../../src/trace/types.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const KBUILD = path.join(HERE, '..', '..', 'traces', 'kbuild.vxt');
const PIPE = path.join(HERE, '..', 'fixtures', 'pipeline');

/**
 * Replays the address spaces of `trace` (initial mappings at each exec, then mmap/munmap/brk; a fork
 * child starts with a copy of its parent's) and returns the records whose page no mapping covered.
 */
function uncovered(trace: VxtTrace): number {
  type Space = [number, number][];
  const atFork = new Map<number, Space>();
  let missing = 0;
  for (const p of trace.processes) {
    let sp: Space = atFork.get(p.pid) ?? [];
    let brkBase = -1;
    let ei = 0;
    // pages already checked since the last event (an event changes the answer)
    const ok = new Set<number>();
    const covers = (a: number): boolean => sp.some(([s, e]) => a >= s && a < e);
    for (let i = p.recordStart; i <= p.recordEnd; i++) {
      while (ei < p.events.length && p.events[ei]!.at <= i) {
        const e = p.events[ei++]!;
        if (e.type === 'exec') {
          sp = e.mappings.map((m) => [m.start, m.start + m.length]);
          brkBase = -1;
        } else if (e.type === 'mmap') sp.push([e.start, e.start + e.length]);
        else if (e.type === 'munmap') sp = sp.filter(([s, end]) => end <= e.start || s >= e.start + e.length);
        else if (e.type === 'brk') {
          if (brkBase < 0) brkBase = e.result;
          sp.push([brkBase, e.result]);
        } else if (e.type === 'fork')
          atFork.set(
            e.child,
            sp.map(([s, end]) => [s, end]),
          );
        ok.clear();
      }
      if (i === p.recordEnd) break;
      const pg = trace.accesses.page[i]!;
      if (ok.has(pg)) continue;
      if (covers(pg * 4096)) ok.add(pg);
      else missing++;
    }
  }
  return missing;
}

describe('bundled traces', () => {
  describe('.kbuild', () => {
    it('is gcc running cc1 and as, with every access inside a mapping', () => {
      const bytes = fs.readFileSync(KBUILD);
      expect(bytes.length).toBeLessThan(3 * 1024 * 1024);
      const t = decodeVxt(bytes, KBUILD);
      const d = describeVxt(t, bytes.length);
      expect(d.processes.map((p) => [p.parent === 0, p.images])).toEqual([
        [true, ['gcc']],
        [false, ['/usr/lib/gcc/x86_64-linux-gnu/12/cc1']],
        [false, ['/usr/bin/as']],
      ]);
      expect(d.processes.slice(1).every((p) => p.parent === d.processes[0]!.pid)).toBe(true);
      expect(d.processes.map((p) => p.status)).toEqual([0, 0, 0]);
      // the figures of the committed recording (record-kbuild.sh prints them)
      expect(d.records).toBe(14070839);
      expect(d.accesses).toBe(83348455);
      expect(d.distinctPages).toBe(3754);
      expect(d.events).toEqual({ mmap: 103, munmap: 3, mprotect: 23, brk: 26, fork: 2, exec: 3, exit: 3 });
      expect(uncovered(t)).toBe(0);
    });
  });

  describe('.pipeline', () => {
    it('keeps every access of the recorded pipeline inside a mapping', () => {
      const logs = fs
        .readdirSync(PIPE)
        .filter((f) => /^pipe\.\d+\.\d+$/.test(f))
        .map((f) => path.join(PIPE, f));
      const t = importLackey(logs);
      expect(uncovered(t)).toBe(0);
      // without the inferred initial mappings the same check finds the loader's pages unmapped
      const bare: VxtTrace = {
        ...t,
        processes: t.processes.map((p) => ({
          ...p,
          events: p.events.map((e) => (e.type === 'exec' ? { ...e, mappings: [] } : e)),
        })),
      };
      expect(uncovered(bare)).toBeGreaterThan(0);
    });
  });
});
