import { describe, expect, it } from 'vitest';
import { SparsePhysicalMemory } from '../../src/memory/sparse.js';

describe('SparsePhysicalMemory', () => {
  describe('.read32/.write32', () => {
    it('reads 0 from unbacked memory without allocating a page', () => {
      const m = new SparsePhysicalMemory();
      expect(m.read32(0x7fff_fff0)).toBe(0);
      expect(m.pageCount).toBe(0);
    });

    it('keeps words anywhere below 2^52, one 4 KiB page each', () => {
      const m = new SparsePhysicalMemory();
      m.write32(0x1000, 0xdeadbeef);
      m.write32(2 ** 52 - 4, 0x12345678);
      m.write32(0x8000_0ffc, -1);
      expect([m.read32(0x1000), m.read32(2 ** 52 - 4), m.read32(0x8000_0ffc), m.read32(0x1004)]).toEqual([0xdeadbeef, 0x12345678, 0xffffffff, 0]);
      expect(m.backedPages()).toEqual([0x1000, 0x8000_0000, 2 ** 52 - 4096]);
    });

    it('rejects unaligned addresses and addresses at or above 2^52', () => {
      const m = new SparsePhysicalMemory();
      expect(() => m.write32(0x1002, 1)).toThrow(RangeError);
      expect(() => m.read32(2 ** 52)).toThrow(RangeError);
      expect(() => m.read32(-4)).toThrow(RangeError);
    });
  });

  describe('.set64/.get64', () => {
    it('stores 64-bit values little-endian as two halves', () => {
      const m = new SparsePhysicalMemory();
      m.set64(0x2008, 0x89abcdef, 0x80000001);
      expect([m.read32(0x2008), m.read32(0x200c)]).toEqual([0x89abcdef, 0x80000001]);
      expect(m.get64(0x2008)).toBe(0x8000000189abcdefn);
      expect(() => m.set64(0x2004, 0, 0)).toThrow(RangeError);
    });
  });
});
