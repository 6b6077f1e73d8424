import { describe, expect, it } from 'vitest';
import { DensePhysicalMemory } from '../../src/memory/dense.js';

describe('DensePhysicalMemory', () => {
  describe('.read32/.write32', () => {
    it('stores little-endian words in one buffer from address 0', () => {
      const m = new DensePhysicalMemory(0x2000);
      m.write32(0x1ffc, 0x11223344);
      expect(m.read32(0x1ffc)).toBe(0x11223344);
      expect([...new Uint8Array(m.buffer, 0x1ffc, 4)]).toEqual([0x44, 0x33, 0x22, 0x11]);
    });

    it('reads 0 beyond the end and throws a RangeError on a write beyond it', () => {
      const m = new DensePhysicalMemory(0x1000);
      expect(m.read32(0x1000)).toBe(0);
      expect(m.read32(2 ** 40)).toBe(0);
      expect(() => m.write32(0x1000, 1)).toThrow(RangeError);
      expect(() => m.write32(-4, 1)).toThrow(RangeError);
    });

    it('wraps an existing buffer and rejects sizes that are not multiples of 4', () => {
      const buf = new ArrayBuffer(16);
      new DataView(buf).setUint32(8, 0xcafe, true);
      expect(new DensePhysicalMemory(buf).read32(8)).toBe(0xcafe);
      expect(() => new DensePhysicalMemory(6)).toThrow(RangeError);
    });
  });

  describe('.set64/.get64', () => {
    it('stores 64-bit values as two halves', () => {
      const m = new DensePhysicalMemory(64);
      m.set64(16, 0x2003, 0x80000000);
      expect(m.get64(16)).toBe(0x8000000000002003n);
    });
  });
});
