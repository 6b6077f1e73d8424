import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ACC_FETCH, ACC_READ, ACC_USER, ACC_WRITE, PFERR_PK, PFERR_PRESENT, PFERR_RSVD, SIZE_1G, SIZE_2M, SIZE_4M } from '../../src/arch/constants.js';
import {
  TLB_FETCH_SUP,
  TLB_FETCH_USER,
  TLB_GLOBAL,
  TLB_LARGE,
  TLB_NEED,
  TLB_READ_SUP,
  TLB_READ_USER,
  TLB_VALID,
  TLB_WRITE_SUP,
  TLB_WRITE_USER,
  Tlb,
} from '../../src/tlb/tlb.js';

/** Every permission bit: a translation that allows every kind of access. */
const ALL = TLB_READ_SUP | TLB_WRITE_SUP | TLB_FETCH_SUP | TLB_READ_USER | TLB_WRITE_USER | TLB_FETCH_USER;
const KB4 = 4096;

/** The six kinds of access, with the one permission bit each needs. */
const KINDS: ReadonlyArray<readonly [string, number, number]> = [
  ['supervisor read', ACC_READ, TLB_READ_SUP],
  ['supervisor write', ACC_WRITE, TLB_WRITE_SUP],
  ['supervisor fetch', ACC_FETCH, TLB_FETCH_SUP],
  ['user read', ACC_USER | ACC_READ, TLB_READ_USER],
  ['user write', ACC_USER | ACC_WRITE, TLB_WRITE_USER],
  ['user fetch', ACC_USER | ACC_FETCH, TLB_FETCH_USER],
];

describe('Tlb', () => {
  describe('constructor', () => {
    it('rejects a size that is not a power of two, naming it', () => {
      expect(() => new Tlb(0)).toThrow(/TLB size 0 is not a power of two/);
      expect(() => new Tlb(48)).toThrow(/TLB size 48 is not a power of two/);
    });

    it('starts empty, with zero counters', () => {
      const tlb = new Tlb(64);
      expect(tlb.size).toBe(64);
      expect(tlb.validEntries()).toBe(0);
      expect([tlb.hits, tlb.misses, tlb.flushes, tlb.invlpgs]).toEqual([0, 0, 0, 0]);
      expect(tlb.lookup(0, ACC_READ, 0)).toBe(-1);
    });
  });

  describe('TLB_NEED', () => {
    it.each(KINDS)('asks a %s for TLB_VALID and exactly its own permission bit', (_name, access, bit) => {
      expect(TLB_NEED[access & 0x16]).toBe(TLB_VALID | bit);
    });

    it('ignores the error-code bits that are not access kinds (P, RSVD, PK)', () => {
      // lookup() indexes with access & 0x16 (W, U, I/D: SDM Vol. 3A §4.7), so the other bits cannot change the need.
      for (const [, access] of KINDS) {
        expect(TLB_NEED[(access | PFERR_PRESENT | PFERR_RSVD | PFERR_PK) & 0x16]).toBe(TLB_NEED[access]);
      }
    });
  });

  describe('.fill', () => {
    it('refuses a host page offset or a page size it cannot pack: not 4 KiB-aligned, not an integer, out of range', () => {
      const tlb = new Tlb(64);
      for (const host of [0x1001, 4096.5, -4096, 2 ** 32, Number.NaN]) {
        expect(() => tlb.fill(0x5000, 0, host, ALL, KB4), `host page ${host}`).toThrow(/host page offset .* is not 4 KiB-aligned below 4 GiB/);
      }
      for (const size of [KB4 + 0.5, 3 * KB4, 2 * SIZE_1G, KB4 / 2]) {
        expect(() => tlb.fill(0x5000, 0, 0x9000, ALL, size), `page size ${size}`).toThrow(/page size .* is not a power of two/);
      }
      // What it accepts: the last page below 4 GiB, and every power of two from 4 KiB to 1 GiB.
      tlb.fill(0x5000, 0, 0xffff_f000, ALL, KB4);
      expect(tlb.lookup(0x5008, ACC_READ, 0)).toBe(0xffff_f008);
      for (const size of [KB4, SIZE_2M, SIZE_4M, SIZE_1G]) tlb.fill(0, 0, 0, ALL, size);
    });
  });

  describe('.lookup', () => {
    it('counts a miss on an empty TLB and a hit after a fill, returning host page + page offset', () => {
      const tlb = new Tlb(64);
      expect(tlb.lookup(0x1234_5678, ACC_READ, 0)).toBe(-1);
      tlb.fill(0x1234_5000, 0, 0x7_3000, ALL, KB4);
      expect(tlb.lookup(0x1234_5678, ACC_READ, 0)).toBe(0x7_3678);
      expect(tlb.lookup(0x1234_5fff, ACC_USER | ACC_WRITE, 0)).toBe(0x7_3fff);
      // The neighbouring pages were never filled.
      expect(tlb.lookup(0x1234_6000, ACC_READ, 0)).toBe(-1);
      expect(tlb.lookup(0x1234_4fff, ACC_READ, 0)).toBe(-1);
      // 1 miss before the fill, 2 hits, 2 misses on the neighbours.
      expect(tlb.hits).toBe(2);
      expect(tlb.misses).toBe(3);
    });

    it.each(KINDS)('completes a %s only when the entry holds its permission bit', (_name, access, bit) => {
      // Each permission bit stands for one access kind that may complete without a walk (v86 src/rust/tlb.rs).
      const tlb = new Tlb(16);
      tlb.fill(0x5000, 0, 0x9000, bit, KB4);
      for (const [, other, otherBit] of KINDS) {
        expect(tlb.lookup(0x5010, other, 0)).toBe(otherBit === bit ? 0x9010 : -1);
      }
      tlb.fill(0x5000, 0, 0x9000, ALL & ~bit, KB4);
      for (const [, other, otherBit] of KINDS) {
        expect(tlb.lookup(0x5010, other, 0)).toBe(otherBit === bit ? -1 : 0x9010);
      }
      expect(tlb.lookup(0x5010, access, 0)).toBe(-1);
      // 6 lookups per fill, of which exactly one (first fill) and five (second fill) hit, plus the last miss.
      expect(tlb.hits).toBe(6);
      expect(tlb.misses).toBe(7);
    });

    it('uses a non-global entry only in the PCID it was filled under (SDM Vol. 3A §4.10.1)', () => {
      const tlb = new Tlb(16);
      tlb.fill(0x40_0000, 5, 0x2000, ALL, KB4);
      expect(tlb.lookup(0x40_0004, ACC_READ, 5)).toBe(0x2004);
      expect(tlb.lookup(0x40_0004, ACC_READ, 6)).toBe(-1);
      expect(tlb.lookup(0x40_0004, ACC_READ, 0)).toBe(-1);
    });

    it('uses a global entry under any PCID (SDM Vol. 3A §4.10.2.4)', () => {
      const tlb = new Tlb(16);
      tlb.fill(0x40_0000, 5, 0x2000, ALL | TLB_GLOBAL, KB4);
      expect(tlb.lookup(0x40_0004, ACC_READ, 5)).toBe(0x2004);
      expect(tlb.lookup(0x40_0004, ACC_READ, 6)).toBe(0x2004);
      expect(tlb.lookup(0x40_0004, ACC_READ, 0)).toBe(0x2004);
    });

    it('translates signed-canonical upper-half and 5-level addresses (packages/core/DESIGN.md)', () => {
      const tlb = new Tlb(64);
      const kernel = -0x7780_0000_0000; // 0xffff_8880_0000_0000
      const la57 = 2 ** 52 - KB4; // a 5-level user address, exact as a double
      tlb.fill(kernel, 0, 0x1000, ALL, KB4);
      tlb.fill(la57, 0, 0x3000, ALL, KB4);
      expect(tlb.lookup(kernel + 0x10, ACC_READ, 0)).toBe(0x1010);
      expect(tlb.lookup(kernel - 0x10, ACC_READ, 0)).toBe(-1); // the page below, 0xffff_887f_ffff_f000
      expect(tlb.lookup(la57 + 0xffc, ACC_READ, 0)).toBe(0x3ffc);
      expect(tlb.lookup(-1, ACC_READ, 0)).toBe(-1); // 0xffff_ffff_ffff_ffff shares no tag with them
    });

    it('returns host offsets at and above 2 GiB as positive numbers', () => {
      const tlb = new Tlb(16);
      tlb.fill(0x1000, 0, 0xffff_f000, ALL, KB4);
      tlb.fill(0x2000, 0, 0x8000_0000, ALL, KB4);
      expect(tlb.lookup(0x1abc, ACC_READ, 0)).toBe(0xffff_fabc);
      expect(tlb.lookup(0x2abc, ACC_READ, 0)).toBe(0x8000_0abc);
    });

    it('misses on a page that maps to the same slot as the cached one (direct-mapped)', () => {
      const tlb = new Tlb(16);
      tlb.fill(0x3000, 0, 0x1000, ALL, KB4); // vpn 3
      expect(tlb.lookup(0x13000, ACC_READ, 0)).toBe(-1); // vpn 19 = 3 + 16: same slot, other tag
      tlb.fill(0x13000, 0, 0x5000, ALL, KB4); // evicts vpn 3
      expect(tlb.lookup(0x3000, ACC_READ, 0)).toBe(-1);
      expect(tlb.lookup(0x13000, ACC_READ, 0)).toBe(0x5000);
      expect(tlb.validEntries()).toBe(1);
    });
  });

  describe('.fill', () => {
    it('replaces the entry in an occupied slot: translation, rights, PCID and global bit', () => {
      const tlb = new Tlb(16);
      tlb.fill(0x7000, 1, 0x1000, ALL | TLB_GLOBAL, KB4);
      tlb.fill(0x7000, 2, 0x2000, TLB_READ_SUP, KB4);
      expect(tlb.validEntries()).toBe(1);
      expect(tlb.lookup(0x7008, ACC_READ, 2)).toBe(0x2008);
      expect(tlb.lookup(0x7008, ACC_WRITE, 2)).toBe(-1); // the old write right is gone
      expect(tlb.lookup(0x7008, ACC_READ, 1)).toBe(-1); // and so is the old global bit
    });

    it('caches one 4 KiB piece of a large page per fill (SDM Vol. 3A §4.10.2.3)', () => {
      const tlb = new Tlb(1024);
      tlb.fill(0x20_3000, 0, 0x40_3000, ALL, SIZE_2M);
      expect(tlb.lookup(0x20_3123, ACC_READ, 0)).toBe(0x40_3123);
      expect(tlb.lookup(0x20_4000, ACC_READ, 0)).toBe(-1); // another piece: filled on its own walk
      expect(tlb.data[0x203 & tlb.mask]! & TLB_LARGE).toBe(TLB_LARGE);
    });

    it('clears a TLB_LARGE flag passed with a 4 KiB page, so INVLPG elsewhere cannot drop it', () => {
      const tlb = new Tlb(1024);
      tlb.fill(0x20_0000, 0, 0x1000, ALL | TLB_LARGE, KB4);
      tlb.fill(0x20_1000, 0, 0x2000, ALL, SIZE_2M); // a real large piece, so INVLPG scans
      tlb.invlpg(0x20_5000, 0);
      expect(tlb.lookup(0x20_0000, ACC_READ, 0)).toBe(0x1000);
      expect(tlb.lookup(0x20_1000, ACC_READ, 0)).toBe(-1);
    });

    it('keeps a 4 KiB entry that replaced a large piece when INVLPG hits the old large page', () => {
      const tlb = new Tlb(16);
      tlb.fill(0x20_0000, 0, 0x1000, ALL, SIZE_2M); // vpn 0x200, slot 0
      tlb.fill(0x40_0000, 0, 0x2000, ALL, KB4); // vpn 0x400, slot 0: replaces the piece
      tlb.invlpg(0x20_5000, 0); // inside the old 2 MiB page (vpn 0x205, slot 5)
      expect(tlb.lookup(0x40_0000, ACC_READ, 0)).toBe(0x2000);
    });

    it('rejects a host page that is misaligned, negative or at 4 GiB, naming it', () => {
      const tlb = new Tlb(16);
      expect(() => tlb.fill(0, 0, 0x1010, ALL, KB4)).toThrow(/host page offset 4112 /);
      expect(() => tlb.fill(0, 0, -4096, ALL, KB4)).toThrow(/host page offset -4096 /);
      expect(() => tlb.fill(0, 0, 2 ** 32, ALL, KB4)).toThrow(/host page offset 4294967296 /);
      expect(tlb.validEntries()).toBe(0);
    });

    it('rejects a page size that is not a power of two from 4 KiB to 1 GiB, naming it', () => {
      const tlb = new Tlb(16);
      expect(() => tlb.fill(0, 0, 0, ALL, 3 * KB4)).toThrow(/page size 12288 /);
      expect(() => tlb.fill(0, 0, 0, ALL, 2048)).toThrow(/page size 2048 /);
      expect(() => tlb.fill(0, 0, 0, ALL, 2 * SIZE_1G)).toThrow(/page size 2147483648 /);
    });
  });

  describe('.flushAll', () => {
    function filled(): Tlb {
      const tlb = new Tlb(64);
      tlb.fill(0x1000, 0, 0x10000, ALL, KB4);
      tlb.fill(0x2000, 0, 0x20000, ALL | TLB_GLOBAL, KB4);
      tlb.fill(0x3000, 3, 0x30000, ALL, KB4);
      tlb.fill(0x4000, 3, 0x40000, ALL | TLB_GLOBAL, SIZE_2M);
      return tlb;
    }

    it('keeps exactly the global entries with keepGlobal (MOV to CR3 with CR4.PGE=1, SDM Vol. 3A §4.10.4.1)', () => {
      const tlb = filled();
      tlb.flushAll(true);
      expect(tlb.validEntries()).toBe(2);
      expect(tlb.lookup(0x1000, ACC_READ, 0)).toBe(-1);
      expect(tlb.lookup(0x2000, ACC_READ, 0)).toBe(0x20000);
      expect(tlb.lookup(0x3000, ACC_READ, 3)).toBe(-1);
      expect(tlb.lookup(0x4000, ACC_READ, 0)).toBe(0x40000);
      expect(tlb.flushes).toBe(1);
    });

    it('drops the global entries too without keepGlobal (CR4.PGE toggled, SDM Vol. 3A §4.10.4.1)', () => {
      const tlb = filled();
      tlb.flushAll(false);
      expect(tlb.validEntries()).toBe(0);
      for (const va of [0x1000, 0x2000, 0x3000, 0x4000]) expect(tlb.lookup(va, ACC_READ, 0)).toBe(-1);
      expect(tlb.flushes).toBe(1);
    });

    it('leaves no large piece behind that a later INVLPG could drop by mistake', () => {
      const tlb = filled();
      tlb.flushAll(false);
      tlb.fill(0x5000, 0, 0x50000, ALL, KB4);
      tlb.invlpg(0x4000 + 0x1000 * 64, 0); // inside the flushed 2 MiB page; vpn 0x44 is another slot
      expect(tlb.lookup(0x5000, ACC_READ, 0)).toBe(0x50000);
    });
  });

  describe('.flushPcid', () => {
    it('drops the non-global entries of that PCID only (MOV to CR3, CR4.PCIDE=1, bit 63 clear, SDM Vol. 3A §4.10.4.1)', () => {
      const tlb = new Tlb(64);
      tlb.fill(0x1000, 1, 0x10000, ALL, KB4);
      tlb.fill(0x2000, 1, 0x20000, ALL | TLB_GLOBAL, KB4);
      tlb.fill(0x3000, 2, 0x30000, ALL, KB4);
      tlb.fill(0x4000, 0, 0x40000, ALL, KB4);
      tlb.fill(0x20_0000, 1, 0x50000, ALL, SIZE_2M);
      tlb.flushPcid(1);
      expect(tlb.lookup(0x1000, ACC_READ, 1)).toBe(-1);
      expect(tlb.lookup(0x20_0000, ACC_READ, 1)).toBe(-1);
      expect(tlb.lookup(0x2000, ACC_READ, 1)).toBe(0x20000); // global: kept
      expect(tlb.lookup(0x3000, ACC_READ, 2)).toBe(0x30000); // other PCID: kept
      expect(tlb.lookup(0x4000, ACC_READ, 0)).toBe(0x40000);
      expect(tlb.validEntries()).toBe(3);
      expect(tlb.flushes).toBe(1);
    });
  });

  describe('.invlpg', () => {
    it('drops the page in the current PCID and nothing else (SDM Vol. 3A §4.10.4.1, INVLPG)', () => {
      const tlb = new Tlb(64);
      tlb.fill(0x1000, 1, 0x10000, ALL, KB4);
      tlb.fill(0x2000, 1, 0x20000, ALL, KB4);
      tlb.invlpg(0x1fff, 1);
      expect(tlb.lookup(0x1000, ACC_READ, 1)).toBe(-1);
      expect(tlb.lookup(0x2000, ACC_READ, 1)).toBe(0x20000);
      expect(tlb.invlpgs).toBe(1);
      expect(tlb.flushes).toBe(0);
    });

    it('keeps a non-global entry of another PCID and drops a global one of any PCID', () => {
      const tlb = new Tlb(64);
      tlb.fill(0x1000, 1, 0x10000, ALL, KB4);
      tlb.fill(0x2000, 1, 0x20000, ALL | TLB_GLOBAL, KB4);
      tlb.invlpg(0x1000, 2);
      tlb.invlpg(0x2000, 2);
      expect(tlb.lookup(0x1000, ACC_READ, 1)).toBe(0x10000); // "associated with the current PCID" only
      expect(tlb.lookup(0x2000, ACC_READ, 1)).toBe(-1); // "any global TLB entries ... regardless of PCID"
      expect(tlb.invlpgs).toBe(2);
    });

    it.each([
      ['a 2 MiB page (PAE, 4-level)', SIZE_2M, 0x4020_0000],
      ['a 4 MiB page (32-bit paging)', SIZE_4M, 0x8040_0000],
      ['a 1 GiB page (4-level)', SIZE_1G, 0x40_0000_0000],
      ['an upper-half 2 MiB page', SIZE_2M, -0x7780_0000_0000],
    ])('drops every cached piece of %s on INVLPG of any address inside it (SDM Vol. 3A §4.10.2.3)', (_n, size, base) => {
      const tlb = new Tlb(4096);
      const pieces = [0, 0x1000, 0x5000, size - KB4];
      for (const off of pieces) tlb.fill(base + off, 0, 0x100000 + (off % 0x100000), ALL, size);
      tlb.fill(base - KB4, 0, 0x1000, ALL, KB4); // just below the page
      tlb.fill(base + size, 0, 0x2000, ALL, KB4); // just above it
      tlb.invlpg(base + 0x3456, 0); // a piece that was never cached
      for (const off of pieces) expect(tlb.lookup(base + off, ACC_READ, 0)).toBe(-1);
      expect(tlb.lookup(base - KB4, ACC_READ, 0)).toBe(0x1000);
      expect(tlb.lookup(base + size, ACC_READ, 0)).toBe(0x2000);
      expect(tlb.validEntries()).toBe(2);
    });

    it('keeps the large pieces of another PCID unless they are global', () => {
      const tlb = new Tlb(1024);
      tlb.fill(0x20_0000, 1, 0x1000, ALL, SIZE_2M);
      tlb.fill(0x80_0000, 1, 0x2000, ALL | TLB_GLOBAL, SIZE_2M); // vpn 0x800: slot 0, apart from vpn 0x200
      tlb.invlpg(0x20_1000, 2);
      tlb.invlpg(0x80_1000, 2);
      expect(tlb.lookup(0x20_0000, ACC_READ, 1)).toBe(0x1000);
      expect(tlb.lookup(0x80_0000, ACC_READ, 1)).toBe(-1);
    });

    it('property: drops exactly the entries a scan of every slot would, whatever mix of page sizes, PCIDs and global bits is cached', () => {
      // The reference: every valid entry whose page is va's page, or a piece of a large page holding va, in the
      // PCID or global (what dropPage did by scanning all slots). dropPage looks only at the slots of the aligned
      // window of the largest large page cached.
      const sizes = [KB4, SIZE_2M, SIZE_4M, SIZE_1G];
      const fill = fc.record({
        page: fc.integer({ min: 0, max: 1 << 20 }),
        size: fc.constantFrom(...sizes),
        pcid: fc.integer({ min: 0, max: 2 }),
        global: fc.boolean(),
      });
      fc.assert(
        fc.property(
          fc.array(fill, { maxLength: 200 }),
          fc.integer({ min: 0, max: 1 << 20 }),
          fc.integer({ min: 0, max: 2 }),
          fc.constantFrom(64, 1024, 4096),
          // Where the pages are: low, in the upper half (a kernel address is a negative number, DESIGN.md), or above 2^32 pages.
          fc.constantFrom(0, -(2 ** 35), 2 ** 33),
          (fills, page, pcid, size, at) => {
            const tlb = new Tlb(size);
            for (const f of fills) tlb.fill((at + f.page) * KB4, f.pcid, 0x1000, ALL | (f.global ? TLB_GLOBAL : 0), f.size);
            const vpn = at + page;
            const want: boolean[] = [];
            for (let j = 0; j < size; j++) {
              const d = tlb.data[j]!;
              const valid = (d & TLB_VALID) !== 0;
              const mine = tlb.pcid[j] === pcid || (d & TLB_GLOBAL) !== 0;
              const holds = (d & TLB_LARGE) !== 0 ? vpn >= tlb.largeBase[j]! && vpn < tlb.largeBase[j]! + tlb.largePages[j]! : tlb.tag[j] === vpn;
              want.push(valid && !(mine && holds));
            }
            tlb.dropPage(vpn * KB4, pcid);
            expect([...tlb.data].map((d) => (d & TLB_VALID) !== 0)).toEqual(want);
          },
        ),
        { numRuns: 300 },
      );
    });
  });

  describe('.dropPage after any history', () => {
    it('drops every piece of a large page smaller than a group of slots, the last slot of its window included', () => {
      // A 'large' page of 2 or 8 pages (fill accepts any power of two): its window is under a group of 32 slots.
      for (const [pages, size] of [
        [2, 64],
        [8, 64],
        [2, 8],
        [8, 8],
        [2, 2],
      ] as const) {
        const tlb = new Tlb(size);
        const base = 8 * 40; // aligned to both page sizes
        for (let p = 0; p < pages; p++) tlb.fill((base + p) * KB4, 0, 0x1000, ALL, pages * KB4);
        tlb.fill((base + pages) * KB4, 0, 0x1000, ALL, KB4); // the next page, a 4 KiB one, stays (when its slot is not a piece's)
        tlb.dropPage(base * KB4, 0);
        for (let p = 0; p < pages; p++) expect(tlb.lookup((base + p) * KB4, 0, 0), `piece ${p} of ${pages} in ${size} slots`).toBe(-1);
        if (pages < size) expect(tlb.lookup((base + pages) * KB4, 0, 0)).not.toBe(-1);
      }
    });

    it('property: drops what a scan of every slot would, after fills, drops and flushes of every kind in any order', () => {
      // dropPage keeps per-group counts of large pieces to skip groups: fills that replace pieces, drops, and full,
      // keep-global and per-PCID flushes must all keep them right, or a piece is missed. Small TLBs and 'large' pages
      // of a few 4 KiB pages (which fill accepts) take its slot-by-slot path for windows under a group; with `dense`,
      // the pages are within 4 TLB sizes, so that such a window often holds several pieces.
      const sizes = [KB4, 2 * KB4, 8 * KB4, 32 * KB4, SIZE_2M, SIZE_4M, SIZE_1G];
      const op = fc.oneof(
        fc.record({
          kind: fc.constant('fill' as const),
          page: fc.integer({ min: 0, max: 1 << 14 }),
          size: fc.constantFrom(...sizes),
          pcid: fc.integer({ min: 0, max: 2 }),
          global: fc.boolean(),
        }),
        fc.record({ kind: fc.constant('drop' as const), page: fc.integer({ min: 0, max: 1 << 14 }), pcid: fc.integer({ min: 0, max: 2 }) }),
        fc.record({ kind: fc.constant('flushAll' as const), keepGlobal: fc.boolean() }),
        fc.record({ kind: fc.constant('flushPcid' as const), pcid: fc.integer({ min: 0, max: 2 }) }),
      );
      fc.assert(
        fc.property(
          fc.array(op, { maxLength: 300 }),
          fc.constantFrom(1, 2, 8, 16, 64, 1024, 4096),
          fc.constantFrom(0, -(2 ** 35)),
          fc.boolean(),
          fc.boolean(),
          (ops, size, at, dense, smallOnly) => {
            const tlb = new Tlb(size);
            const pageOf = (p: number): number => at + (dense ? p % (4 * size) : p);
            // `smallOnly`: no page over 32 KiB, so that the window stays under a group of a TLB of 8 or more slots.
            const sizeOf = (bytes: number): number => (smallOnly && bytes > 32 * KB4 ? 2 * KB4 : bytes);
            for (const o of ops) {
              if (o.kind === 'fill') tlb.fill(pageOf(o.page) * KB4, o.pcid, 0x1000, ALL | (o.global ? TLB_GLOBAL : 0), sizeOf(o.size));
              else if (o.kind === 'flushAll') tlb.flushAll(o.keepGlobal);
              else if (o.kind === 'flushPcid') tlb.flushPcid(o.pcid);
              else {
                const vpn = pageOf(o.page);
                const want: boolean[] = [];
                for (let j = 0; j < size; j++) {
                  const d = tlb.data[j]!;
                  const mine = tlb.pcid[j] === o.pcid || (d & TLB_GLOBAL) !== 0;
                  const holds = (d & TLB_LARGE) !== 0 ? vpn >= tlb.largeBase[j]! && vpn < tlb.largeBase[j]! + tlb.largePages[j]! : tlb.tag[j] === vpn;
                  want.push((d & TLB_VALID) !== 0 && !(mine && holds));
                }
                tlb.dropPage(vpn * KB4, o.pcid);
                expect([...tlb.data].map((d) => (d & TLB_VALID) !== 0)).toEqual(want);
              }
            }
          },
        ),
        { numRuns: 400 },
      );
    });
  });

  describe('against a reference model', () => {
    /**
     * The reference: a Map keyed by (pcid, vpn) holding what the SDM lets a TLB remember (§4.10.2-4.10.4.1).
     * The TLB may forget an entry only if a later fill went to the same direct-mapped slot (an eviction, which
     * §4.10.2.2 allows at any time); it may never hit with a translation, or rights, that no live entry has.
     */
    interface ModelEntry {
      pcid: number;
      vpn: number;
      host: number;
      flags: number;
      base: number; // first vpn of the (large) page
      pages: number;
      seq: number; // when it was filled
    }
    const SIZE = 16;
    const vpnArb = fc.oneof(
      fc.constantFrom(0, 1, 2, 16, 17, 0x200, 0x201, 0x210, 0x3ff, -1, -2, -0x200, -17, 2 ** 40 + 3),
      fc.integer({ min: -40, max: 40 }),
      fc.integer({ min: -600, max: 1100 }),
    );
    const flagsArb = fc.integer({ min: 0, max: 0xff }).map((f) => f & (ALL | TLB_GLOBAL));
    const accessArb = fc.constantFrom(...KINDS.map((k) => k[1]));
    const pcidArb = fc.integer({ min: 0, max: 2 });
    const op = fc.oneof(
      {
        weight: 5,
        arbitrary: fc.record({
          t: fc.constant('fill' as const),
          vpn: vpnArb,
          pcid: pcidArb,
          host: fc.integer({ min: 0, max: 0xfffff }),
          flags: flagsArb,
          large: fc.boolean(),
          off: fc.integer({ min: 0, max: 0xfff }),
        }),
      },
      {
        weight: 6,
        arbitrary: fc.record({
          t: fc.constant('lookup' as const),
          vpn: vpnArb,
          pcid: pcidArb,
          access: accessArb,
          off: fc.integer({ min: 0, max: 0xfff }),
        }),
      },
      { weight: 1, arbitrary: fc.record({ t: fc.constant('flushAll' as const), keepGlobal: fc.boolean() }) },
      { weight: 1, arbitrary: fc.record({ t: fc.constant('flushPcid' as const), pcid: pcidArb }) },
      {
        weight: 2,
        arbitrary: fc.record({
          t: fc.constant('invlpg' as const),
          vpn: vpnArb,
          pcid: pcidArb,
          off: fc.integer({ min: 0, max: 0xfff }),
        }),
      },
    );

    it('never hits without a live model entry that grants the access, and misses only after an eviction', () => {
      fc.assert(
        fc.property(fc.array(op, { minLength: 10, maxLength: 150, size: 'max' }), (ops) => {
          const tlb = new Tlb(SIZE);
          const model = new Map<string, ModelEntry>();
          const slotFilled = new Map<number, number>(); // slot -> seq of its last fill
          let seq = 0;
          let lookups = 0;
          let hits = 0;
          let flushes = 0;
          let invlpgs = 0;
          for (const o of ops) {
            seq++;
            switch (o.t) {
              case 'fill': {
                const pages = o.large ? SIZE_2M / KB4 : 1;
                const va = o.vpn * KB4 + o.off;
                tlb.fill(va, o.pcid, o.host * KB4, o.flags, pages * KB4);
                const base = Math.floor(o.vpn / pages) * pages;
                model.set(`${o.pcid}:${o.vpn}`, {
                  pcid: o.pcid,
                  vpn: o.vpn,
                  host: o.host * KB4,
                  flags: o.flags,
                  base,
                  pages,
                  seq,
                });
                slotFilled.set(o.vpn & (SIZE - 1), seq);
                break;
              }
              case 'lookup': {
                lookups++;
                const got = tlb.lookup(o.vpn * KB4 + o.off, o.access, o.pcid);
                const need = TLB_NEED[o.access]! & ~TLB_VALID;
                const usable = [...model.values()].filter(
                  (e) => e.vpn === o.vpn && (e.pcid === o.pcid || (e.flags & TLB_GLOBAL) !== 0) && (e.flags & need) === need,
                );
                if (got >= 0) {
                  hits++;
                  // A hit must be one of the translations the model still holds, with the rights it needs.
                  expect(usable.map((e) => e.host + o.off)).toContain(got);
                } else {
                  // A miss is allowed only if every usable entry was evicted by a later fill to its slot.
                  for (const e of usable) expect(slotFilled.get(o.vpn & (SIZE - 1))!).toBeGreaterThan(e.seq);
                }
                break;
              }
              case 'flushAll':
                flushes++;
                tlb.flushAll(o.keepGlobal);
                for (const [k, e] of model) if (!o.keepGlobal || (e.flags & TLB_GLOBAL) === 0) model.delete(k);
                break;
              case 'flushPcid':
                flushes++;
                tlb.flushPcid(o.pcid);
                for (const [k, e] of model) if (e.pcid === o.pcid && (e.flags & TLB_GLOBAL) === 0) model.delete(k);
                break;
              case 'invlpg':
                invlpgs++;
                tlb.invlpg(o.vpn * KB4 + o.off, o.pcid);
                for (const [k, e] of model) {
                  const covers = o.vpn >= e.base && o.vpn < e.base + e.pages;
                  if (covers && (e.pcid === o.pcid || (e.flags & TLB_GLOBAL) !== 0)) model.delete(k);
                }
                break;
            }
          }
          expect(tlb.hits).toBe(hits);
          expect(tlb.hits + tlb.misses).toBe(lookups);
          expect(tlb.flushes).toBe(flushes);
          expect(tlb.invlpgs).toBe(invlpgs);
          expect(tlb.validEntries()).toBeLessThanOrEqual(Math.min(SIZE, model.size));
        }),
        { seed: 0x71b, numRuns: 300 },
      );
    });
  });
});
