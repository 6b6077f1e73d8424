import { PAGE_SIZE } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { PROT_READ, PROT_WRITE, VMA_ANON, Vma, VmaList } from '../../src/os/vma.js';

const RW = PROT_READ | PROT_WRITE;
const area = (start: number, pages: number, prot = RW): Vma => new Vma(start * PAGE_SIZE, (start + pages) * PAGE_SIZE, prot, VMA_ANON, null, 0);

describe('VmaList', () => {
  describe('.insert', () => {
    it('refuses an empty area and stays a tree: no mmap makes one (mm/mmap.c do_mmap: EINVAL for a length of 0)', () => {
      // No Linux mm holds an empty area: the list refuses one, in a gap ([20, 20), which it used to take, and
      // then kept its areas in an array scanned by every operation) or inside an area ([8, 8) in [4, 12)), and
      // keeps what it had. A carve at 8 then splits [4, 12) in two, in start order, and the gap searches see the
      // free pages below 4 and above 12.
      const list = new VmaList();
      list.insert(area(4, 8));
      expect(() => list.insert(area(20, 0))).toThrow('is empty');
      expect(() => list.insert(area(8, 0))).toThrow('is empty');
      expect(list.size).toBe(1);
      for (const x of list.carve(8 * PAGE_SIZE, 12 * PAGE_SIZE)) x.prot = PROT_READ;
      expect(list.list.map((a) => [a.start / PAGE_SIZE, a.end / PAGE_SIZE, a.prot])).toEqual([
        [4, 8, RW],
        [8, 12, PROT_READ],
      ]);
      expect(list.findGap(0, 4 * PAGE_SIZE, 64 * PAGE_SIZE)).toBe(0);
      expect(list.findGap(PAGE_SIZE, 4 * PAGE_SIZE, 64 * PAGE_SIZE)).toBe(12 * PAGE_SIZE);
      expect(list.findGapTopDown(0, 2 * PAGE_SIZE, 12 * PAGE_SIZE)).toBe(2 * PAGE_SIZE);
    });

    it('refuses an area of the list made empty', () => {
      const list = new VmaList();
      const a = area(4, 2);
      list.insert(a);
      expect(() => {
        a.end = a.start;
      }).toThrow('is empty');
    });
  });
});
