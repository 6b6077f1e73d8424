import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { decodeVxt } from '../../src/trace/vxt.js';
import { describeVxt } from '../../src/trace/describe.js';
import { importLackey } from '../../src/trace/lackey.js';
import { PROT_EXEC, PROT_READ, PROT_WRITE, type VxtTrace } from '../../src/trace/types.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const KBUILD = path.join(HERE, '..', '..', 'traces', 'kbuild.vxt');
const PIPE = path.join(HERE, '..', 'fixtures', 'pipeline');

/** The right an access of each record kind needs, as the guest kernel's #PF handler checks it (write, fetch, else read). */
const NEED = [PROT_EXEC, PROT_READ, PROT_WRITE, PROT_WRITE];

/**
 * Replays the address spaces of `trace` on their own (initial mappings at each exec, then mmap, munmap,
 * mprotect and brk in program order; a fork child starts with a copy of its parent's), and counts the
 * records whose page no mapping covers (`missing`) and those whose mapping does not allow the access
 * (`forbidden`: a store without PROT_WRITE, a fetch without PROT_EXEC, a load without PROT_READ).
 *
 * What this pins, and what it does not: a page that the importer found touched outside every mmap and brk
 * became part of an inferred initial mapping, so `missing` is 0 for those pages by construction. It is
 * not by construction for everything else: that no access lands in a range after the trace's munmap of
 * it or a shrinking brk (the inference does not look again at a page it has seen), that the grouping into
 * regions lost no page, and that a fork child inherits its parent's mappings at the fork's place. And
 * `forbidden` checks the recorded mmap protections and every mprotect (ld.so's RELRO, for one) against
 * the accesses: only the inferred mappings' rights come from the accesses themselves. Replaying the trace
 * on the guest kernel gives a SIGSEGV exactly for such a record.
 */
function uncovered(trace: VxtTrace): { missing: number; forbidden: number } {
  type Space = [start: number, end: number, prot: number][];
  const atFork = new Map<number, Space>();
  let missing = 0;
  let forbidden = 0;
  const cut = (sp: Space, s: number, e: number): Space =>
    sp.flatMap(([a, b, prot]): Space => {
      if (b <= s || a >= e) return [[a, b, prot]];
      const out: Space = [];
      if (a < s) out.push([a, s, prot]);
      if (b > e) out.push([e, b, prot]);
      return out;
    });
  for (const p of trace.processes) {
    let sp: Space = atFork.get(p.pid) ?? [];
    let brkBase = -1;
    let brkTop = -1;
    let ei = 0;
    // (page, kind) already checked since the last event (an event changes the answer)
    const ok = new Set<number>();
    for (let i = p.recordStart; i <= p.recordEnd; i++) {
      while (ei < p.events.length && p.events[ei]!.at <= i) {
        const e = p.events[ei++]!;
        if (e.type === 'exec') {
          // the replay maps every initial mapping readable (replay.ts, execAreas)
          sp = e.mappings.map((m) => [m.start, m.start + m.length, m.prot | PROT_READ]);
          brkBase = -1;
        } else if (e.type === 'mmap') sp = [...cut(sp, e.start, e.start + e.length), [e.start, e.start + e.length, e.prot]];
        else if (e.type === 'munmap') sp = cut(sp, e.start, e.start + e.length);
        else if (e.type === 'mprotect') {
          const end = e.start + e.length;
          sp = sp.flatMap(([a, b, prot]): Space => {
            if (b <= e.start || a >= end) return [[a, b, prot]];
            const s = Math.max(a, e.start);
            const t = Math.min(b, end);
            return [...cut([[a, b, prot]], s, t), [s, t, e.prot]];
          });
        } else if (e.type === 'brk') {
          if (brkBase < 0) brkBase = brkTop = e.result;
          const top = Math.ceil(Math.max(e.result, brkBase) / 4096) * 4096;
          const cur = Math.ceil(brkTop / 4096) * 4096;
          if (top > cur) sp.push([cur, top, PROT_READ | PROT_WRITE]);
          else if (top < cur) sp = cut(sp, top, cur);
          brkTop = Math.max(e.result, brkBase);
        } else if (e.type === 'fork')
          atFork.set(
            e.child,
            sp.map(([s, end, prot]) => [s, end, prot]),
          );
        ok.clear();
      }
      if (i === p.recordEnd) break;
      const pg = trace.accesses.page[i]!;
      const k = trace.accesses.kind[i]!;
      const key = pg * 4 + k;
      if (ok.has(key)) continue;
      const a = pg * 4096;
      const area = sp.find(([s, end]) => a >= s && a < end);
      if (area === undefined) missing++;
      else if ((area[2] & NEED[k]!) === 0) forbidden++;
      else ok.add(key);
    }
  }
  return { missing, forbidden };
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
        // in the trace's process order (the order of the recording's pids: cc1 13470, as 15442)
        [false, ['/usr/lib/gcc/x86_64-linux-gnu/12/cc1']],
        [false, ['/usr/bin/as']],
      ]);
      expect(d.processes.slice(1).every((p) => p.parent === d.processes[0]!.pid)).toBe(true);
      expect(d.processes.map((p) => p.status)).toEqual([0, 0, 0]);
      // the figures of the committed recording (record-kbuild.sh prints them)
      expect(d.records).toBe(32999309);
      expect(d.accesses).toBe(186871846);
      expect(d.distinctPages).toBe(4382);
      // the gcc driver vforks cc1 and as (valgrind logs vfork as `(58) sys_fork`) and waits for each (wait4)
      expect(d.events).toEqual({ mmap: 107, munmap: 3, mprotect: 23, brk: 26, fork: 2, vfork: 2, wait: 2, exec: 3, exit: 3 });
      expect(uncovered(t)).toEqual({ missing: 0, forbidden: 0 });
    });
  });

  describe('.pipeline', () => {
    it('keeps every access of the recorded pipeline inside a mapping', () => {
      const logs = fs
        .readdirSync(PIPE)
        .filter((f) => /^pipe\.\d+\.\d+$/.test(f))
        .map((f) => path.join(PIPE, f));
      const t = importLackey(logs);
      expect(uncovered(t)).toEqual({ missing: 0, forbidden: 0 });
      // without the inferred initial mappings the same check finds the loader's pages unmapped
      const bare: VxtTrace = {
        ...t,
        processes: t.processes.map((p) => ({
          ...p,
          events: p.events.map((e) => (e.type === 'exec' ? { ...e, mappings: [] } : e)),
        })),
      };
      expect(uncovered(bare).missing).toBeGreaterThan(0);
      // and with the recorded mmaps made read-only, the stores and fetches into them are forbidden
      const readOnly: VxtTrace = {
        ...t,
        processes: t.processes.map((p) => ({ ...p, events: p.events.map((e) => (e.type === 'mmap' ? { ...e, prot: PROT_READ } : e)) })),
      };
      expect(uncovered(readOnly).forbidden).toBeGreaterThan(0);
    });
  });
});
