import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MODE_LEGACY32, MODE_LONG4, MODE_PAE } from '@vmexit/core';
import { modeLayout } from '../src/os/layout.js';
import { planRelocation, relocateTrace, tableSpans, traceFit, type RelocationRegion, type TraceRelocation } from '../src/relocate.js';
import { runWorkload } from '../src/run.js';
import type { VxtEvent, VxtProcess, VxtTrace } from '../src/trace/types.js';
import { WorkloadError } from '../src/workloads/params.js';

const MEM = 16 * 1024 * 1024;
const PAE_USER = 0xc0000000;
const MiB = 2 ** 20;
const GiB = 2 ** 30;

/** The relocated regions of the one process tree of `plan`, and the table span it was packed by. */
function placed(plan: ReturnType<typeof planRelocation>): { to: number[]; align: number } {
  if (plan.kind !== 'relocated') throw new Error(`relocated expected, got ${plan.kind}`);
  const g = plan.relocation.groups[0]!;
  return { to: g.regions.map((r) => r.to), align: g.align };
}

/** The table of `span` bytes that holds `address`. */
const table = (address: number, span: number): number => Math.floor(address / span);

/**
 * For each pair of regions (the last page of the lower, the first of the upper): whether they are in the same
 * table of `span` bytes, as recorded and as relocated (the two lists are equal when relocation keeps the sharing).
 */
function sharing(regions: readonly RelocationRegion[], span: number): { recorded: boolean[]; relocated: boolean[] } {
  const recorded: boolean[] = [];
  const relocated: boolean[] = [];
  for (let i = 0; i < regions.length; i++)
    for (let j = i + 1; j < regions.length; j++) {
      const a = regions[i]!;
      const b = regions[j]!;
      recorded.push(table(a.from + a.length - 1, span) === table(b.from, span));
      relocated.push(table(a.to + a.length - 1, span) === table(b.to, span));
    }
  return { recorded, relocated };
}

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

  it('moves the regions of a 64-bit process into 3 GiB: same sizes, same order, by page directories (pae)', () => {
    const plan = planRelocation(VALGRIND, modeLayout(MODE_PAE));
    expect(plan.kind).toBe('relocated');
    const groups = (plan as { relocation: TraceRelocation }).relocation.groups;
    // Four regions: the exe [0x108000, 0x10a000); the mmap [0x4835000, 0x4838000); the munmap page
    // 0x1ffeff0000 and the stack page 0x1fff000000, 64 KiB apart. The first two are in the first GiB (one
    // page directory, PDPTE 0), the last two in GiB 0x7f (0x1ffeff0000 >> 30): two runs of 1 GiB, which fit
    // the 3 user GiBs of PAE. The first run stays; the second goes to GiB 1 at its offset in its GiB,
    // 0x1ffeff0000 - 0x7f * 2^30 = 0x3eff0000: 0x7eff0000, and the stack 0x10000 above it at 0x7f000000.
    // (By 2 GiB it would go to 0x80000000 + 0x7eff0000, past 3 GiB.)
    // (Before: packed by 2 MiB, to 0x108000, 0x235000, 0x3f0000, 0x400000: one page directory where the
    // recording had two, and the mmap and the munmap page in one page table.)
    expect(groups).toEqual([
      {
        pids: [1],
        regions: [
          { from: 0x108000, to: 0x108000, length: 0x2000 },
          { from: 0x4835000, to: 0x4835000, length: 0x3000 },
          { from: 0x1ffeff0000, to: 0x7eff0000, length: 0x1000 },
          { from: 0x1fff000000, to: 0x7f000000, length: 0x1000 },
        ],
        span: 0x7f000000 + 0x1000 - 0x108000,
        bytes: 0x7000,
        align: GiB,
      },
    ]);
    // A bare user limit is taken as that of a mode with 8-byte entries: PAE here.
    expect(planRelocation(VALGRIND, PAE_USER)).toEqual(plan);
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
    // Packed by page directories the mmap stays in the exe's (both begin in GiB 0) and ends at 0x110000000;
    // by page tables it goes to the next 2 MiB after the exe's, 0x200000 (its offset in 2 MiB is 0): it
    // ends at 0x200000 + 2^32, past 3 GiB as well.
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

describe('planRelocation (tables shared as recorded)', () => {
  /**
   * VALGRIND with an mmap of `length` bytes at 0x4835000 instead of 0x3000: so large that the regions fit
   * 3 GiB only packed by small blocks.
   */
  const big = (length: number): VxtTrace =>
    trace([
      {
        pid: 1,
        parent: 0,
        events: [exec(1, 0x108000, 0x2000), mmap(0x4835000, length), { type: 'munmap', at: 0, start: 0x1ffeff0000, length: 0x1000 }],
        pages: [0x108, 0x4836, 0x1fff000],
      },
    ]);

  it('keeps regions recorded in different page tables in different ones, packed by page tables (pae)', () => {
    const plan = planRelocation(big(0xbf4cb000), modeLayout(MODE_PAE));
    // The mmap [0x4835000, 0xc3d00000); the munmap page 0x1ffeff0000 (offset 0x1f0000 in its 2 MiB, 0xfff7f)
    // and the stack page 0x1fff000000 (offset 0, in the 2 MiB 0xfff80): each region in a page table of its
    // own. By 2 MiB the exe stays, the mmap goes to 2 MiB 1 at its offset 0x35000: [0x235000, 0xbf700000);
    // the munmap page to the next 2 MiB, 0xbf800000 + 0x1f0000 = 0xbf9f0000; the stack page to the next,
    // 0xbfa00000, and ends under 3 GiB. By 4 MiB the mmap would end at 0x435000 + 0xbf4cb000 = 0xbf900000,
    // the munmap page go to 0xbfc00000 + 0x3f0000 and the stack page to 0xc0000000: past 3 GiB.
    // (Before: the munmap page went to the lowest address above 0xbf700000 with its offset in 2 MiB,
    // 0xbf7f0000, in the mmap's last page table, and the stack page to 0xbf800000.)
    expect(placed(plan)).toEqual({ to: [0x108000, 0x235000, 0xbf9f0000, 0xbfa00000], align: 2 * MiB });
    const s = sharing((plan as { relocation: TraceRelocation }).relocation.groups[0]!.regions, 2 * MiB);
    expect(s.relocated).toEqual(s.recorded);
  });

  it('keeps regions recorded in different 4 MiB page tables in different ones in legacy32 (a PDE maps 4 MiB)', () => {
    const plan = planRelocation(big(0xbf2cb000), modeLayout(MODE_LEGACY32));
    // 32-bit paging has one table below the top, the page table, of 4 MiB (SDM Vol. 3A §4.3). By 4 MiB the
    // exe stays; the mmap (offset 0x35000 in its 4 MiB) goes to 0x435000 and ends at 0xbf700000; the munmap
    // page (offset 0x3f0000) to the next 4 MiB, 0xbf800000 + 0x3f0000 = 0xbfbf0000; the stack page (offset
    // 0) to the next, 0xbfc00000. By 8 MiB the mmap would end at 0x835000 + 0xbf2cb000 = 0xbfb00000 and the
    // munmap page go to 0xc0000000 + 0x7f0000: past 3 GiB.
    // (Before: packed by 2 MiB, the mmap went to 0x235000, in the exe's page table [0, 4 MiB).)
    expect(placed(plan)).toEqual({ to: [0x108000, 0x435000, 0xbfbf0000, 0xbfc00000], align: 4 * MiB });
    const s = sharing((plan as { relocation: TraceRelocation }).relocation.groups[0]!.regions, 4 * MiB);
    expect(s.relocated).toEqual(s.recorded);
  });

  it('keeps the page directories of a small 64-bit trace in legacy32 too (packed by 1 GiB)', () => {
    // As in pae: by 2 GiB the munmap page would go to 0x80000000 + 0x7eff0000, past 3 GiB; by 1 GiB it goes
    // to 0x7eff0000. (Before: 0x108000, 0x235000, 0x3f0000, 0x400000; the mmap and the munmap page in the
    // exe's 4 MiB page table.)
    expect(placed(planRelocation(VALGRIND, modeLayout(MODE_LEGACY32)))).toEqual({ to: [0x108000, 0x4835000, 0x7eff0000, 0x7f000000], align: GiB });
  });

  it('never lets a region touch the one before: at an offset of 0 after a region that ends on a block boundary, one block more', () => {
    const t = trace([{ pid: 1, parent: 0, events: [exec(1, 0x108000, 0x80000000 - 0x108000), mmap(0x1000000000, 0x1000)], pages: [] }]);
    // The exe ends at 2 GiB, a boundary of every block up to 2 GiB, and the mmap is at offset 0 in each: it
    // would touch the exe (an mmap adjacent to the exe's area could merge with it), so it goes one block
    // further: by 2 GiB and 1 GiB to 0x100000000 and 0xc0000000, past 3 GiB; by 512 MiB to 0xa0000000.
    // (Before: 0x80200000.)
    expect(placed(planRelocation(t, modeLayout(MODE_LEGACY32)))).toEqual({ to: [0x108000, 0xa0000000], align: 512 * MiB });
  });

  it('never moves a region to page 0: a lowest region at offset 0 in its block goes one block up', () => {
    // The exe at 1 TiB, at offset 0 of every block up to 1 TiB; the stack near the top of 47-bit space. By its
    // offset the exe would move to address 0, a page Linux never maps (the top-down and bottom-up searches
    // start at PAGE_SIZE, mm/mmap.c `vm_unmapped_area`'s low_limit; security/min_addr.c `mmap_min_addr`). So
    // it goes to the next block: by 2 GiB to 0x80000000, and the stack (offset 0x7ffde000 in its 2 GiB) to
    // 0x100000000 + 0x7ffde000, past 3 GiB; by 1 GiB the exe to 0x40000000 and the stack (offset 0x3ffde000)
    // to 0x80000000 + 0x3ffde000 = 0xbffde000.
    const t = trace([{ pid: 1, parent: 0, events: [exec(1, 2 ** 40, 0x1000), mmap(0x7ffffffde000, 0x1000)], pages: [] }]);
    expect(placed(planRelocation(t, modeLayout(MODE_LEGACY32)))).toEqual({ to: [GiB, 0xbffde000], align: GiB });
  });

  it('keeps the page directories and PDPTs of a 57-bit trace replayed in long4', () => {
    const t = trace([{ pid: 1, parent: 0, events: [exec(1, 0x108000, 0x2000), mmap(0x7ffff7a00000, 0x1000), mmap(0xffffffff000000, 0x1000)], pages: [] }]);
    // The user space is 2^47 - 4 KiB: blocks of up to 2^46. By 2^46 the mmap stays (block 1) and the last
    // region (block 0x3ff) would go to block 2, 2^47: past it. By 2^45 the mmap (block 3, offset
    // 0x1ffff7a00000) goes to block 1: 0x3ffff7a00000; the last (block 0x7ff, offset 0x1fffff000000) to
    // block 2: 0x5fffff000000. Everything under 32 TiB is as recorded: page tables, PDs, PDPTs and their indices.
    expect(placed(planRelocation(t, modeLayout(MODE_LONG4)))).toEqual({ to: [0x108000, 0x3ffff7a00000, 0x5fffff000000], align: 2 ** 45 });
  });

  it('tableSpans: the tables below the top of each mode, and those of 8-byte entries under a bare limit', () => {
    expect(tableSpans(modeLayout(MODE_LEGACY32))).toEqual([4 * MiB]);
    expect(tableSpans(modeLayout(MODE_PAE))).toEqual([2 * MiB, GiB]);
    expect(tableSpans(modeLayout(MODE_LONG4))).toEqual([2 * MiB, GiB, 2 ** 39]);
    expect(tableSpans(PAE_USER)).toEqual([2 * MiB, GiB]);
  });
});

describe('relocateTrace', () => {
  it('maps accesses and events by their region, and leaves the input trace unchanged', () => {
    const plan = planRelocation(VALGRIND, PAE_USER) as { relocation: TraceRelocation };
    const r = relocateTrace(VALGRIND, plan.relocation);
    // The regions of the pae test above: the exe and the mmap stay, 0x1ffeff0000 -> 0x7eff0000, 0x1fff000000 -> 0x7f000000.
    expect([...r.accesses.page]).toEqual([0x108, 0x4836, 0x7f000, 0x109]);
    expect(r.processes[0]!.events.map((e) => ('start' in e ? e.start : 'mappings' in e ? e.mappings[0]!.start : null))).toEqual([
      0x108000, 0x4835000, 0x7eff0000,
    ]);
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

  it('keeps page offsets, order, sizes and the tables regions share, and maps each tree one-to-one (property)', () => {
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
        const plan = planRelocation(t, modeLayout(MODE_PAE));
        const bytes = maps.reduce((s, m) => s + m.length, 0);
        if (plan.kind === 'too-big') {
          // Refused only when packing by page tables cannot fit: each gap then is under two page tables
          // (the next table after the one where the region before ends, at an offset under 2 MiB).
          expect(bytes + (maps.length - 1) * 4 * MiB + (maps[0]!.start % (2 * MiB))).toBeGreaterThan(PAE_USER);
          return;
        }
        if (plan.kind === 'fits') {
          expect((at - regions[regions.length - 1]!.gapPages) * 4096).toBeLessThanOrEqual(PAE_USER);
          return;
        }
        const g = plan.relocation.groups[0]!;
        const rs = g.regions;
        // Which regions share a page table is as recorded, and which share a page directory when packed by 1 GiB or more.
        for (const span of [2 * MiB, GiB].filter((x) => x === 2 * MiB || x <= g.align)) {
          const sh = sharing(rs, span);
          expect(sh.relocated).toEqual(sh.recorded);
        }
        expect(Number.isInteger(Math.log2(g.align)) && g.align >= 2 * MiB && g.align < PAE_USER).toBe(true);
        for (let i = 0; i < rs.length; i++) {
          const r = rs[i]!;
          expect(Math.abs((r.to - r.from) % g.align)).toBe(0); // offsets in the page and in its tables kept
          expect(r.to).toBeGreaterThanOrEqual(0);
          expect(r.to + r.length).toBeLessThanOrEqual(PAE_USER);
          if (i > 0) {
            const p = rs[i - 1]!;
            expect(r.from).toBeGreaterThan(p.from + p.length); // regions are disjoint and not touching
            expect(r.to).toBeGreaterThan(p.to + p.length); // order kept, never touching after either
            expect(r.to - (p.to + p.length)).toBeLessThanOrEqual(r.from - (p.from + p.length)); // gaps never grow
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
