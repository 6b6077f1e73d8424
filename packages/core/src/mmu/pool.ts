import { PAGE_SIZE } from '../arch/constants.js';
import type { GuestMemory } from '../machine/guest-memory.js';
import type { PhysicalMemory } from '../memory/physical.js';

/**
 * Host-physical address of the first frame of the MMU page pool. Guest RAM's host-physical addresses
 * equal its guest-physical ones (below 2^43: MAX_GUEST_RAM of 4 TiB, RAM above the MMIO hole included);
 * the pool lives far above, at 2^45 (below the default host MAXPHYADDR of 46), so a hardware walk of the
 * MMU's tables can tell the two apart by address alone.
 */
export const POOL_BASE = 2 ** 45;
/** Sptes per MMU page (one 4 KiB host frame of 8-byte entries). */
export const SPTES_PER_PAGE = 512;
/** Frames the pool's array holds at first (256 KiB of sptes). */
const INITIAL_FRAMES = 64;

/**
 * The host frames that hold an MMU's pages (shadow pages, or TDP pages): up to `capacity` frames of 512 64-bit
 * sptes each, in one Uint32Array (spte i of frame f is the words at `(f * 512 + i) * 2` (low half) and `+ 1`
 * (high half)). An spte location ("sptep") is the number `f * 512 + i`. The array holds the frames handed out
 * so far (`frames`) and grows, by doubling up to `capacity`, when a higher frame is first used (`ensure`): the
 * budget of a large guest (2% of its pages, KVM's default) costs host memory only as pages are made. A frame
 * beyond `frames` reads as zeros.
 */
export class SptePool {
  words: Uint32Array;
  /** The budget: frames [0, capacity) may be used. */
  capacity: number;

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`shadow pool capacity must be a positive integer, not ${capacity}`);
    this.capacity = capacity;
    this.words = new Uint32Array(Math.min(capacity, INITIAL_FRAMES) * SPTES_PER_PAGE * 2);
  }

  /** Frames the array holds now. */
  get frames(): number {
    return this.words.length / (SPTES_PER_PAGE * 2);
  }

  /** Makes the array hold `frame` (within the budget), keeping every spte. */
  ensure(frame: number): void {
    if (frame < this.frames) return;
    if (frame >= this.capacity) throw new RangeError(`frame ${frame} is beyond the pool's budget of ${this.capacity} frames`);
    let n = this.frames;
    while (n <= frame) n *= 2;
    this.resize(Math.min(n, this.capacity));
  }

  /** Grows the budget to `capacity` frames (a larger page budget; the array grows as frames are used). */
  grow(capacity: number): void {
    if (capacity <= this.capacity) return;
    this.capacity = capacity;
  }

  private resize(frames: number): void {
    const w = new Uint32Array(frames * SPTES_PER_PAGE * 2);
    w.set(this.words);
    this.words = w;
  }

  static frameHpa(frame: number): number {
    return POOL_BASE + frame * PAGE_SIZE;
  }

  /** The frame index of a pool host-physical address, or -1 when the address is not in the pool. */
  hpaToFrame(hpa: number): number {
    if (hpa < POOL_BASE) return -1;
    const f = Math.floor((hpa - POOL_BASE) / PAGE_SIZE);
    return f < this.capacity ? f : -1;
  }

  lo(loc: number): number {
    return this.words[loc * 2]!;
  }

  hi(loc: number): number {
    return this.words[loc * 2 + 1]!;
  }

  set(loc: number, lo: number, hi: number): void {
    this.words[loc * 2] = lo;
    this.words[loc * 2 + 1] = hi;
  }

  clearFrame(frame: number): void {
    this.words.fill(0, frame * SPTES_PER_PAGE * 2, (frame + 1) * SPTES_PER_PAGE * 2);
  }

  /** Sets every spte of `frame` to the value `lo`, `hi` (a new page's non-present encoding). */
  fillFrame(frame: number, lo: number, hi: number): void {
    if (lo === 0 && hi === 0) {
      this.clearFrame(frame);
      return;
    }
    const w = this.words;
    for (let i = frame * SPTES_PER_PAGE * 2, end = i + SPTES_PER_PAGE * 2; i < end; i += 2) {
      w[i] = lo;
      w[i + 1] = hi;
    }
  }
}

/**
 * What the hardware walks under an MMU whose tables are in the pool: the pool's frames at POOL_BASE and
 * above, guest RAM below. The hardware walk of those tables reads (and, for A/D bits, writes) only pool
 * frames; the final address of a translation is guest RAM, which the vCPU reaches through its memslots.
 */
export class SptePoolMemory implements PhysicalMemory {
  constructor(
    readonly pool: SptePool,
    readonly guest: GuestMemory,
  ) {}

  read32(pa: number): number {
    if (pa >= POOL_BASE) {
      const w = (pa - POOL_BASE) / 4;
      const words = this.pool.words;
      return w < words.length ? words[w]! : 0;
    }
    return this.guest.read32(pa);
  }

  write32(pa: number, value: number): void {
    if (pa >= POOL_BASE) {
      const w = (pa - POOL_BASE) / 4;
      if (w < this.pool.words.length) this.pool.words[w] = value;
      return;
    }
    this.guest.write32(pa, value);
  }
}
