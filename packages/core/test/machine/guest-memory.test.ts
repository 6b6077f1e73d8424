import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../src/index.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

describe('GuestMemory', () => {
  describe('.digest', () => {
    it('is the SHA-256 of all RAM, slot by slot in guest-physical order', () => {
      // The slots are given out of order: the buffer holds [0x10000, 0x12000) first, the digest takes gpa 0 first.
      const mem = new GuestMemory(0, [
        { base: 0x10000, size: 0x2000 },
        { base: 0, size: 0x1000, readonly: true },
      ]);
      for (let i = 0; i < mem.size; i++) mem.u8[i] = (i * 7 + 3) & 0xff;
      const low = mem.u8.subarray(mem.gpaToOffset(0), mem.gpaToOffset(0) + 0x1000);
      const high = mem.u8.subarray(mem.gpaToOffset(0x10000), mem.gpaToOffset(0x10000) + 0x2000);
      expect(mem.digest()).toBe(
        createHash('sha256')
          .update(Buffer.concat([low, high]))
          .digest('hex'),
      );
    });

    it('gives the digests it always gave below 2 GiB (1 MiB of zeros: the sha256sum of 1 MiB of /dev/zero)', () => {
      expect(new GuestMemory(MiB).digest()).toBe('30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58');
    });

    it('hashes 2 GiB of RAM, more than one hash update takes (node:crypto refuses 2^31 bytes at once)', () => {
      const mem = new GuestMemory(2 * GiB);
      expect(mem.size).toBe(2 ** 31);
      expect(() => createHash('sha256').update(mem.u8)).toThrow(/too long/); // what the digest did before
      mem.u8[0] = 1;
      mem.u8[256 * MiB] = 2; // the first byte of the second piece
      mem.u8[mem.size - 1] = 3; // the last byte: a digest that stopped early would miss it
      // The same bytes fed in other pieces (1 GiB - 3 bytes, then the rest) give the same SHA-256.
      const h = createHash('sha256');
      const step = GiB - 3;
      for (let at = 0; at < mem.size; at += step) h.update(mem.u8.subarray(at, Math.min(mem.size, at + step)));
      expect(mem.digest()).toBe(h.digest('hex'));
    }, 60_000);
  });
});
