import { GP_VECTOR, GuestAbort, MODE_LEGACY32, MODE_LONG4, MODE_PAE, PAGE_SIZE, PT_PRESENT, PT_USER, PT_WRITABLE } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { FAULT_COW, FAULT_DEMAND_ZERO, FAULT_SIGSEGV, FAULT_WP_REUSE, FAULT_ZERO_PAGE } from '../../src/os/stats.js';
import { KernelPanic } from '../../src/os/kernel.js';
import { PROT_READ, PROT_WRITE, VMA_ANON } from '../../src/os/vma.js';
import { boot, isFree, tableFrames, user } from '../helpers.js';

const RW = PROT_READ | PROT_WRITE;

describe('Kernel', () => {
  describe('.fork', () => {
    it('gives exactly one COW fault per page the child writes, and write-protects both sides', () => {
      // The parent writes 8 new pages: 8 demand-zero faults. fork copies the 8 ptes (the area has anonymous
      // pages, so copy_page_range runs) and clears R/W in the parent's ptes and the child's copies. The child
      // writes 3 pages: 3 COW faults (each page has 2 references, so it is copied). The child exits, which
      // drops its references: every parent page is back to one reference. The parent then writes all 8:
      // 8 write-protect faults resolved in place (wp_page_reuse), no copy. Total 8 + 3 + 8 = 19.
      const { k, v } = boot(MODE_LONG4);
      const p = k.createProcess(v, 'parent');
      k.switchTo(v, p);
      const base = k.mmap(v, p, null, 8 * PAGE_SIZE, RW, VMA_ANON);
      user(v, () => {
        for (let i = 0; i < 8; i++) v.write(base + i * PAGE_SIZE, 4, i + 1);
      });
      expect(k.stats.faults[FAULT_DEMAND_ZERO]).toBe(8);
      const child = k.fork(v, p);
      for (let i = 0; i < 8; i++) {
        expect(k.inspectPte(p, base + i * PAGE_SIZE)!.lo & PT_WRITABLE).toBe(0);
        expect(k.inspectPte(child, base + i * PAGE_SIZE)!.lo & PT_WRITABLE).toBe(0);
      }
      k.switchTo(v, child);
      user(v, () => {
        for (let i = 0; i < 3; i++) v.write(base + i * PAGE_SIZE, 4, 100 + i);
      });
      expect(k.stats.faults[FAULT_COW]).toBe(3);
      k.exit(v, child);
      k.switchTo(v, p);
      const seen = user(v, () => {
        const s: number[] = [];
        for (let i = 0; i < 8; i++) {
          s.push(v.read(base + i * PAGE_SIZE, 4));
          v.write(base + i * PAGE_SIZE, 4, 200 + i);
        }
        return s;
      });
      expect(seen).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      expect(k.stats.faults[FAULT_WP_REUSE]).toBe(8);
      expect(k.stats.faults[FAULT_COW]).toBe(3);
      expect(k.stats.pageFaults).toBe(19);
      expect(k.events.length).toBe(19);
    });
  });

  describe('.exec', () => {
    it('frees every page-table page of the old image, and they come back in use', () => {
      // In long4 an image with text at 0x400000 and a stack under 0x7ffffffff000 uses 7 page-table pages:
      // the PML4, and a PDPT, a PD and a PT for each of the two places. exec builds the new address space,
      // switches CR3 to it, then tears the old one down: 7 tables freed (1 PML4, 2 PDPT, 2 PD, 2 PT). The
      // allocator is LIFO, so the new image's first faults get those frames back, as tables or data pages.
      const { k, v } = boot(MODE_LONG4);
      const p = k.createProcess(v, 'sh');
      k.switchTo(v, p);
      const image = { path: '/bin/a', textPages: 2, dataPages: 1, bssPages: 1, stackPages: 1 };
      k.exec(v, p, image);
      const touchAll = (): void =>
        user(v, () => {
          v.touch(0x400000, 16);
          v.write(0x400000 + 2 * PAGE_SIZE, 4, 1);
          v.write(0x400000 + 3 * PAGE_SIZE, 4, 2);
          v.write(0x7ffffffff000 - 8, 4, 3);
        });
      touchAll();
      const old = tableFrames(k, p.root);
      expect(old.length).toBe(7);
      const freedBefore = Array.from(k.stats.tablesFreed);
      k.exec(v, p, { ...image, path: '/bin/b' });
      const freed = Array.from(k.stats.tablesFreed).map((n, i) => n - freedBefore[i]!);
      expect(freed.slice(1, 5)).toEqual([2, 2, 2, 1]);
      for (const f of old) expect(isFree(k, f)).toBe(true);
      touchAll();
      for (const f of old) expect(isFree(k, f)).toBe(false);
      expect(tableFrames(k, p.root).length).toBe(7);
    });
  });

  describe('.mprotect', () => {
    it('issues one INVLPG per page on each vCPU that runs the process, up to 33 pages', () => {
      // 8 written pages made read-only: 8 ptes lose R/W, so flush_tlb_range runs over 8 pages (<= 33):
      // INVLPG of each page on vCPU 0, and by IPI on vCPU 1, where a thread of the process runs: 8 + 8.
      const { k, m } = boot(MODE_LONG4, { vcpus: 2 });
      const [v0, v1] = m.vcpus as [(typeof m.vcpus)[0], (typeof m.vcpus)[0]];
      const p = k.createProcess(v0, 'gc');
      k.switchTo(v0, p);
      k.switchTo(v1, p);
      const base = k.mmap(v0, p, null, 8 * PAGE_SIZE, RW, VMA_ANON);
      user(v0, () => {
        for (let i = 0; i < 8; i++) v0.write(base + i * PAGE_SIZE, 4, i);
      });
      const i0 = v0.tlb.invlpgs;
      const i1 = v1.tlb.invlpgs;
      k.mprotect(v0, p, base, 8 * PAGE_SIZE, PROT_READ);
      expect(v0.tlb.invlpgs - i0).toBe(8);
      expect(v1.tlb.invlpgs - i1).toBe(8);
      expect(k.stats.shootdowns).toBe(1);
      // Raising the rights of a private area makes the ptes of its exclusive anonymous pages writable at
      // once (change_pte_range: MM_CP_TRY_CHANGE_WRITABLE, can_change_pte_writable), and a raised R/W is
      // flushed too (x86 pte_needs_flush): 8 more INVLPGs on each vCPU, a second shootdown.
      k.mprotect(v0, p, base, 8 * PAGE_SIZE, RW);
      expect(v0.tlb.invlpgs - i0).toBe(16);
      expect(v1.tlb.invlpgs - i1).toBe(16);
      expect(k.stats.shootdowns).toBe(2);
      // A write now needs no fault.
      user(v0, () => v0.write(base, 4, 9));
      expect(k.stats.faults[FAULT_WP_REUSE]).toBe(0);
      expect(k.stats.pageFaults).toBe(8);
    });

    it('flushes the whole TLB instead above 33 pages', () => {
      const { k, v } = boot(MODE_LONG4);
      const p = k.createProcess(v, 'big');
      k.switchTo(v, p);
      const base = k.mmap(v, p, null, 40 * PAGE_SIZE, RW, VMA_ANON);
      user(v, () => {
        for (let i = 0; i < 40; i++) v.write(base + i * PAGE_SIZE, 4, i);
      });
      const inv = v.tlb.invlpgs;
      const fl = v.tlb.flushes;
      k.mprotect(v, p, base, 40 * PAGE_SIZE, PROT_READ);
      expect(v.tlb.invlpgs - inv).toBe(0);
      expect(v.tlb.flushes - fl).toBe(1);
    });

    it('makes a write to a read-only area a SIGSEGV', () => {
      const { k, v } = boot(MODE_PAE);
      const p = k.createProcess(v, 'ro');
      k.switchTo(v, p);
      const base = k.mmap(v, p, null, PAGE_SIZE, PROT_READ, VMA_ANON);
      expect(() => user(v, () => v.write(base, 4, 1))).toThrow(/SIGSEGV/);
      user(v, () => v.read(base, 4));
      expect(k.stats.faults[FAULT_SIGSEGV]).toBe(1);
      expect(k.stats.faults[FAULT_ZERO_PAGE]).toBe(1);
      expect(k.events.at(0)).toMatchObject({ address: base, errorCode: 2 | 4, kind: 'sigsegv' });
    });
  });

  describe('.generalProtection', () => {
    it('sends SIGSEGV for a user access to a non-canonical address, and panics on a #GP with no process', () => {
      // 0x800000000000 = 2^47 is not canonical in 4-level paging (bits 63:47 differ): #GP, no walk and no #PF
      // (SDM Vol. 3A §4.5.1). From user mode the handler sends SIGSEGV (Linux exc_general_protection ->
      // force_sig(SIGSEGV)); it is no page fault, so faults stay 0.
      const { k, v } = boot(MODE_LONG4);
      const p = k.createProcess(v, 'p');
      k.switchTo(v, p);
      expect(() => user(v, () => v.read(2 ** 47, 4))).toThrow(GuestAbort);
      expect(() => user(v, () => v.write(2 ** 47 + 8, 4, 1))).toThrow(/SIGSEGV: pid \d+: general protection fault at 0x800000000008/);
      expect(k.stats.generalProtection).toBe(2);
      expect(k.stats.pageFaults).toBe(0);
      // the same #GP on an idle vCPU (no user process): a kernel oops
      k.switchTo(v, null);
      expect(() => v.raise(GP_VECTOR, 0, 2 ** 47)).toThrow(KernelPanic);
      expect(k.stats.generalProtection).toBe(2);
    });
  });

  describe('personalities', () => {
    it('byte-pte-writes: updates ptes with 1-byte stores through the direct map', () => {
      // A demand-zero fault on a fresh PT writes the PT's PDE (and upper entries) and the pte. Without the
      // personality each is one 8-byte store; with it, each changed byte is its own 1-byte store.
      for (const bytes of [false, true]) {
        const { k, v } = boot(MODE_LONG4, { personalities: bytes ? ['byte-pte-writes'] : [] });
        const p = k.createProcess(v, 'x');
        k.switchTo(v, p);
        const base = k.mmap(v, p, null, PAGE_SIZE, RW, VMA_ANON);
        const sizes: number[] = [];
        const write = v.write.bind(v);
        v.write = (va: number, size: number, lo: number, hi?: number) => {
          if (v.cpl === 0) sizes.push(size); // kernel stores after boot: only page-table entries
          write(va, size, lo, hi);
        };
        user(v, () => v.write(base, 4, 7));
        const pte = k.inspectPte(p, base)!;
        expect(pte.lo & (PT_PRESENT | PT_WRITABLE | PT_USER)).toBe(PT_PRESENT | PT_WRITABLE | PT_USER);
        if (bytes) {
          expect(sizes.length).toBeGreaterThan(4);
          expect(sizes.every((s) => s === 1)).toBe(true);
        } else {
          expect(sizes.every((s) => s === 8)).toBe(true);
        }
      }
    });

    it('sparse-pdptes: leaves junk in the not-present PDPTEs of a PAE process', () => {
      // Solaris does not clear the PDPTEs it does not use. P=0, so the CPU ignores the rest (SDM Vol. 3A
      // §4.4.1: reserved bits are checked only in present PDPTEs): loading CR3 succeeds and the run works.
      const { k, v, m } = boot(MODE_PAE, { personalities: ['sparse-pdptes'] });
      const p = k.createProcess(v, 'solaris');
      k.switchTo(v, p);
      const base = k.mmap(v, p, 0x08000000, PAGE_SIZE, RW, VMA_ANON);
      user(v, () => v.write(base, 4, 5));
      const pdpte = (i: number): [number, number] => [m.memory.read32(p.root + i * 8), m.memory.read32(p.root + i * 8 + 4)];
      expect(pdpte(0)[0] & PT_PRESENT).toBe(PT_PRESENT);
      for (const i of [1, 2]) {
        const [lo, hi] = pdpte(i);
        expect(lo & PT_PRESENT).toBe(0);
        expect(lo !== 0 || hi !== 0).toBe(true);
      }
      expect(user(v, () => v.read(base, 4))).toBe(5);
      expect(() => boot(MODE_LONG4, { personalities: ['sparse-pdptes'] })).toThrow(/needs PAE/);
    });

    it('aliased-pdes: two PDEs with different rights map the same page table', () => {
      // An anonymous area goes in the arena; its page table is also mapped by a second PDE, in the alias
      // window arenaSize above, without R/W. A write through the primary is read back through the alias;
      // a write through the alias is a SIGSEGV (the alias area is read-only).
      for (const mode of [MODE_LEGACY32, MODE_PAE, MODE_LONG4]) {
        const { k, v, m } = boot(mode, { personalities: ['aliased-pdes'] });
        const L = k.layout;
        const p = k.createProcess(v, 'xen');
        k.switchTo(v, p);
        const base = k.mmap(v, p, null, 2 * PAGE_SIZE, RW, VMA_ANON);
        expect(base).toBe(L.arenaBase);
        user(v, () => v.write(base + 8, 4, 0xabcd));
        const alias = base + L.arenaSize;
        expect(user(v, () => v.read(alias + 8, 4))).toBe(0xabcd);
        const pde = (va: number): number => {
          const pte = k.inspectPte(p, va)!;
          return pte.table;
        };
        expect(pde(alias)).toBe(pde(base));
        // The PDEs themselves: find them by walking to level 2.
        const pdeValue = (va: number): number => {
          let table = p.root;
          for (let lv = L.top; lv > 2; lv--) {
            const n = mode === MODE_PAE && lv === 3 ? 4 : L.entries;
            const idx = ((Math.floor(va / 2 ** L.shift[lv]!) % n) + n) % n;
            table = m.memory.read32(table + idx * L.entrySize) & ~0xfff;
          }
          const idx = Math.floor(va / 2 ** L.shift[2]!) % L.entries;
          return m.memory.read32(table + idx * L.entrySize);
        };
        expect(pdeValue(base) & PT_WRITABLE).toBe(PT_WRITABLE);
        expect(pdeValue(alias) & PT_WRITABLE).toBe(0);
        expect(pdeValue(base) & ~0xfff).toBe(pdeValue(alias) & ~0xfff);
        expect(() => user(v, () => v.write(alias, 4, 1))).toThrow(/SIGSEGV/);
      }
    });
  });
});
