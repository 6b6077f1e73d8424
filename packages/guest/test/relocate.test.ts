import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RELOCATION_ALIGN, planRelocation, relocateTrace, traceFit, type TraceRelocation } from '../src/relocate.js';
import { runWorkload } from '../src/run.js';
import type { VxtEvent, VxtProcess, VxtTrace } from '../src/trace/types.js';
import { WorkloadError } from '../src/workloads/params.js';

const MEM = 16 * 1024 * 1024;
const PAE_USER = 0xc0000000;

/** A trace of processes given as (pid, parent, events, pages); records are loads, in process order. */
function trace(procs: { pid: number; parent: number; events: VxtEvent[]; pages: number[] }[]): VxtTrace {
  const pages = procs.flatMap((p) => p.pages);
  const n = pages.length;
  let at = 0;
  const processes: VxtProcess[] = procs.map((p) => {
    const recordStart = at;
    at += p.pages.length;
    return { pid: p.pid, parent: p.parent, recordStart, recordEnd: at, events: p.events.map((e) => ({ ...e, at: recordStart })) };
  });
  return {
    collapse: 'run',
    source: { tool: 'test', command: 'x' },
    accesses: { length: n, kind: new Uint8Array(n).fill(1), page: Float64Array.from(pages), count: new Uint32Array(n).fill(1) },
    processes,
  };
}

const exec = (pid: number, start: number, length: number, role: 'exe' | 'stack' = 'exe'): VxtEvent => ({
  type: 'exec',
  at: 0,
  pid,
  path: '/bin/x',
  mappings: [{ start, length, prot: role === 'exe' ? 5 : 3, role, file: role === 'exe' ? '/bin/x' : null }],
});
const mmap = (start: number, length: number): VxtEvent => ({ type: 'mmap', at: 0, start, length, prot: 3, flags: 34, offset: 0, file: null });

/** A valgrind-like process: the exe at 0x108000, an mmap near 0x4000000, the stack below 0x1fff001000. */
const VALGRIND = trace([
  {
    pid: 1,
    parent: 0,
    events: [exec(1, 0x108000, 0x2000), mmap(0x4835000, 0x3000), { type: 'munmap', at: 0, start: 0x1ffeff0000, length: 0x1000 }],
    pages: [0x108, 0x4836, 0x1fff000, 0x109],
  },
]);

describe('planRelocation', () => {
  it('leaves a trace that fits as it is', () => {
    expect(planRelocation(VALGRIND, 2 ** 47 - 4096)).toEqual({ kind: 'fits' });
  });

  it('moves the regions of a 64-bit process into 3 GiB: same sizes, same order, the first in place, 2 MiB-congruent', () => {
    const plan = planRelocation(VALGRIND, PAE_USER);
    expect(plan.kind).toBe('relocated');
    const groups = (plan as { relocation: TraceRelocation }).relocation.groups;
    // Four regions: the exe [0x108000, 0x10a000); the mmap [0x4835000, 0x4838000); the munmap page
    // 0x1ffeff0000 and the stack page 0x1fff000000, 64 KiB apart, kept as two regions with their gap.
    // The exe stays; the mmap keeps its gap (under 2 MiB? no: 71 MiB, so it comes down to the first
    // address congruent to 0x4835000 mod 2 MiB above 0x10a000: 0x235000); the stack pages likewise.
    expect(groups).toEqual([
      {
        pids: [1],
        regions: [
          { from: 0x108000, to: 0x108000, length: 0x2000 },
          { from: 0x4835000, to: 0x235000, length: 0x3000 },
          { from: 0x1ffeff0000, to: 0x3f0000, length: 0x1000 },
          { from: 0x1fff000000, to: 0x400000, length: 0x1000 },
        ],
        span: 0x400000 + 0x1000 - 0x108000,
        bytes: 0x7000,
      },
    ]);
  });

  it('gives a fork child its parent map (one map per process tree), and a separate tree its own', () => {
    const t = trace([
      { pid: 1, parent: 0, events: [exec(1, 0x108000, 0x1000), { type: 'fork', at: 0, parent: 1, child: 2 }], pages: [0x1fff000] },
      { pid: 2, parent: 1, events: [exec(2, 0x400000, 0x1000)], pages: [0x400] },
      { pid: 3, parent: 0, events: [exec(3, 0x108000, 0x1000)], pages: [0x108] },
    ]);
    const plan = planRelocation(t, PAE_USER);
    expect(plan.kind).toBe('relocated');
    const groups = (plan as { relocation: TraceRelocation }).relocation.groups;
    expect(groups.map((g) => g.pids)).toEqual([[1, 2], [3]]);
    expect(groups[1]!.regions).toEqual([{ from: 0x108000, to: 0x108000, length: 0x1000 }]);
  });

  it('refuses a tree whose regions do not fit, with the sizes, and says which modes can replay it', () => {
    const t = trace([{ pid: 1, parent: 0, events: [exec(1, 0x108000, 0x1000), mmap(0x10000000, 2 ** 32)], pages: [0x108] }]);
    const plan = planRelocation(t, PAE_USER);
    expect(plan).toEqual({ kind: 'too-big', misfits: [{ pids: [1], bytes: 2 ** 32 + 0x1000, span: 2 ** 32 + 0x200000 - 0x108000, highest: 0x110000000 }] });
    let err: unknown = null;
    try {
      runWorkload({ workload: 'big.vxt', mode: 'pae', memory: MEM, loadTrace: () => t });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(WorkloadError);
    expect((err as Error).message).toContain(
      'the trace does not fit the 3221225472 bytes (0xc0000000, 3072.0 MiB) of user space of pae paging, even relocated: the process tree of pid 1 (1 process) uses addresses up to 0x110000000; its mappings cover 4294971392 bytes (4096.0 MiB) and need 4295983104 bytes (4097.0 MiB) relocated with their gaps; replay it with --mode long4 or --mode long5',
    );
  });

  it('says that no mode can replay a trace whose tree needs more than 4- and 5-level paging give users', () => {
    const t = trace([{ pid: 1, parent: 0, events: [exec(1, 0x108000, 0x1000), mmap(2 ** 46, 2 ** 47)], pages: [0x108] }]);
    expect(traceFit(t).map((f) => f.replay)).toEqual(['too-big', 'too-big', 'too-big', 'too-big']);
    expect(() => runWorkload({ workload: 'huge.vxt', mode: 'long4', memory: MEM, loadTrace: () => t })).toThrow(/no paging mode can replay it/);
  });
});

describe('relocateTrace', () => {
  it('maps accesses and events by their region, and leaves the input trace unchanged', () => {
    const plan = planRelocation(VALGRIND, PAE_USER) as { relocation: TraceRelocation };
    const r = relocateTrace(VALGRIND, plan.relocation);
    expect([...r.accesses.page]).toEqual([0x108, 0x236, 0x400, 0x109]);
    expect(r.processes[0]!.events.map((e) => ('start' in e ? e.start : 'mappings' in e ? e.mappings[0]!.start : null))).toEqual([0x108000, 0x235000, 0x3f0000]);
    expect([...VALGRIND.accesses.page]).toEqual([0x108, 0x4836, 0x1fff000, 0x109]);
  });

  it('replays a 64-bit trace in pae and legacy32, saying so in the result', () => {
    for (const mode of ['pae', 'legacy32'] as const) {
      const r = runWorkload({ workload: 'v.vxt', mode, memory: MEM, loadTrace: () => VALGRIND }).result;
      // The four records: exe (file fault), the mmap'd page (a zero-page read), the stack page (no area
      // in this little trace: SIGSEGV), the exe's second page (file fault).
      expect(r.guest.trace).toMatchObject({ records: 4, represented: 4, sigsegvRecords: 1 });
      expect(r.guest.trace!.relocation!.groups[0]!.regions).toHaveLength(4);
    }
  });

  it('keeps page offsets, order and sizes, and maps each tree one-to-one (property)', () => {
    const region = fc.record({ gapPages: fc.integer({ min: 1, max: 2 ** 26 }), pages: fc.integer({ min: 1, max: 64 }) });
    fc.assert(
      fc.property(fc.array(region, { minLength: 1, maxLength: 12 }), fc.integer({ min: 1, max: 2 ** 20 }), (regions, firstPage) => {
        // One process: an exec mapping per region (addresses up to ~2^38), and an access to each region's
        // first and last page and to a page in the middle.
        let at = firstPage;
        const maps: { start: number; length: number }[] = [];
        for (const g of regions) {
          maps.push({ start: at * 4096, length: g.pages * 4096 });
          at += g.pages + g.gapPages;
        }
        const pages = maps.flatMap((m) => [m.start / 4096, m.start / 4096 + Math.floor(m.length / 8192), (m.start + m.length) / 4096 - 1]);
        const t = trace([
          {
            pid: 1,
            parent: 0,
            events: [{ type: 'exec', at: 0, pid: 1, path: '/x', mappings: maps.map((m) => ({ ...m, prot: 3, role: 'other' as const, file: null })) }],
            pages,
          },
        ]);
        const plan = planRelocation(t, PAE_USER);
        if (plan.kind === 'too-big') {
          // Refused only when packing cannot fit: the regions with gaps of at most 2 MiB each exceed 3 GiB.
          const bytes = maps.reduce((s, m) => s + m.length, 0);
          expect(bytes + (maps.length - 1) * RELOCATION_ALIGN + (maps[0]!.start % RELOCATION_ALIGN)).toBeGreaterThan(PAE_USER);
          return;
        }
        if (plan.kind === 'fits') {
          expect((at - regions[regions.length - 1]!.gapPages) * 4096).toBeLessThanOrEqual(PAE_USER);
          return;
        }
        const rs = plan.relocation.groups[0]!.regions;
        for (let i = 0; i < rs.length; i++) {
          const r = rs[i]!;
          expect(Math.abs((r.to - r.from) % RELOCATION_ALIGN)).toBe(0); // offsets in the page and in its 2 MiB kept
          expect(r.to).toBeGreaterThanOrEqual(0);
          expect(r.to + r.length).toBeLessThanOrEqual(PAE_USER);
          if (i > 0) {
            const p = rs[i - 1]!;
            expect(r.from).toBeGreaterThan(p.from + p.length); // regions are disjoint and not touching
            expect(r.to).toBeGreaterThan(p.to + p.length); // order kept, never touching after either
            expect(r.to - (p.to + p.length)).toBeLessThanOrEqual(Math.min(r.from - (p.from + p.length), RELOCATION_ALIGN));
          }
        }
        // Sizes kept: each mapping is inside one region, with its length, and maps to a distinct place.
        const r = relocateTrace(t, plan.relocation);
        const exec0 = r.processes[0]!.events[0]!;
        if (exec0.type !== 'exec') throw new Error('exec expected');
        exec0.mappings.forEach((m, i) => {
          expect(m.length).toBe(maps[i]!.length);
          if (i > 0) expect(m.start - exec0.mappings[i - 1]!.start).toBeGreaterThan(0);
        });
        // A bijection on the pages used: distinct pages stay distinct and map back by the region's shift.
        const out = [...r.accesses.page];
        expect(new Set(out).size).toBe(new Set(pages).size);
        out.forEach((q, i) => {
          const region = rs.find((x) => pages[i]! * 4096 >= x.from && pages[i]! * 4096 < x.from + x.length)!;
          expect(q * 4096).toBe(pages[i]! * 4096 + region.to - region.from);
        });
      }),
      { numRuns: 300 },
    );
  });
});
