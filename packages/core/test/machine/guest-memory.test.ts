import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../src/index.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

describe('GuestMemory', () => {
  describe('.digest', () => {
    /** The digest as its definition states it (GuestMemory.digest), computed from read32 alone. */
    function byDefinition(mem: GuestMemory): string {
      const h = createHash('sha256');
      h.update('vmexit-memory/1');
      for (const s of mem.slots) h.update(`;${s.baseGfn.toString(16)}+${s.pages.toString(16)}${s.readonly ? 'r' : ''}`);
      h.update('\n');
      for (const s of mem.slots) {
        for (let gfn = s.baseGfn; gfn < s.baseGfn + s.pages; gfn++) {
          const page = Buffer.alloc(4096);
          for (let k = 0; k < 1024; k++) page.writeUInt32LE(mem.read32(gfn * 4096 + k * 4), k * 4);
          if (page.every((b) => b === 0)) continue;
          const key = Buffer.alloc(8);
          key.writeUInt32LE(gfn >>> 0, 0);
          key.writeUInt32LE(Math.floor(gfn / 2 ** 32), 4);
          h.update(key);
          h.update(createHash('sha256').update(page).digest());
        }
      }
      return h.digest('hex');
    }

    it('is SHA-256 over the slot layout and (gfn, SHA-256 of the page) of each non-zero page, in gfn order', () => {
      // The slots are given out of order, and pages are written high first: the digest takes gfn 0 first.
      const mem = new GuestMemory(0, [
        { base: 0x10000, size: 0x3000 },
        { base: 0, size: 0x1000, readonly: true },
      ]);
      for (let a = 0x12000; a < 0x13000; a += 4) mem.write32(a, (a * 7 + 3) >>> 0);
      for (let a = 0; a < 0x1000; a += 4) mem.write32(a, a ^ 0x5a5a);
      mem.write32(0x10ffc, 1);
      expect(mem.backedGfns()).toEqual([0, 0x10, 0x12]);
      expect(mem.digest()).toBe(byDefinition(mem));
      // The empty memory of that layout: the header alone.
      const empty = new GuestMemory(0, [
        { base: 0, size: 0x1000, readonly: true },
        { base: 0x10000, size: 0x3000 },
      ]);
      expect(empty.digest()).toBe(createHash('sha256').update('vmexit-memory/1;0+1r;10+3\n').digest('hex'));
    });

    it('is equal for equal memory whatever is backed: a page written back to zeros equals one never written', () => {
      const a = new GuestMemory(16 * MiB);
      const b = new GuestMemory(16 * MiB);
      a.write32(0x5000, 7);
      a.write32(0x9000, 0xdead);
      a.write32(0x5000, 0); // back to zeros: page 5 is backed, and all zeros
      b.write32(0x9000, 0xdead);
      expect(a.backedPages).toBe(2);
      expect(b.backedPages).toBe(1);
      expect(a.digest()).toBe(b.digest());
      b.write32(0x9004, 1);
      expect(a.digest()).not.toBe(b.digest());
    });

    it('differs between layouts of the same contents (the slots are part of it)', () => {
      expect(new GuestMemory(MiB).digest()).not.toBe(new GuestMemory(2 * MiB).digest());
    });

    it('costs what the written pages cost, not the RAM size: a 1 TiB guest with two pages written', () => {
      const mem = new GuestMemory(1024 * GiB);
      mem.write32(0, 1);
      mem.write32(1024 * GiB - 4 + GiB, 2); // the last word of RAM: above the MMIO hole, at 1 TiB + 1 GiB - 4
      expect(mem.backedPages).toBe(2);
      expect(mem.digest()).toBe(byDefinitionSparse(mem, [0, (1024 * GiB + GiB - 4096) / 4096]));
    });

    /** byDefinition over the listed gfns only (all others read as zeros: checked by the slot walk elsewhere). */
    function byDefinitionSparse(mem: GuestMemory, gfns: number[]): string {
      const h = createHash('sha256');
      h.update('vmexit-memory/1');
      for (const s of mem.slots) h.update(`;${s.baseGfn.toString(16)}+${s.pages.toString(16)}${s.readonly ? 'r' : ''}`);
      h.update('\n');
      for (const gfn of gfns) {
        const page = Buffer.alloc(4096);
        for (let k = 0; k < 1024; k++) page.writeUInt32LE(mem.read32(gfn * 4096 + k * 4), k * 4);
        const key = Buffer.alloc(8);
        key.writeUInt32LE(gfn >>> 0, 0);
        key.writeUInt32LE(Math.floor(gfn / 2 ** 32), 4);
        h.update(key);
        h.update(createHash('sha256').update(page).digest());
      }
      return h.digest('hex');
    }
  });

  describe('lazy backing', () => {
    it('reads zeros from pages never written, and backs a page on its first non-zero write only', () => {
      const mem = new GuestMemory(64 * GiB);
      expect(mem.slots.map((s) => [s.baseGfn * 4096, s.pages * 4096])).toEqual([
        [0, 3 * GiB],
        [4 * GiB, 61 * GiB],
      ]);
      expect(mem.read32(40 * GiB + 8)).toBe(0);
      mem.write32(40 * GiB + 8, 0); // zeros into an unbacked page: nothing to back
      expect(mem.backedPages).toBe(0);
      expect(mem.readOffset(40 * GiB)).toBeLessThan(4096); // the shared zero page
      mem.write32(40 * GiB + 8, 0x1234);
      expect(mem.backedPages).toBe(1);
      expect(mem.read32(40 * GiB + 8)).toBe(0x1234);
      expect(mem.offsetToGpa(mem.readOffset(40 * GiB + 8))).toBe(40 * GiB + 8);
      expect(mem.read32(3 * GiB + 8)).toBe(0); // the MMIO hole: no slot
      expect(mem.gpaToOffset(3 * GiB)).toBe(-1);
    });

    it('read32 and readOffset (through the map of low RAM or the gfn -> page cache) always read what was stored, whatever backs the page (property)', () => {
      // Guest pages that collide in the 64-entry cache of RAM above 4 GiB (gfn mod 64 alike), in both slots of a
      // 64 GiB guest, the last page below the MMIO hole (the last one the map of low RAM holds), and one in the
      // MMIO hole (reads 0, writes dropped). Operations: write32 (zeros too: a page stays
      // unbacked), a store through gpaToOffset (how the emulator and the vCPU store: it backs the page),
      // backGfn, and reads. A model of the words says what every read must return.
      const gfns = [5, 69, 133, 6, 3 * 262144 - 1, 3 * 262144 + 5, 4 * 262144 + 5, 4 * 262144 + 69, 40 * 262144 + 5];
      const op = fc.record({
        kind: fc.constantFrom('write32', 'store', 'back', 'read'),
        gfn: fc.constantFrom(...gfns),
        word: fc.integer({ min: 0, max: 3 }),
        value: fc.constantFrom(0, 1, 0xdeadbeef, 0x80000000),
      });
      fc.assert(
        fc.property(fc.array(op, { minLength: 1, maxLength: 40 }), (ops) => {
          const mem = new GuestMemory(64 * GiB);
          const model = new Map<number, number>();
          const mmio = (gfn: number) => gfn >= 3 * 262144 && gfn < 4 * 262144;
          for (const o of ops) {
            const pa = o.gfn * 4096 + o.word * 4;
            if (o.kind === 'write32') {
              mem.write32(pa, o.value);
              if (!mmio(o.gfn)) model.set(pa, o.value);
            } else if (o.kind === 'store') {
              const off = mem.gpaToOffset(pa);
              if (off >= 0) {
                mem.u32[off >>> 2] = o.value;
                model.set(pa, o.value);
              }
            } else if (o.kind === 'back') {
              mem.backGfn(o.gfn);
            }
            for (const g of gfns) {
              for (let w = 0; w < 4; w++) expect(mem.read32(g * 4096 + w * 4)).toBe(model.get(g * 4096 + w * 4) ?? 0);
              // readOffset: -1 for MMIO, else where the word is (the zero page's while the page is not backed).
              const off = mem.readOffset(g * 4096 + 8);
              if (mmio(g)) expect(off).toBe(-1);
              else {
                expect(off % 4096).toBe(8);
                expect(mem.u32[off >>> 2]).toBe(model.get(g * 4096 + 8) ?? 0);
                expect(off >= 4096).toBe(mem.isBacked(g));
              }
            }
          }
        }),
        { seed: 0xcace, numRuns: 300 },
      );
    });

    it('reads as its memslots say in any layout: gaps and ROM below 4 GiB, slots across 4 GiB (property)', () => {
      // The map of low RAM covers every page below the end of the RAM under 4 GiB, gaps included (the conformance
      // runner makes one 4 KiB slot per page of a vector): a gap page there must read 0 and have no offset (-1),
      // as a gpa of no slot does anywhere. A model of the words and of the slots says what each read must give.
      const PAGES = [0, 1, 255, 256, 300, 786431, 786432, 2 ** 20 - 2, 2 ** 20 - 1, 2 ** 20, 2 ** 20 + 1, 5 * 2 ** 20];
      const layout = fc
        .uniqueArray(fc.constantFrom(...PAGES), { minLength: 1, maxLength: 6 })
        .chain((starts) => fc.tuple(...starts.map((b) => fc.record({ base: fc.constant(b), pages: fc.integer({ min: 1, max: 3 }), readonly: fc.boolean() }))))
        .map((slots) => {
          // Sorted, and each cut short of the next: no overlap.
          const sorted = [...slots].sort((x, y) => x.base - y.base);
          return sorted.map((s, i) => ({ ...s, pages: Math.max(1, Math.min(s.pages, (sorted[i + 1]?.base ?? Infinity) - s.base)) }));
        });
      const op = fc.record({
        kind: fc.constantFrom('write32', 'store', 'read'),
        page: fc.constantFrom(...PAGES.flatMap((p) => [p, p + 1, p + 2])),
        value: fc.constantFrom(0, 7, 0x80000000),
      });
      fc.assert(
        fc.property(layout, fc.array(op, { maxLength: 20 }), (slots, ops) => {
          const mem = new GuestMemory(
            0,
            slots.map((s) => ({ base: s.base * 4096, size: s.pages * 4096, readonly: s.readonly })),
          );
          const slotOf = (gfn: number) => slots.find((s) => gfn >= s.base && gfn < s.base + s.pages);
          const model = new Map<number, number>();
          const probe = new Set<number>(PAGES.flatMap((p) => [p - 1, p, p + 1, p + 2, p + 3]).filter((p) => p >= 0));
          for (const o of ops) {
            const pa = o.page * 4096 + 8;
            if (o.kind === 'write32') {
              mem.write32(pa, o.value);
              if (slotOf(o.page) !== undefined) model.set(pa, o.value);
            } else if (o.kind === 'store') {
              const off = mem.gpaToOffset(pa);
              expect(off < 0).toBe(slotOf(o.page) === undefined);
              if (off >= 0) {
                mem.u32[off >>> 2] = o.value;
                model.set(pa, o.value);
              }
            }
            for (const g of probe) {
              const at = g * 4096 + 8;
              expect(mem.read32(at)).toBe(model.get(at) ?? 0);
              const off = mem.readOffset(at);
              if (slotOf(g) === undefined) expect(off).toBe(-1);
              else expect(mem.u32[off >>> 2]).toBe(model.get(at) ?? 0);
            }
          }
        }),
        { seed: 0x10a4, numRuns: 120 },
      );
    });

    it('refuses RAM over the limit', () => {
      expect(() => new GuestMemory(4 * 1024 * GiB + 4096)).toThrow(/limit/);
    });
  });
});
