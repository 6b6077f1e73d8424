/**
 * The guest kernel's physical page allocator: plain bookkeeping (the kernel's `struct page` array and
 * free lists), not guest memory. Freed frames go on top of a LIFO stack and are handed out again first,
 * as Linux's per-CPU page lists hand out cache-hot pages (mm/page_alloc.c, `free_unref_page` /
 * `rmqueue_pcplist`): a page-table page freed by exit or munmap soon comes back, often as a data page.
 */

/** What a frame is used for (the kernel's own record; `lastUse` keeps the previous use of a free frame). */
export const FRAME_FREE = 0;
export const FRAME_KERNEL = 1; // boot page tables, the zero page
export const FRAME_ANON = 2; // an anonymous (or COW-copied) data page
export const FRAME_CACHE = 3; // a page-cache page of a file
/** A page-table page of level L is FRAME_TABLE + L (L = 1..5). */
export const FRAME_TABLE = 8;

/** The kernel could not allocate a frame: guest RAM is exhausted. */
export class OutOfMemoryError extends Error {
  constructor(readonly totalFrames: number) {
    super(`the guest ran out of memory (all ${totalFrames} frames of RAM are in use)`);
    this.name = 'OutOfMemoryError';
  }
}

/** log2 of the frames one chunk of the per-frame records covers (4096 frames: 16 MiB of guest RAM). */
const CHUNK_SHIFT = 12;
const CHUNK_MASK = (1 << CHUNK_SHIFT) - 1;

/** Per-frame records in chunks made when a frame of the chunk is first handed out (a frame never used: all 0). */
class FrameRecords {
  refcount: (Int32Array | undefined)[] = [];
  use: (Uint8Array | undefined)[] = [];
  lastUse: (Uint8Array | undefined)[] = [];
  exclusive: (Uint8Array | undefined)[] = [];

  chunk(frame: number): number {
    const c = frame >>> CHUNK_SHIFT;
    if (this.refcount[c] === undefined) {
      this.refcount[c] = new Int32Array(CHUNK_MASK + 1);
      this.use[c] = new Uint8Array(CHUNK_MASK + 1);
      this.lastUse[c] = new Uint8Array(CHUNK_MASK + 1);
      this.exclusive[c] = new Uint8Array(CHUNK_MASK + 1);
    }
    return c;
  }
}

/**
 * The allocator's free frames: the frames freed and not yet reused, on a LIFO stack, over the frames never
 * handed out, from `fresh` up in ascending order (the same order as one stack filled with every free frame,
 * lowest on top, without a record per frame of RAM: its memory follows the frames in use, not the RAM size).
 * Frames in `holes` (guest-physical ranges with no RAM: the MMIO hole) are never handed out.
 */
export class FrameAllocator {
  readonly totalFrames: number;
  private readonly rec = new FrameRecords();
  private stack: Int32Array = new Int32Array(64);
  private top = 0;
  /** The lowest frame never handed out. */
  private fresh: number;
  /** Free frames never handed out, at `fresh` and above. */
  private freshLeft: number;
  /** Ranges [start, end) of frames that are not RAM, ascending. */
  private readonly holes: readonly (readonly [number, number])[];
  /** Allocations of a data page whose frame was last a page-table page of level L (indexed by L). */
  readonly tableReusedAsData = new Float64Array(6);
  allocations = 0;
  frees = 0;

  /**
   * Frames [firstFree, totalFrames) start free, less those in `holes`; the lowest is handed out first. Frames
   * below firstFree are the kernel's (FRAME_KERNEL).
   */
  constructor(totalFrames: number, firstFree: number, holes: readonly (readonly [number, number])[] = []) {
    this.totalFrames = totalFrames;
    this.holes = holes;
    this.fresh = firstFree;
    let inHoles = 0;
    for (const [a, b] of holes) inHoles += Math.max(0, Math.min(b, totalFrames) - Math.max(a, firstFree));
    this.freshLeft = totalFrames - firstFree - inHoles;
    this.skipHoles();
    for (let f = 0; f < firstFree; f++) {
      const c = this.rec.chunk(f);
      this.rec.use[c]![f & CHUNK_MASK] = FRAME_KERNEL;
    }
  }

  get freeCount(): number {
    return this.top + this.freshLeft;
  }

  /** Current use of `frame` (FRAME_*). */
  useOf(frame: number): number {
    const u = this.rec.use[frame >>> CHUNK_SHIFT];
    return u === undefined ? FRAME_FREE : u[frame & CHUNK_MASK]!;
  }

  /** References to `frame`. */
  refcountOf(frame: number): number {
    const r = this.rec.refcount[frame >>> CHUNK_SHIFT];
    return r === undefined ? 0 : r[frame & CHUNK_MASK]!;
  }

  /** Takes a free frame for `use` with one reference. Throws OutOfMemoryError when none is left. */
  alloc(use: number): number {
    let f: number;
    if (this.top > 0) f = this.stack[--this.top]!;
    else if (this.freshLeft > 0) {
      f = this.fresh++;
      this.freshLeft--;
      this.skipHoles();
    } else throw new OutOfMemoryError(this.totalFrames);
    const c = this.rec.chunk(f);
    const i = f & CHUNK_MASK;
    const prev = this.rec.lastUse[c]![i]!;
    if ((use === FRAME_ANON || use === FRAME_CACHE) && prev >= FRAME_TABLE) this.tableReusedAsData[prev - FRAME_TABLE]++;
    this.rec.use[c]![i] = use;
    this.rec.refcount[c]![i] = 1;
    this.rec.exclusive[c]![i] = 0;
    this.allocations++;
    return f;
  }

  /** Drops one reference; the frame is freed when none is left. Returns true when it was freed. */
  put(frame: number): boolean {
    const c = this.rec.chunk(frame);
    const i = frame & CHUNK_MASK;
    const r = --this.rec.refcount[c]![i]!;
    if (r > 0) return false;
    if (r < 0) throw new Error(`frame ${frame} freed twice`);
    this.rec.lastUse[c]![i] = this.rec.use[c]![i]!;
    this.rec.use[c]![i] = FRAME_FREE;
    if (this.top === this.stack.length) {
      const s = new Int32Array(this.stack.length * 2);
      s.set(this.stack);
      this.stack = s;
    }
    this.stack[this.top++] = frame;
    this.frees++;
    return true;
  }

  /**
   * Whether anonymous page `frame` is known to be mapped by one process only (Linux `PageAnonExclusive`): set
   * when a fault gives the page to one process (a new page, a COW copy, a reuse), cleared when fork shares it.
   */
  isExclusive(frame: number): boolean {
    const x = this.rec.exclusive[frame >>> CHUNK_SHIFT];
    return x !== undefined && x[frame & CHUNK_MASK] === 1;
  }

  setExclusive(frame: number, exclusive: boolean): void {
    this.rec.exclusive[this.rec.chunk(frame)]![frame & CHUNK_MASK] = exclusive ? 1 : 0;
  }

  get(frame: number): void {
    const c = this.rec.chunk(frame);
    this.rec.refcount[c]![frame & CHUNK_MASK]!++;
  }

  private skipHoles(): void {
    for (const [a, b] of this.holes) if (this.fresh >= a && this.fresh < b) this.fresh = b;
  }
}
