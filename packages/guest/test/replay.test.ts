import { describe, expect, it } from 'vitest';
import { traceHighestAddress } from '../src/replay.js';
import { runWorkload } from '../src/run.js';
import { TraceError } from '../src/trace/errors.js';
import type { VxtEvent, VxtTrace } from '../src/trace/types.js';

const MEM = 16 * 1024 * 1024;

/** One root process (pid 1) that execs /bin/x (two text pages at 0x108000), then has `events`, then `pages` accessed. */
function trace(events: VxtEvent[], pages: number[] = [0x108]): VxtTrace {
  const n = pages.length;
  return {
    collapse: 'run',
    source: { tool: 'test', command: 'x' },
    accesses: { length: n, kind: new Uint8Array(n).fill(1), page: Float64Array.from(pages), count: new Uint32Array(n).fill(1) },
    processes: [
      {
        pid: 1,
        parent: 0,
        recordStart: 0,
        recordEnd: n,
        events: [
          { type: 'exec', at: 0, pid: 1, path: '/bin/x', mappings: [{ start: 0x108000, length: 0x2000, prot: 5, role: 'exe', file: '/bin/x' }] },
          ...events,
        ],
      },
    ],
  };
}

/** Replays `t` (not decoded from a file: decodeVxt would reject most of these) as the workload `mem.vxt`. */
const replay = (t: VxtTrace, mode: 'long4' | 'pae' = 'long4') => runWorkload({ workload: 'mem.vxt', mode, memory: MEM, loadTrace: () => t }).result;

describe('startReplay', () => {
  describe('.events', () => {
    it('reports an event the guest kernel refuses as a TraceError naming the trace, the process and the event', () => {
      const t = trace([{ type: 'mmap', at: 0, start: 0x4835001, length: 8192, prot: 3, flags: 34, offset: 0, file: null }]);
      let err: unknown = null;
      try {
        replay(t);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(TraceError);
      expect((err as Error).message).toBe(
        'mem.vxt: pid 1: mmap event 1 (before record 0) cannot be replayed: mmap of [0x4835001, 0x4837001) is outside user space',
      );
    });

    it('refuses an mmap event of length 0: a recorded mmap succeeded, and Linux fails every mmap of length 0', () => {
      // mm/mmap.c do_mmap returns -EINVAL for a length of 0; the lackey importer keeps only the mmaps that
      // succeeded (a failed one mapped nothing) and decodeVxt refuses an empty one, so such an event is bad
      // input, not something to map as an empty area.
      const t = trace([{ type: 'mmap', at: 0, start: 0x4835000, length: 0, prot: 3, flags: 34, offset: 0, file: null }]);
      expect(() => replay(t)).toThrow(TraceError);
      expect(() => replay(t)).toThrow('mem.vxt: pid 1: mmap event 1 (before record 0) cannot be replayed: mmap of 0 bytes: EINVAL');
    });

    it("checks munmap and mprotect ranges against the paging mode's user space too: beyond it, they are relocated with the rest", () => {
      const t = trace([{ type: 'munmap', at: 0, start: 0x1fff000000, length: 4096 }]);
      expect(traceHighestAddress(t)).toBe(0x1fff001000);
      // In pae the munmap page is a region of its own, moved down after the exe's (relocate.ts): it was recorded in
      // another page directory (GiB 0x7f), so it goes to the next 1 GiB block, at its offset in its GiB.
      expect(replay(t, 'pae').guest.trace!.relocation!.groups[0]!.regions).toEqual([
        { from: 0x108000, to: 0x108000, length: 0x2000 },
        { from: 0x1fff000000, to: 0x7f000000, length: 0x1000 },
      ]);
      expect(replay(t).guest.trace!.relocation).toBeUndefined();
    });
  });

  describe('.records', () => {
    it('turns an access to a non-canonical address into a SIGSEGV from the #GP handler, not a triple fault', () => {
      // Page -2^40 is the linear address -2^52: bits 63:47 are not all equal, so in 4-level paging the
      // access is #GP without a walk (SDM Vol. 3A §4.5.1); the kernel's #GP handler sends SIGSEGV. The
      // record is counted as a SIGSEGV record and the run goes on: the next record (0x108) is a file fault.
      const r = replay(trace([], [-(2 ** 40), 0x108]));
      expect(r.guest.sigsegv).toBe(1);
      expect(r.guest.faults).toMatchObject({ total: 1, file: 1, sigsegv: 0 });
      expect(r.guest.trace).toEqual({ records: 2, represented: 2, sigsegvRecords: 1 });
    });
  });
});
