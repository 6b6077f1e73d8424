/**
 * Virtual memory areas (Linux `struct vm_area_struct`), the kernel's own bookkeeping in plain TypeScript:
 * non-overlapping [start, end) ranges with their rights and backing, in address order.
 */

import { PROT_EXEC, PROT_READ, PROT_WRITE } from '../trace/types.js';
import { VmaNode, VmaTree } from './vmatree.js';

/** `PROT_*` bits, as mmap/mprotect take them (PROT_READ/WRITE/EXEC are the trace format's, the same Linux values). */
export const PROT_NONE = 0;
export { PROT_EXEC, PROT_READ, PROT_WRITE };

/** What backs an area. */
export const VMA_ANON = 0; // anonymous private memory (demand-zero, COW after fork)
/** A private file mapping (page cache read-only, COW on write) */
export const VMA_FILE_PRIVATE = 1;
/** A shared file mapping (the page cache pages themselves) */
export const VMA_FILE_SHARED = 2;
/** Aliased-pdes: the read-only view of an arena area (see Kernel) */
export const VMA_ALIAS = 3;

/**
 * The read-ahead side of a file: its size, its pages marked PG_readahead (mm/readahead.c
 * `page_cache_ra_unbounded`: `folio_set_readahead`), and `struct file_ra_state` (include/linux/fs.h: the window
 * [start, start + size), its async tail, mmap_miss), which Linux keeps in the open file (`file->f_ra`) and this
 * model in its file object (the model has no open files apart from its files).
 */
export interface FileReadahead {
  /**
   * The file's size in pages (i_size): the model's files have no length of their own, so a file is as long as
   * the furthest page an area mapped of it (an access past EOF would be SIGBUS, which the model never has).
   */
  filePages: number;
  readonly marked: Set<number>;
  start: number;
  size: number;
  asyncSize: number;
  mmapMiss: number;
}

/** A file of the guest OS model: its id, its path, its page cache and its read-ahead state. */
export interface FileObject {
  readonly id: number;
  readonly path: string;
  /** The page cache: file page index -> frame. */
  readonly pages: Map<number, number>;
  /** Read-ahead (Linux `file->f_ra` and the page cache's PG_readahead marks). */
  readonly ra: FileReadahead;
}

/** A virtual memory area (Linux `vm_area_struct`): `[start, end)`, its PROT_* rights, its backing (VMA_*), and its file and offset. */
export class Vma {
  /** The list the area was inserted into: a change of a field that `mergeAdjacent` compares is reported to it. */
  owner: VmaList | null = null;
  /** Reported to `owner` since its last `mergeAdjacent`. */
  dirty = false;
  /** The area's node in its list's tree (null when the area is in none). */
  node: VmaNode<Vma> | null = null;
  private s: number;
  private e: number;
  private p: number;
  private o: number;
  private a = false;
  private g = false;

  constructor(
    start: number,
    end: number,
    prot: number,
    public readonly backing: number,
    public readonly file: FileObject | null,
    /** File offset of `start` in bytes. */
    offset: number,
  ) {
    this.s = start;
    this.e = end;
    this.p = prot;
    this.o = offset;
  }

  get start(): number {
    return this.s;
  }
  set start(x: number) {
    this.s = x;
    this.owner?.touch(this);
  }
  get end(): number {
    return this.e;
  }
  set end(x: number) {
    this.e = x;
    this.owner?.touch(this);
  }
  get prot(): number {
    return this.p;
  }
  set prot(x: number) {
    this.p = x;
    this.owner?.touch(this);
  }
  /** File offset of `start` in bytes. */
  get offset(): number {
    return this.o;
  }
  set offset(x: number) {
    this.o = x;
    this.owner?.touch(this);
  }
  /**
   * Linux's `anon_vma` (mm/rmap.c): set once an anonymous page was installed in this area. fork copies the
   * ptes only of areas that have one (mm/memory.c `vma_needs_copy`); the others refault from their backing.
   */
  get anon(): boolean {
    return this.a;
  }
  set anon(x: boolean) {
    // Set on every anonymous fault, but a change only at the first (`anon_vma_prepare`): the others cost nothing.
    if (this.a === x) return;
    this.a = x;
    this.owner?.touch(this);
  }
  /** The stack grows down into the gap below it. */
  get growsDown(): boolean {
    return this.g;
  }
  set growsDown(x: boolean) {
    this.g = x;
    this.owner?.touch(this);
  }

  /** The file page index of linear address `va`. */
  filePage(va: number): number {
    return Math.floor((va - this.s + this.o) / 4096);
  }

  /** A copy of the area for a forked child (Linux `vm_area_dup`). */
  clone(): Vma {
    const v = new Vma(this.s, this.e, this.p, this.backing, this.file, this.o);
    v.a = this.a;
    v.g = this.g;
    return v;
  }
}

/**
 * Whether `v` continues `p` with the same rights and backing, so that `mergeAdjacent` makes them one area
 * (Linux `vma_merge`). For a chain p, v, w this holds of (p, v) and then of (p + v, w) exactly when it holds
 * of (p, v) and of (v, w): so the areas that merge are those of the adjacent pairs that can, each on its own.
 */
function canMerge(p: Vma, v: Vma): boolean {
  return (
    p.end === v.start &&
    p.prot === v.prot &&
    p.backing === v.backing &&
    p.file === v.file &&
    p.anon === v.anon &&
    p.growsDown === v.growsDown &&
    (p.file === null || p.offset + (p.end - p.start) === v.offset)
  );
}

/**
 * A process's areas in address order, with the last one found cached (Linux's `mm->mmap` and `vmacache`). The
 * areas are a balanced tree that tracks the gaps between them (vmatree.ts; Linux keeps them in a maple tree,
 * lib/maple_tree.c, for the same reason): a trace's exec may list 100,000 areas, and its mmap, munmap and
 * mprotect events each touch a few of them; insert, remove, find and the gap search are O(log n). No area is
 * empty (Linux has none: mm/mmap.c `do_mmap` refuses a length of 0 with EINVAL, and so does the kernel's mmap):
 * inserting one, or making one empty, is an error.
 */
export class VmaList {
  private readonly tree = new VmaTree<Vma>();
  private last: Vma | null = null;
  /**
   * The areas inserted or changed since the last `mergeAdjacent`: after it no two adjacent areas can merge,
   * so until then only a pair next to one of these can.
   */
  private readonly changed: Vma[] = [];
  /** Areas looked at by the searches, a cost counter (tests): O(log n) an operation, plus the areas it returns or changes. */
  private ownSteps = 0;

  get steps(): number {
    return this.ownSteps + this.tree.steps;
  }
  set steps(n: number) {
    this.ownSteps = n;
    this.tree.steps = 0;
  }

  /** The areas in address order (a copy). */
  get list(): readonly Vma[] {
    return this.tree.toArray();
  }

  /** The number of areas. */
  get size(): number {
    return this.tree.size;
  }

  /** Removes every area (exec, exit). */
  clear(): void {
    for (const v of this.tree.toArray()) v.node = null;
    this.tree.root = null;
    this.tree.size = 0;
    this.last = null;
    for (const v of this.changed) v.dirty = false;
    this.changed.length = 0;
  }

  /** Takes every area of `from`, which is left empty (exec: the old address space is torn down apart). */
  adopt(from: VmaList): void {
    this.clear();
    const areas = from.list;
    from.clear();
    for (const v of areas) {
      v.owner = this;
      this.tree.insert((v.node = new VmaNode(v)));
    }
  }

  /** Notes that `vma`, an area of this list, was inserted or changed (its setters call this). */
  touch(vma: Vma): void {
    if (vma.end <= vma.start) throw new Error(`vma [${vma.start.toString(16)}, ${vma.end.toString(16)}) is empty`);
    const n = vma.node;
    if (n !== null) {
      // its gap, and the gap of the area after it
      this.tree.updateGap(n);
      const after = this.tree.next(n);
      if (after !== null) this.tree.updateGap(after);
    }
    this.track(vma);
  }

  /** Notes `vma` in `changed` (once). */
  private track(vma: Vma): void {
    if (vma.dirty) return;
    vma.dirty = true;
    this.changed.push(vma);
  }

  /** The area that contains `va`, or null. */
  find(va: number): Vma | null {
    const l = this.last;
    if (l !== null && va >= l.start && va < l.end) return l;
    const n = this.tree.lastStartBelow(va, true);
    if (n === null || va >= n.vma.end) return null;
    this.last = n.vma;
    return n.vma;
  }

  /** The first area that starts at or above `va` (in address order), or null. */
  firstFrom(va: number): Vma | null {
    const t = this.tree;
    const p = t.lastStartBelow(va);
    const n = p === null ? t.first() : t.next(p);
    return n === null ? null : n.vma;
  }

  /**
   * Whether any area intersects [start, end) (starts below `end` and ends above `start`): of the areas that
   * start below `end`, the last ends the highest.
   */
  intersects(start: number, end: number): boolean {
    const n = this.tree.lastStartBelow(end);
    return n !== null && n.vma.end > start;
  }

  /** Inserts `vma`, which must not be empty nor overlap an existing area. */
  insert(vma: Vma): void {
    if (vma.end <= vma.start) throw new Error(`vma [${vma.start.toString(16)}, ${vma.end.toString(16)}) is empty`);
    if (this.intersects(vma.start, vma.end)) throw new Error(`vma [${vma.start.toString(16)}, ${vma.end.toString(16)}) overlaps an existing one`);
    this.tree.insert((vma.node = new VmaNode(vma))); // its gap and the next area's too
    vma.owner = this;
    this.track(vma);
  }

  /**
   * Splits areas so that `start` and `end` are area boundaries, then returns the areas inside [start, end)
   * (Linux `split_vma`). The parts keep their rights and backing; file offsets follow.
   */
  carve(start: number, end: number): Vma[] {
    this.last = null;
    const out: Vma[] = [];
    for (let n = this.tree.firstEndingAbove(start); n !== null; n = this.tree.next(n)) {
      this.ownSteps++;
      const v = n.vma;
      if (v.start >= end) break; // and so do all the areas after it
      if (v.start < start) {
        this.split(v, start);
        continue; // the right part is visited next
      }
      if (v.end > end) this.split(v, end);
      out.push(v);
    }
    return out;
  }

  /** Splits `v` at `at`, inside it: the area keeps [start, at), a copy [at, end) follows it. */
  private split(v: Vma, at: number): void {
    const right = v.clone();
    right.offset = v.offset + (at - v.start);
    right.start = at;
    v.end = at;
    this.tree.insert((right.node = new VmaNode(right)));
    right.owner = this;
    this.track(right);
  }

  /** Removes the given areas; the areas around each become neighbours (changed, for `mergeAdjacent`). */
  remove(areas: readonly Vma[]): void {
    this.last = null;
    for (const v of areas) {
      const n = v.node;
      if (n === null || v.owner !== this) continue;
      const before = this.tree.prev(n);
      const after = this.tree.next(n);
      this.tree.remove(n);
      v.node = null;
      v.owner = null;
      if (before !== null) this.touch(before.vma);
      if (after !== null) this.touch(after.vma);
    }
  }

  /**
   * Merges neighbours that continue each other with the same rights and backing (Linux `vma_merge`). Only
   * the pairs next to an area changed since the last merge can merge (see `changed`).
   */
  mergeAdjacent(): void {
    this.last = null;
    const c = this.changed;
    // the left node of each pair next to a changed area that can merge, each once
    const t = this.tree;
    const lefts = new Set<VmaNode<Vma>>();
    for (const v of c) {
      const n = v.node;
      if (n === null || v.owner !== this) continue;
      const before = t.prev(n);
      const after = t.next(n);
      this.ownSteps += 2;
      if (before !== null && canMerge(before.vma, v)) lefts.add(before);
      if (after !== null && canMerge(v, after.vma)) lefts.add(n);
    }
    // each run of mergeable pairs becomes its first area (a pair whose left area is the right one of another
    // pair belongs to that pair's run): the runs first, then the merges
    const runs: VmaNode<Vma>[][] = [];
    for (const l of lefts) {
      const before = t.prev(l);
      if (before !== null && lefts.has(before)) continue;
      const run = [l];
      let n = l;
      do {
        n = t.next(n)!;
        run.push(n);
      } while (lefts.has(n));
      runs.push(run);
    }
    for (const run of runs) {
      run[0]!.vma.end = run[run.length - 1]!.vma.end;
      for (let i = 1; i < run.length; i++) {
        const n = run[i]!;
        t.remove(n);
        n.vma.node = null;
        n.vma.owner = null;
      }
    }
    for (const v of c) v.dirty = false;
    c.length = 0;
  }

  /**
   * The highest free range of `length` bytes in [low, high): its start, -1 if none. The range is the top of the
   * highest gap that has room (mm/mmap.c `unmapped_area_topdown`, align_mask 0): the gap above the last area
   * that starts below `high`, if it ends at or below `high - length`, else the last gap at or before that area
   * large enough, else the one below the first area.
   */
  findGapTopDown(low: number, length: number, high: number): number {
    const top = high - length;
    if (top < low) return -1;
    const t = this.tree;
    const p = t.lastStartBelow(high);
    if (p === null || p.vma.end <= top) return top;
    const n = t.lastGapAtOrBefore(p, length);
    const at = (n ?? t.first()!).vma.start - length;
    return at >= low ? at : -1;
  }

  /** The lowest free gap of `length` bytes at or above `from`, below `limit`; -1 if none (the bottom-up search, mm/mmap.c `unmapped_area`). */
  findGap(from: number, length: number, limit: number): number {
    let at = from;
    const t = this.tree;
    const n = t.firstEndingAbove(from);
    // areas from `n` on, each up against the one before it closer than `length`, push `at` to the last one's end
    if (n !== null && n.vma.start < from + length) {
      const g = t.firstGapAfter(n, length);
      at = g === null ? t.last()!.vma.end : t.prev(g)!.vma.end;
    }
    return at + length <= limit ? at : -1;
  }
}
