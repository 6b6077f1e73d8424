import type { PhysicalMemory } from './physical.js';

const PAGE_WORDS = 1024; // 4 KiB / 4
/** MAXPHYADDR is at most 52 (SDM Vol. 3A §4.1.4): every physical address is below 2^52. */
const PA_LIMIT = 2 ** 52;

function checkWordAddress(pa: number, what: string): void {
  if (!(pa >= 0 && pa < PA_LIMIT) || pa % 4 !== 0) {
    throw new RangeError(`${what}: physical address ${pa} is not a 4-byte aligned address below 2^52`);
  }
}

/**
 * Physical memory made of the 4 KiB pages that were written, anywhere below 2^52 (conformance vectors put
 * a few page-table entries at low addresses and data frames gigabytes above them). Every word that was never
 * written reads as 0; reads never allocate. Not for the hot path of a run (that is `GuestMemory`), but still
 * BigInt-free: 64-bit values are two 32-bit halves, little-endian (low half at `pa`).
 */
export class SparsePhysicalMemory implements PhysicalMemory {
  private readonly pages = new Map<number, Uint32Array>();

  read32(pa: number): number {
    checkWordAddress(pa, 'SparsePhysicalMemory.read32');
    const page = this.pages.get(Math.floor(pa / 4096));
    return page === undefined ? 0 : page[(pa & 0xfff) >>> 2]!;
  }

  write32(pa: number, value: number): void {
    checkWordAddress(pa, 'SparsePhysicalMemory.write32');
    const frame = Math.floor(pa / 4096);
    let page = this.pages.get(frame);
    if (page === undefined) {
      page = new Uint32Array(PAGE_WORDS);
      this.pages.set(frame, page);
    }
    page[(pa & 0xfff) >>> 2] = value >>> 0;
  }

  /** Stores a 64-bit little-endian value given as halves at `pa` (8-byte aligned). */
  set64(pa: number, lo: number, hi: number): void {
    if (pa % 8 !== 0) throw new RangeError(`SparsePhysicalMemory.set64: physical address ${pa} is not 8-byte aligned`);
    this.write32(pa, lo);
    this.write32(pa + 4, hi);
  }

  /** The 64-bit little-endian value at `pa` (8-byte aligned), as a BigInt (for tests and the edges). */
  get64(pa: number): bigint {
    if (pa % 8 !== 0) throw new RangeError(`SparsePhysicalMemory.get64: physical address ${pa} is not 8-byte aligned`);
    return (BigInt(this.read32(pa + 4)) << 32n) | BigInt(this.read32(pa));
  }

  /** Number of 4 KiB pages that hold data. */
  get pageCount(): number {
    return this.pages.size;
  }

  /** The physical addresses of the backed pages, ascending. */
  backedPages(): number[] {
    return [...this.pages.keys()].sort((a, b) => a - b).map((f) => f * 4096);
  }
}
