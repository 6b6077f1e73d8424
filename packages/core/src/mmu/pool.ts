import { PAGE_SIZE, pageNumber } from '../arch/constants.js';
import type { GuestMemory } from '../machine/guest-memory.js';
import type { VersionedTables } from '../paging/stage-memo.js';
import type { DirectWords } from '../memory/physical.js';

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
  /**
   * Host-physical address of frame 0: POOL_BASE, or (for an MMU whose tables a processor with a small
   * MAXPHYADDR must reach, see `TdpMmu`) a 4 KiB-aligned address below that MAXPHYADDR that no memslot uses.
   */
  readonly base: number;
  /** Bits 51:32 of `base` when it is a multiple of 4 GiB, else -1. */
  readonly baseHi: number;
  /**
   * Counts the writes that may change an spte a walk went through (`set` over a non-zero spte, `clearFrame`,
   * `fillFrame`, and the hardware's A/D updates through `SptePoolMemory.write32`): every write goes through them,
   * so a second stage may keep what it walked while the version stays the same (core's StageMemo). `set` over an
   * spte that is zero, a new mapping in a never-used slot, leaves it: a zero entry is not present in any format
   * (EPT, NPT, shadow), and a walk that was kept went through present entries only, so it still reads the same.
   */
  version = 0;

  constructor(capacity: number, base: number = POOL_BASE) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`shadow pool capacity must be a positive integer, not ${capacity}`);
    if (!Number.isInteger(base) || base % PAGE_SIZE !== 0 || base <= 0) throw new RangeError(`pool base ${base} is not a positive 4 KiB-aligned address`);
    // The frames must be addressable by a 52-bit physical address (the architectural MAXPHYADDR limit), which also
    // keeps `baseHi` an int32.
    if (base + capacity * PAGE_SIZE > 2 ** 52) throw new RangeError(`a pool of ${capacity} frames at ${base} does not end below 2^52`);
    this.capacity = capacity;
    this.base = base;
    this.baseHi = base % 4294967296 === 0 ? (base / 4294967296) | 0 : -1; // an int32 (bits 51:32), not a double
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

  /** The host-physical address of pool frame `frame` (POOL_BASE + frame * 4 KiB). */
  static frameHpa(frame: number): number {
    return POOL_BASE + frame * PAGE_SIZE;
  }

  /** The host-physical address of `frame` in this pool. */
  hpaOf(frame: number): number {
    return this.base + frame * PAGE_SIZE;
  }

  /** The frame index of a pool host-physical address, or -1 when the address is not in the pool. */
  hpaToFrame(hpa: number): number {
    if (hpa < this.base) return -1;
    const f = pageNumber(hpa - this.base);
    return f < this.capacity ? f : -1;
  }

  /** The low 32 bits of the spte at `loc` (frame * SPTES_PER_PAGE + index). */
  lo(loc: number): number {
    return this.words[loc * 2]!;
  }

  /** The high 32 bits of the spte at `loc`. */
  hi(loc: number): number {
    return this.words[loc * 2 + 1]!;
  }

  /** Writes both halves of the spte at `loc`. */
  set(loc: number, lo: number, hi: number): void {
    const w = this.words;
    if ((w[loc * 2]! | w[loc * 2 + 1]!) !== 0) this.version++;
    w[loc * 2] = lo;
    w[loc * 2 + 1] = hi;
  }

  /** Zeroes every spte of `frame` (a freshly allocated page: all not present). */
  clearFrame(frame: number): void {
    this.version++;
    this.words.fill(0, frame * SPTES_PER_PAGE * 2, (frame + 1) * SPTES_PER_PAGE * 2);
  }

  /** Sets every spte of `frame` to the value `lo`, `hi` (a new page's non-present encoding). */
  fillFrame(frame: number, lo: number, hi: number): void {
    if (lo === 0 && hi === 0) {
      this.clearFrame(frame);
      return;
    }
    this.version++;
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
export class SptePoolMemory implements VersionedTables, DirectWords {
  constructor(
    readonly pool: SptePool,
    readonly guest: GuestMemory,
  ) {}

  /** The pool's write count (VersionedTables): what a second stage walked holds while it is the same. */
  get tablesVersion(): number {
    return this.pool.version;
  }

  /** Where the pool's frames begin (VersionedTables). */
  get tablesBase(): number {
    return this.pool.base;
  }

  /** Where the frames the pool holds end (VersionedTables). */
  get tablesEnd(): number {
    return this.pool.base + this.pool.words.length * 4;
  }

  /** The pool's words (DirectWords: the walker reads the shadow tables from them directly). */
  get directWords(): Uint32Array {
    return this.pool.words;
  }

  /** The host-physical address of the pool's first word (DirectWords). */
  get directBase(): number {
    return this.pool.base;
  }

  /** Bits 51:32 of `directBase` when it is a multiple of 4 GiB, else -1 (DirectWords). */
  get directBaseHi(): number {
    return this.pool.baseHi;
  }

  read32(pa: number): number {
    const base = this.pool.base;
    if (pa >= base) {
      const w = (pa - base) / 4;
      const words = this.pool.words;
      if (w < words.length) return words[w]!;
      if (base !== POOL_BASE) return this.guest.read32(pa);
      return 0;
    }
    return this.guest.read32(pa);
  }

  /** Guest RAM's read-only memslots; the pool's frames are always writable. */
  isReadonly(pa: number): boolean {
    const base = this.pool.base;
    if (pa >= base && ((pa - base) / 4 < this.pool.words.length || base === POOL_BASE)) return false;
    return this.guest.isReadonly(pa);
  }

  write32(pa: number, value: number): void {
    const base = this.pool.base;
    if (pa >= base) {
      const w = (pa - base) / 4;
      if (w < this.pool.words.length) {
        this.pool.version++;
        this.pool.words[w] = value;
      } else if (base !== POOL_BASE) this.guest.write32(pa, value);
      return;
    }
    this.guest.write32(pa, value);
  }
}
