import { describe, expect, it } from 'vitest';
import { PML_ENTRIES, PML_HEAD_INDEX, PmlLog } from '../../src/paging/pml.js';

describe('PmlLog', () => {
  describe('.log', () => {
    it('fills from entry 511 down, 4 KiB aligned, then refuses the 513th address (SDM Vol. 3C §29.3.6: index out of range)', () => {
      const log = new PmlLog();
      for (let i = 0; i < PML_ENTRIES; i++) expect(log.log(0x1000 * i + 0x123)).toBe(true);
      expect(log.entries[PML_HEAD_INDEX]).toBe(0);
      expect(log.entries[0]).toBe(0x1000 * 511);
      expect(log.index).toBe(0xffff); // the 16-bit index wrapped below 0
      expect(log.log(0x5000)).toBe(false);
      expect(log.index).toBe(0xffff);
    });
  });

  describe('.drain', () => {
    it('visits the logged addresses newest first and resets the index to 511', () => {
      const log = new PmlLog();
      log.log(0x1000);
      log.log(0x2000);
      log.log(0x3fff);
      const got: number[] = [];
      expect(log.drain((g) => got.push(g))).toBe(3);
      expect(got).toEqual([0x3000, 0x2000, 0x1000]);
      expect(log.index).toBe(PML_HEAD_INDEX);
      expect(log.drain(() => expect.fail('empty'))).toBe(0);
    });

    it('drains a full log (all 512 entries)', () => {
      const log = new PmlLog();
      for (let i = 0; i < PML_ENTRIES; i++) log.log(i * 0x1000);
      let n = 0;
      expect(log.drain(() => n++)).toBe(512);
      expect(n).toBe(512);
      expect(log.log(0)).toBe(true);
    });
  });
});
