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

export class FrameAllocator {
  readonly totalFrames: number;
  /** Reference count of each frame (mappings + the page cache's own reference). */
  readonly refcount: Int32Array;
  /** Current use (FRAME_*), and for a free frame the use it had before it was freed. */
  readonly use: Uint8Array;
  readonly lastUse: Uint8Array;
  private readonly stack: Int32Array;
  private top = 0;
  /** Allocations of a data page whose frame was last a page-table page of level L (indexed by L). */
  readonly tableReusedAsData = new Float64Array(6);
  allocations = 0;
  frees = 0;

  /** Frames [firstFree, totalFrames) start free; the lowest is handed out first. */
  constructor(totalFrames: number, firstFree: number) {
    this.totalFrames = totalFrames;
    this.refcount = new Int32Array(totalFrames);
    this.use = new Uint8Array(totalFrames);
    this.lastUse = new Uint8Array(totalFrames);
    this.stack = new Int32Array(totalFrames);
    for (let f = totalFrames - 1; f >= firstFree; f--) this.stack[this.top++] = f;
    for (let f = 0; f < firstFree; f++) this.use[f] = FRAME_KERNEL;
  }

  get freeCount(): number {
    return this.top;
  }

  /** Takes a free frame for `use` with one reference. Throws OutOfMemoryError when none is left. */
  alloc(use: number): number {
    if (this.top === 0) throw new OutOfMemoryError(this.totalFrames);
    const f = this.stack[--this.top]!;
    const prev = this.lastUse[f]!;
    if ((use === FRAME_ANON || use === FRAME_CACHE) && prev >= FRAME_TABLE) this.tableReusedAsData[prev - FRAME_TABLE]++;
    this.use[f] = use;
    this.refcount[f] = 1;
    this.allocations++;
    return f;
  }

  /** Drops one reference; the frame is freed when none is left. Returns true when it was freed. */
  put(frame: number): boolean {
    const r = --this.refcount[frame]!;
    if (r > 0) return false;
    if (r < 0) throw new Error(`frame ${frame} freed twice`);
    this.lastUse[frame] = this.use[frame]!;
    this.use[frame] = FRAME_FREE;
    this.stack[this.top++] = frame;
    this.frees++;
    return true;
  }

  get(frame: number): void {
    this.refcount[frame]!++;
  }
}
