/**
 * Virtual memory areas (Linux `struct vm_area_struct`), the kernel's own bookkeeping in plain TypeScript:
 * a sorted array of non-overlapping [start, end) ranges with their rights and backing.
 */

import { PROT_EXEC, PROT_READ, PROT_WRITE } from '../trace/types.js';

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

/** A file of the guest OS model: its id, its path, and its page cache. */
export interface FileObject {
  readonly id: number;
  readonly path: string;
  /** The page cache: file page index -> frame. */
  readonly pages: Map<number, number>;
}

/** A virtual memory area (Linux `vm_area_struct`): `[start, end)`, its PROT_* rights, its backing (VMA_*), and its file and offset. */
export class Vma {
  /** The list the area was inserted into: a change of a field that `mergeAdjacent` compares is reported to it. */
  owner: VmaList | null = null;
  /** Reported to `owner` since its last `mergeAdjacent`. */
  dirty = false;
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
 * A process's areas, sorted by address, with the last one found cached (Linux's `mm->mmap` and `vmacache`).
 * Searches are binary (Linux keeps the areas in a maple tree, lib/maple_tree.c, for the same reason): a
 * trace's exec may list 100,000 areas, and its mmap, munmap and mprotect events each touch a few of them.
 */
export class VmaList {
  readonly list: Vma[] = [];
  private last: Vma | null = null;
  /**
   * The areas inserted or changed since the last `mergeAdjacent`: after it no two adjacent areas can merge,
   * so until then only a pair next to one of these can. `mergeAll`: a change not tracked area by area.
   */
  private readonly changed: Vma[] = [];
  private mergeAll = false;
  /**
   * Set once an empty area was inserted (an mmap of length 0 through the kernel's API; Linux refuses it with
   * EINVAL, mm/mmap.c `do_mmap`, and so does the trace reader). Splits can then leave the list out of order by
   * start, so until `clear` every operation scans the whole list, as it always did.
   */
  private linear = false;
  /** Areas looked at by the searches, a cost counter (tests): O(log n) an operation, plus the areas it returns or changes. */
  steps = 0;

  /** Removes every area (exec, exit). */
  clear(): void {
    this.list.length = 0;
    this.last = null;
    for (const v of this.changed) v.dirty = false;
    this.changed.length = 0;
    this.mergeAll = false;
    this.linear = false;
  }

  /** Notes that `vma`, an area of this list, was inserted or changed (its setters call this). */
  touch(vma: Vma): void {
    if (vma.end <= vma.start) this.linear = true;
    if (vma.dirty) return;
    vma.dirty = true;
    this.changed.push(vma);
  }

  /** The index of the first area that starts at or above `va` (the areas are sorted by start). */
  private lowerStart(va: number): number {
    const a = this.list;
    let lo = 0;
    let hi = a.length;
    while (lo < hi) {
      this.steps++;
      const mid = (lo + hi) >> 1;
      if (a[mid]!.start < va) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * The index from which a scan of the areas that end above `va` may start: every area before it ends at or
   * below `va`. The areas below `va` do not overlap, so only the last non-empty one can reach past it.
   */
  private firstEndingAbove(va: number): number {
    const a = this.list;
    const j = this.lowerStart(va);
    let k = j - 1;
    while (k >= 0 && a[k]!.end === a[k]!.start) k--;
    return k >= 0 && a[k]!.end > va ? k : j;
  }

  /** The index of `vma` in the list, or -1. */
  private indexOf(vma: Vma): number {
    const a = this.list;
    for (let i = this.lowerStart(vma.start); i < a.length && a[i]!.start === vma.start; i++) if (a[i] === vma) return i;
    return -1;
  }

  /** The area that contains `va`, or null. */
  find(va: number): Vma | null {
    const l = this.last;
    if (l !== null && va >= l.start && va < l.end) return l;
    const a = this.list;
    let lo = 0;
    let hi = a.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const v = a[mid]!;
      if (va < v.start) hi = mid - 1;
      else if (va >= v.end) lo = mid + 1;
      else {
        this.last = v;
        return v;
      }
    }
    return null;
  }

  /**
   * Whether any area intersects [start, end) (starts below `end` and ends above `start`). Of the areas that
   * start below `end`, the last non-empty one ends the highest; empty ones after it are looked at on the way.
   */
  intersects(start: number, end: number): boolean {
    const a = this.list;
    if (this.linear) {
      this.steps += a.length;
      for (const v of a) if (v.start < end && v.end > start) return true;
      return false;
    }
    for (let i = this.lowerStart(end) - 1; i >= 0; i--) {
      this.steps++;
      const v = a[i]!;
      if (v.end > start) return true;
      if (v.end > v.start) return false;
    }
    return false;
  }

  /** Inserts `vma`, which must not overlap an existing area, after the areas that start below it. */
  insert(vma: Vma): void {
    if (this.intersects(vma.start, vma.end)) throw new Error(`vma [${vma.start.toString(16)}, ${vma.end.toString(16)}) overlaps an existing one`);
    if (vma.end <= vma.start) this.linear = true;
    let i = 0;
    if (this.linear) while (i < this.list.length && this.list[i]!.start < vma.start) i++;
    else i = this.lowerStart(vma.start);
    this.list.splice(i, 0, vma);
    vma.owner = this;
    this.touch(vma);
  }

  /**
   * Splits areas so that `start` and `end` are area boundaries, then returns the areas inside [start, end)
   * (Linux `split_vma`). The parts keep their rights and backing; file offsets follow.
   */
  carve(start: number, end: number): Vma[] {
    this.last = null;
    const out: Vma[] = [];
    for (let i = this.linear ? 0 : this.firstEndingAbove(start); i < this.list.length; i++) {
      this.steps++;
      const v = this.list[i]!;
      if (v.end <= start) continue;
      if (v.start >= end) {
        if (this.linear) continue;
        break; // and so do all the areas after it
      }
      if (v.start < start) {
        this.split(i, start);
        continue; // the right part is visited next
      }
      if (v.end > end) this.split(i, end);
      out.push(v);
    }
    return out;
  }

  /** Splits the area at index `i` at `at`: the area keeps [start, at), a copy [at, end) follows it. */
  private split(i: number, at: number): void {
    const v = this.list[i]!;
    const right = v.clone();
    right.offset = v.offset + (at - v.start);
    right.start = at;
    v.end = at;
    this.list.splice(i + 1, 0, right);
    right.owner = this;
    this.touch(right);
  }

  /** Removes the given areas. */
  remove(areas: readonly Vma[]): void {
    this.last = null;
    if (areas.length === 0) return;
    const a = this.list;
    // carve returns adjacent areas in order: one splice; the areas around the gap are new neighbours.
    const i = this.linear ? -1 : this.indexOf(areas[0]!);
    let run = i >= 0 && i + areas.length <= a.length;
    for (let k = 1; run && k < areas.length; k++) run = a[i + k] === areas[k];
    if (run) {
      a.splice(i, areas.length);
      if (i > 0) this.touch(a[i - 1]!);
      if (i < a.length) this.touch(a[i]!);
    } else {
      const gone = new Set(areas);
      let j = 0;
      for (let n = 0; n < a.length; n++) if (!gone.has(a[n]!)) a[j++] = a[n]!;
      a.length = j;
      this.mergeAll = true;
    }
    for (const v of areas) v.owner = null;
  }

  /**
   * Merges neighbours that continue each other with the same rights and backing (Linux `vma_merge`). Only
   * the pairs next to an area changed since the last merge can merge (see `changed`); when many changed,
   * one pass over the list.
   */
  mergeAdjacent(): void {
    this.last = null;
    const a = this.list;
    const c = this.changed;
    if (this.mergeAll || this.linear || c.length * 8 > a.length) {
      this.steps += a.length;
      let j = 0;
      for (let i = 0; i < a.length; i++) {
        const v = a[i]!;
        const p = j > 0 ? a[j - 1]! : null;
        if (p !== null && canMerge(p, v)) {
          p.end = v.end;
          v.owner = null;
          continue;
        }
        a[j++] = v;
      }
      a.length = j;
    } else {
      // the left index of each pair next to a changed area, then those that can merge
      const lefts: number[] = [];
      for (const v of c) {
        const i = this.indexOf(v);
        if (i < 0) continue;
        if (i > 0) lefts.push(i - 1);
        if (i + 1 < a.length) lefts.push(i);
      }
      lefts.sort((x, y) => x - y);
      const m: number[] = [];
      for (let k = 0; k < lefts.length; k++) {
        const l = lefts[k]!;
        if ((k === 0 || l !== lefts[k - 1]) && canMerge(a[l]!, a[l + 1]!)) m.push(l);
      }
      // each run of mergeable pairs l, l + 1, ... becomes its first area; from the right, so indices hold
      for (let r = m.length - 1; r >= 0;) {
        let l = r;
        while (l > 0 && m[l - 1] === m[l]! - 1) l--;
        const first = m[l]!;
        const n = m[r]! - first + 1;
        a[first]!.end = a[first + n]!.end;
        for (const v of a.splice(first + 1, n)) v.owner = null;
        r = l - 1;
      }
    }
    for (const v of c) v.dirty = false;
    c.length = 0;
    this.mergeAll = false;
  }

  /** The lowest free gap of `length` bytes at or above `from`, below `limit`; -1 if none. */
  findGap(from: number, length: number, limit: number): number {
    const a = this.list;
    let at = from;
    for (let i = this.linear ? 0 : this.firstEndingAbove(from); i < a.length; i++) {
      this.steps++;
      const v = a[i]!;
      if (v.end <= at) continue;
      if (v.start >= at + length) break;
      at = v.end;
    }
    return at + length <= limit ? at : -1;
  }
}
