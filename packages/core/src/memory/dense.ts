import type { PhysicalMemory } from './physical.js';

/** Uint32Array uses the host's byte order; x86 memory is little-endian. */
const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * Physical memory as one ArrayBuffer from address 0 (`size` bytes, a multiple of 4). Reads beyond the end
 * return 0 (unbacked memory, as `PhysicalMemory` promises); writes beyond the end throw a RangeError, since
 * a store the model cannot keep would silently lose data. Words are little-endian 32-bit values; the host
 * must be little-endian (every platform Node supports in practice), which the constructor checks.
 */
export class DensePhysicalMemory implements PhysicalMemory {
  readonly buffer: ArrayBuffer;
  readonly size: number;
  private readonly words: Uint32Array;

  constructor(sizeOrBuffer: number | ArrayBuffer) {
    if (!HOST_LITTLE_ENDIAN) throw new Error('DensePhysicalMemory needs a little-endian host');
    if (typeof sizeOrBuffer === 'number') {
      if (!Number.isInteger(sizeOrBuffer) || sizeOrBuffer < 0 || sizeOrBuffer % 4 !== 0) {
        throw new RangeError(`DensePhysicalMemory: size ${sizeOrBuffer} is not a non-negative multiple of 4`);
      }
      this.buffer = new ArrayBuffer(sizeOrBuffer);
    } else {
      if (sizeOrBuffer.byteLength % 4 !== 0) {
        throw new RangeError(`DensePhysicalMemory: buffer length ${sizeOrBuffer.byteLength} is not a multiple of 4`);
      }
      this.buffer = sizeOrBuffer;
    }
    this.size = this.buffer.byteLength;
    if (this.size > 2 ** 32) throw new RangeError(`DensePhysicalMemory: ${this.size} bytes is more than 4 GiB`);
    this.words = new Uint32Array(this.buffer);
  }

  read32(pa: number): number {
    // Beyond the end: unbacked memory reads as 0. `pa < size <= 2^32` makes `pa >>> 2` exact.
    return pa >= 0 && pa < this.size ? this.words[pa >>> 2]! : 0;
  }

  write32(pa: number, value: number): void {
    if (!(pa >= 0 && pa + 4 <= this.size) || pa % 4 !== 0) {
      throw new RangeError(`DensePhysicalMemory.write32: physical address ${pa} is outside the ${this.size}-byte memory or not 4-byte aligned`);
    }
    this.words[pa >>> 2] = value;
  }

  /** Stores a 64-bit little-endian value given as halves at `pa` (8-byte aligned). */
  set64(pa: number, lo: number, hi: number): void {
    if (pa % 8 !== 0) throw new RangeError(`DensePhysicalMemory.set64: physical address ${pa} is not 8-byte aligned`);
    this.write32(pa, lo);
    this.write32(pa + 4, hi);
  }

  /** The 64-bit little-endian value at `pa` (8-byte aligned), as a BigInt (for tests and the edges). */
  get64(pa: number): bigint {
    if (pa % 8 !== 0) throw new RangeError(`DensePhysicalMemory.get64: physical address ${pa} is not 8-byte aligned`);
    return (BigInt(this.read32(pa + 4)) << 32n) | BigInt(this.read32(pa));
  }
}
