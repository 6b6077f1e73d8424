import { hexU64 as hex, PAGE_SIZE, PAGING_MODE_NAMES, pagingModeId, type PagingModeName } from '@vmexit/core';
import { modeLayout, type ModeLayout } from './os/layout.js';
import { perSharedTrace } from './trace/shared.js';
import type { VxtEvent, VxtProcess, VxtTrace } from './trace/types.js';

/**
 * Relocation of a trace into a smaller user space (a 64-bit program's trace on a PAE or 32-bit guest).
 *
 * The unit is a process tree: a fork child starts with a copy of its parent's address space, so a child
 * and its parent must see every address at the same place; one map serves every process of the tree for
 * all of its events, before and after its execs. The map is built from what the tree uses: every range
 * of an mmap, munmap, mprotect and exec mapping (whole, so that each event stays one range), the heap
 * between the lowest and the highest break, and every page an access record touches. Overlapping or
 * touching ranges join into one region; the regions keep their sizes and their order.
 *
 * The goal is that the guest builds the page tables the recorded process had: regions that shared a table
 * at some level share one after relocation, regions that did not do not, and each address keeps its offset
 * in its tables (the same ptes are written at the same indices). A table spans its entries times the span of
 * an entry (SDM Vol. 3A §4.3-4.5): a page table 4 MiB in 32-bit paging (a PDE maps 4 MiB, §4.3) and 2 MiB
 * with 8-byte entries (PAE, 4- and 5-level); a page directory 1 GiB (a PDPTE maps 1 GiB, §4.4, §4.5); a PDPT
 * 512 GiB; a PML4 256 TiB. The top table (the 32-bit PD, the PAE PDPT, the PML4, the PML5) is one per process.
 *
 * The regions are packed by blocks of one size (the group's `align`): the largest power of two, from the
 * span of a page table up, by which the packed regions fit the user space. A run of regions each of which
 * begins in the block where the one before ends keeps its distances; each run moves by a multiple of the
 * block into the block after the one where the run before ends (the one after that when it would touch it:
 * adjacent areas would merge), at its recorded offset in its block. Every table span is a power of two, so
 * every table of at most `align` bytes is kept: the regions in one are in one after relocation, those in
 * different ones are in different ones, and the address bits under `align` are as recorded (the indices
 * in those tables, and the slot of each page in core's TLB, which is indexed by the low bits of the page
 * number). On kbuild that is 1 GiB in pae and legacy32 (in pae the recorded page directories are kept).
 *
 * Above `align` the guest's user space is too small for the recorded layout: runs recorded under different
 * tables larger than `align` (in pae, more runs of 1 GiB than the 3 user page directories) share one, so
 * the guest has fewer such tables than the recording had, and a run can straddle a boundary of one that it
 * did not straddle. When even packing by page tables does not fit, the tree is refused (`too-big`).
 */

/** What relocation needs of a paging mode (its layout, os/layout.ts). */
export type RelocationSpace = Pick<ModeLayout, 'userLimit' | 'top' | 'shift' | 'entries'>;

/**
 * The spans of a mode's tables below the top, ascending: `entries` entries of `2^shift[L]` bytes at each
 * level L < top (4 MiB in 32-bit paging; 2 MiB, 1 GiB, 512 GiB, 256 TiB with 8-byte entries). A bare user
 * limit is taken as that of a mode with 8-byte entries (PAE, 4- or 5-level paging): its tables under the limit.
 */
export function tableSpans(space: RelocationSpace | number): number[] {
  const spans: number[] = [];
  if (typeof space === 'number') {
    for (let s = 2 ** 21; s < space; s *= 512) spans.push(s);
    return spans;
  }
  for (let level = 1; level < space.top; level++) spans.push(space.entries * 2 ** space.shift[level]!);
  return spans;
}

/** One region of a process tree's addresses: `[from, from + length)` replays at `[to, to + length)`. */
export interface RelocationRegion {
  readonly from: number;
  readonly to: number;
  readonly length: number;
}

/** The map of one process tree. */
export interface RelocationGroup {
  /** The pids of the tree, the root first. */
  readonly pids: readonly number[];
  /** Its regions in address order (ascending `from`, and so ascending `to`). */
  readonly regions: readonly RelocationRegion[];
  /** The bytes from the first region's start to the last one's end, after relocation. */
  readonly span: number;
  /** The bytes the regions cover. */
  readonly bytes: number;
  /**
   * The block the regions were packed by (each moves by a multiple of it, a power of two): which regions
   * share a table of this span or a smaller one is as recorded (2 or 4 MiB: page tables; 1 GiB: page
   * directories too). The largest power of two under the user limit when the tree fits as recorded.
   */
  readonly align: number;
}

/** How a trace was relocated for a user space of `userLimit` bytes (in a run's JSON as `relocation`). */
export interface TraceRelocation {
  readonly userLimit: number;
  readonly groups: readonly RelocationGroup[];
}

/** A process tree whose regions do not fit the user space, even packed. */
export interface RelocationMisfit {
  readonly pids: readonly number[];
  /** The bytes the regions cover, and the bytes they need packed (with their gaps and alignment). */
  readonly bytes: number;
  readonly span: number;
  readonly highest: number;
}

/** The plan for a trace in a user space: null when every address already fits; `misfits` when it cannot. */
export type RelocationPlan =
  | { readonly kind: 'fits' }
  | { readonly kind: 'relocated'; readonly relocation: TraceRelocation }
  | { readonly kind: 'too-big'; readonly misfits: readonly RelocationMisfit[] };

/** The process trees of a trace: each root (no parent in the trace) with its descendants, roots in trace order. */
function processTrees(trace: VxtTrace): VxtProcess[][] {
  const byPid = new Map<number, VxtProcess>();
  for (const p of trace.processes) byPid.set(p.pid, p);
  const rootOf = (p: VxtProcess): number => {
    let r = p;
    for (let guard = 0; r.parent !== 0 && byPid.has(r.parent) && guard <= trace.processes.length; guard++) r = byPid.get(r.parent)!;
    return r.pid;
  };
  const trees = new Map<number, VxtProcess[]>();
  for (const p of trace.processes) {
    const root = rootOf(p);
    let t = trees.get(root);
    if (t === undefined) trees.set(root, (t = []));
    t.push(p);
  }
  return [...trees.values()];
}

/** The page ranges `[first, end)` a tree uses, joined where they overlap or touch, in order. */
function usedRanges(trace: VxtTrace, tree: readonly VxtProcess[]): number[] {
  const starts: number[] = [];
  const ends: number[] = [];
  const add = (first: number, end: number): void => {
    if (end <= first) return;
    starts.push(first);
    ends.push(end);
  };
  const P = PAGE_SIZE;
  const page = trace.accesses.page;
  const kind = trace.accesses.kind;
  for (const p of tree) {
    // Access pages, run-length joined first, one run per class (fetch, data: the two streams interleave, and
    // each mostly repeats or steps to a neighbouring page).
    const runLo = [0, 0];
    const runHi = [0, 0];
    for (let i = p.recordStart; i < p.recordEnd; i++) {
      const g = page[i]!;
      const c = kind[i] === 0 ? 0 : 1;
      const lo = runLo[c]!;
      const hi = runHi[c]!;
      if (hi > lo && g >= lo - 1 && g <= hi) {
        if (g < lo) runLo[c] = g;
        else if (g + 1 > hi) runHi[c] = g + 1;
      } else {
        add(lo, hi);
        runLo[c] = g;
        runHi[c] = g + 1;
      }
    }
    add(runLo[0]!, runHi[0]!);
    add(runLo[1]!, runHi[1]!);
    let brkLo = Infinity;
    let brkHi = -Infinity;
    for (const e of p.events) {
      if (e.type === 'mmap' || e.type === 'munmap' || e.type === 'mprotect') add(Math.floor(e.start / P), Math.ceil((e.start + e.length) / P));
      else if (e.type === 'exec') for (const m of e.mappings) add(Math.floor(m.start / P), Math.ceil((m.start + m.length) / P));
      else if (e.type === 'brk') {
        brkLo = Math.min(brkLo, e.result);
        brkHi = Math.max(brkHi, e.result);
      }
    }
    if (brkLo <= brkHi) add(Math.floor(brkLo / P), Math.floor(brkHi / P) + 1);
  }
  // The union of the ranges, joining touching ones: a sweep over the starts and the ends, each sorted on its
  // own (typed-array sorts: a trace has millions of ranges). A start at a coordinate where another range ends
  // comes first, so touching ranges join.
  const S = Float64Array.from(starts).sort();
  const E = Float64Array.from(ends).sort();
  const out: number[] = [];
  let active = 0;
  let regionStart = 0;
  for (let i = 0, j = 0; j < E.length;) {
    if (i < S.length && S[i]! <= E[j]!) {
      if (active++ === 0) regionStart = S[i]!;
      i++;
    } else {
      if (--active === 0) out.push(regionStart, E[j]!);
      j++;
    }
  }
  return out;
}

/**
 * Places the ranges (bytes `[s, e)` pairs) from `first` on (congruent to the first range's start modulo
 * `span`), by blocks of `span` bytes: a range that begins in the block where the one before ends keeps its
 * distance from it; any other goes to the block after the one where the region before ends (the one after
 * that when it would touch the region), at its recorded offset in its block.
 */
function place(ranges: readonly number[], first: number, span: number): RelocationRegion[] {
  const regions: RelocationRegion[] = [];
  let delta = 0;
  let end = 0;
  for (let k = 0; k < ranges.length; k += 2) {
    const from = ranges[k]!;
    const length = ranges[k + 1]! - from;
    let to: number;
    if (k === 0) to = first;
    else if (Math.floor(from / span) === Math.floor((ranges[k - 1]! - 1) / span)) to = from + delta;
    else {
      to = (Math.floor((end - 1) / span) + 1) * span + (from % span);
      if (to === end) to += span;
    }
    delta = to - from;
    regions.push({ from, to, length });
    end = to + length;
  }
  return regions;
}

/**
 * The lowest address congruent to `from` modulo `align` that a region may start at: not page 0, which Linux never
 * maps (the unmapped-area searches start at PAGE_SIZE, mm/mmap.c `vm_unmapped_area`; security/min_addr.c
 * `mmap_min_addr`), so a region at offset 0 of its block goes to the next block.
 */
function lowest(from: number, align: number): number {
  const at = from % align;
  return at < PAGE_SIZE ? at + align : at;
}

/**
 * Plans the relocation of `trace` into the user space of a paging mode: its layout (a bare user limit is
 * taken as that of a mode with 8-byte entries: see `tableSpans`).
 */
export function planRelocation(trace: VxtTrace, space: RelocationSpace | number): RelocationPlan {
  const userLimit = typeof space === 'number' ? space : space.userLimit;
  // The blocks to pack by: powers of two from the span of a page table to the largest under the user limit.
  const smallest = tableSpans(space)[0] ?? PAGE_SIZE;
  let largest = smallest;
  while (largest * 2 < userLimit) largest *= 2;
  // One pass over the pages and events first: a trace that fits as recorded (every 64-bit trace on a 4- or
  // 5-level guest) needs no ranges (collecting them costs seconds on a trace of 33 M records).
  if (traceHighestAddress(trace) <= userLimit) return { kind: 'fits' };
  const groups: RelocationGroup[] = [];
  const misfits: RelocationMisfit[] = [];
  let moved = false;
  for (const tree of processTrees(trace)) {
    const pages = usedRanges(trace, tree);
    const ranges = pages.map((g) => g * PAGE_SIZE);
    const pids = tree.map((p) => p.pid);
    let bytes = 0;
    for (let k = 0; k < ranges.length; k += 2) bytes += ranges[k + 1]! - ranges[k]!;
    if (ranges.length === 0) {
      groups.push({ pids, regions: [], span: 0, bytes: 0, align: largest });
      continue;
    }
    const highest = ranges[ranges.length - 1]!;
    let regions: RelocationRegion[] | null = null;
    let align = largest;
    if (highest <= userLimit) {
      regions = [];
      for (let k = 0; k < ranges.length; k += 2) regions.push({ from: ranges[k]!, to: ranges[k]!, length: ranges[k + 1]! - ranges[k]! });
    } else {
      moved = true;
      // By the largest blocks first; at each size the lowest region stays where it is when the rest then
      // fits, else it moves down to its offset in its block. Refused when even page tables do not fit.
      for (let size = largest; size >= smallest && regions === null; size /= 2) {
        align = size;
        for (const first of [ranges[0]!, lowest(ranges[0]!, align)]) {
          const r = place(ranges, first, align);
          const end = r[r.length - 1]!;
          if (end.to + end.length <= userLimit) {
            regions = r;
            break;
          }
        }
      }
      regions ??= place(ranges, lowest(ranges[0]!, align), align);
    }
    const last = regions[regions.length - 1]!;
    const span = last.to + last.length - regions[0]!.to;
    if (last.to + last.length > userLimit) misfits.push({ pids, bytes, span, highest });
    groups.push({ pids, regions, span, bytes, align });
  }
  if (misfits.length > 0) return { kind: 'too-big', misfits };
  return moved ? { kind: 'relocated', relocation: { userLimit, groups } } : { kind: 'fits' };
}

/** Maps addresses of one group: the region holding the page of `address`, by binary search. */
class AddressMap {
  private readonly from: Float64Array;
  private readonly end: Float64Array;
  private readonly delta: Float64Array;
  constructor(regions: readonly RelocationRegion[]) {
    this.from = Float64Array.from(regions, (r) => r.from);
    this.end = Float64Array.from(regions, (r) => r.from + r.length);
    this.delta = Float64Array.from(regions, (r) => r.to - r.from);
  }
  /** The relocated `address` (an address outside every region is a bug of the plan: it throws). */
  map(address: number): number {
    const at = address - (((address % PAGE_SIZE) + PAGE_SIZE) % PAGE_SIZE);
    let lo = 0;
    let hi = this.from.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (at < this.from[mid]!) hi = mid - 1;
      else if (at >= this.end[mid]!) lo = mid + 1;
      else return address + this.delta[mid]!;
    }
    throw new RangeError(`relocation: address ${hex(address)} is in no region of its process tree`);
  }
}

/** The trace with every address of every process mapped by its tree's regions (a new trace; `trace` is not changed). */
export function relocateTrace(trace: VxtTrace, relocation: TraceRelocation): VxtTrace {
  const mapOf = new Map<number, AddressMap>();
  for (const g of relocation.groups) {
    const m = new AddressMap(g.regions);
    for (const pid of g.pids) mapOf.set(pid, m);
  }
  const page = Float64Array.from(trace.accesses.page);
  const processes = trace.processes.map((p): VxtProcess => {
    const m = mapOf.get(p.pid)!;
    for (let i = p.recordStart; i < p.recordEnd; i++) page[i] = m.map(page[i]! * PAGE_SIZE) / PAGE_SIZE;
    const events = p.events.map((e): VxtEvent => {
      switch (e.type) {
        case 'mmap':
        case 'munmap':
        case 'mprotect':
          return { ...e, start: m.map(e.start) };
        case 'brk':
          // The request is only the program's argument (0 to query); the result is the break the replay uses.
          return { ...e, request: e.request === 0 ? 0 : e.request - e.result + m.map(e.result), result: m.map(e.result) };
        case 'exec':
          return { ...e, mappings: e.mappings.map((x) => ({ ...x, start: m.map(x.start) })) };
        default:
          return e;
      }
    });
    return { ...p, events };
  });
  return { ...trace, accesses: { ...trace.accesses, page }, processes };
}

/** How a trace replays in one paging mode (for `vmexit trace info`). */
export interface TraceFit {
  readonly mode: PagingModeName;
  /** The mode's user space, `[0, userLimit)`. */
  readonly userLimit: number;
  /** `as-recorded`: every address fits; `relocated`: each process tree's regions move down; `too-big`: refused. */
  readonly replay: 'as-recorded' | 'relocated' | 'too-big';
  /** When relocated: each tree's regions; when too big: the trees that do not fit. */
  readonly groups?: readonly RelocationGroup[];
  readonly misfits?: readonly RelocationMisfit[];
}

/** How `trace` replays in each paging mode. */
export function traceFit(trace: VxtTrace): TraceFit[] {
  return PAGING_MODE_NAMES.map((mode): TraceFit => {
    const userLimit = modeLayout(pagingModeId(mode)).userLimit;
    const plan = planRelocation(trace, modeLayout(pagingModeId(mode)));
    if (plan.kind === 'fits') return { mode, userLimit, replay: 'as-recorded' };
    if (plan.kind === 'relocated') return { mode, userLimit, replay: 'relocated', groups: plan.relocation.groups };
    return { mode, userLimit, replay: 'too-big', misfits: plan.misfits };
  });
}

const mib = (n: number): string => `${(n / 2 ** 20).toFixed(1)} MiB`;

/**
 * The message that refuses a trace in `mode`: the sizes of each process tree that does not fit, and the
 * paging modes that can replay it (or that none can).
 */
export function relocationRefusal(trace: VxtTrace, mode: PagingModeName, misfits: readonly RelocationMisfit[]): string {
  const userLimit = modeLayout(pagingModeId(mode)).userLimit;
  const trees = misfits
    .map(
      (m) =>
        `the process tree of pid ${m.pids[0]} (${m.pids.length} process${m.pids.length === 1 ? '' : 'es'}) uses addresses up to ${hex(m.highest)}; its ` +
        `mappings cover ${m.bytes} bytes (${mib(m.bytes)}) and need ${m.span} bytes (${mib(m.span)}) relocated with their gaps`,
    )
    .join('; ');
  const can = traceFit(trace)
    .filter((f) => f.replay !== 'too-big')
    .map((f) => f.mode);
  const advice =
    can.length > 0
      ? `replay it with --mode ${can.join(' or --mode ')}`
      : 'no paging mode can replay it: the largest user space of the guest kernel is that of 4- and 5-level paging';
  return `the trace does not fit the ${userLimit} bytes (${hex(userLimit)}, ${mib(userLimit)}) of user space of ${mode} paging, even relocated: ${trees}; ${advice}`;
}

/** `traceHighestAddress` of each shared trace (trace/shared.ts). */
const highestOf = new WeakMap<VxtTrace, number>();

/** The largest linear address the trace touches or maps (for the paging mode's user-space check). */
export function traceHighestAddress(trace: VxtTrace): number {
  return perSharedTrace(highestOf, trace, highestAddress);
}

function highestAddress(trace: VxtTrace): number {
  let max = 0;
  const pages = trace.accesses.page;
  for (let i = 0; i < pages.length; i++) if (pages[i]! > max) max = pages[i]!;
  max = (max + 1) * PAGE_SIZE;
  for (const p of trace.processes) {
    for (const e of p.events) {
      if (e.type === 'mmap' || e.type === 'munmap' || e.type === 'mprotect') max = Math.max(max, e.start + e.length);
      else if (e.type === 'exec') for (const m of e.mappings) max = Math.max(max, m.start + m.length);
      else if (e.type === 'brk') max = Math.max(max, e.result);
    }
  }
  return max;
}
