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
  constructor(
    public start: number,
    public end: number,
    public prot: number,
    public readonly backing: number,
    public readonly file: FileObject | null,
    /** File offset of `start` in bytes. */
    public offset: number,
  ) {}
  /**
   * Linux's `anon_vma` (mm/rmap.c): set once an anonymous page was installed in this area. fork copies the
   * ptes only of areas that have one (mm/memory.c `vma_needs_copy`); the others refault from their backing.
   */
  anon = false;
  /** The stack grows down into the gap below it. */
  growsDown = false;

  /** The file page index of linear address `va`. */
  filePage(va: number): number {
    return Math.floor((va - this.start + this.offset) / 4096);
  }

  /** A copy of the area for a forked child (Linux `vm_area_dup`). */
  clone(): Vma {
    const v = new Vma(this.start, this.end, this.prot, this.backing, this.file, this.offset);
    v.anon = this.anon;
    v.growsDown = this.growsDown;
    return v;
  }
}

/** A process's areas, sorted by address, with the last one found cached (Linux's `mm->mmap` and `vmacache`). */
export class VmaList {
  readonly list: Vma[] = [];
  private last: Vma | null = null;

  /** Removes every area (exec, exit). */
  clear(): void {
    this.list.length = 0;
    this.last = null;
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

  /** Whether any area intersects [start, end). */
  intersects(start: number, end: number): boolean {
    for (const v of this.list) if (v.start < end && v.end > start) return true;
    return false;
  }

  /** Inserts `vma`, which must not overlap an existing area. */
  insert(vma: Vma): void {
    if (this.intersects(vma.start, vma.end)) throw new Error(`vma [${vma.start.toString(16)}, ${vma.end.toString(16)}) overlaps an existing one`);
    let i = 0;
    while (i < this.list.length && this.list[i]!.start < vma.start) i++;
    this.list.splice(i, 0, vma);
  }

  /**
   * Splits areas so that `start` and `end` are area boundaries, then returns the areas inside [start, end)
   * (Linux `split_vma`). The parts keep their rights and backing; file offsets follow.
   */
  carve(start: number, end: number): Vma[] {
    this.last = null;
    const out: Vma[] = [];
    for (let i = 0; i < this.list.length; i++) {
      const v = this.list[i]!;
      if (v.end <= start || v.start >= end) continue;
      if (v.start < start) {
        const right = v.clone();
        right.offset = v.offset + (start - v.start);
        right.start = start;
        v.end = start;
        this.list.splice(i + 1, 0, right);
        continue; // the right part is visited next
      }
      if (v.end > end) {
        const right = v.clone();
        right.offset = v.offset + (end - v.start);
        right.start = end;
        v.end = end;
        this.list.splice(i + 1, 0, right);
      }
      out.push(v);
    }
    return out;
  }

  /** Removes the given areas. */
  remove(areas: readonly Vma[]): void {
    this.last = null;
    const gone = new Set(areas);
    let j = 0;
    for (let i = 0; i < this.list.length; i++) if (!gone.has(this.list[i]!)) this.list[j++] = this.list[i]!;
    this.list.length = j;
  }

  /** Merges neighbours that continue each other with the same rights and backing (Linux `vma_merge`). */
  mergeAdjacent(): void {
    this.last = null;
    const a = this.list;
    let j = 0;
    for (let i = 0; i < a.length; i++) {
      const v = a[i]!;
      const p = j > 0 ? a[j - 1]! : null;
      if (
        p !== null &&
        p.end === v.start &&
        p.prot === v.prot &&
        p.backing === v.backing &&
        p.file === v.file &&
        p.anon === v.anon &&
        p.growsDown === v.growsDown &&
        (p.file === null || p.offset + (p.end - p.start) === v.offset)
      ) {
        p.end = v.end;
        continue;
      }
      a[j++] = v;
    }
    a.length = j;
  }

  /** The lowest free gap of `length` bytes at or above `from`, below `limit`; -1 if none. */
  findGap(from: number, length: number, limit: number): number {
    let at = from;
    for (const v of this.list) {
      if (v.end <= at) continue;
      if (v.start >= at + length) break;
      at = v.end;
    }
    return at + length <= limit ? at : -1;
  }
}
