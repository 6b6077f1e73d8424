import { MODE_LONG4, MODE_PAE, PAGE_SIZE, PT_ACCESSED, PT_DIRTY, PT_PRESENT, PT_WRITABLE, type Vcpu } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { USER_TABLE } from '../../src/os/pte.js';
import type { Kernel, Process } from '../../src/os/kernel.js';
import { PROT_NONE, PROT_READ, PROT_WRITE, VMA_ANON } from '../../src/os/vma.js';
import { boot, user } from '../helpers.js';
import { recordStores, type Store } from './stores.js';

/*
 * The stores the guest kernel makes to page-table entries, one by one, against the Linux (6.15, x86-64)
 * functions that make them. Under shadow paging each store to a shadowed guest page table is an emulated
 * write, so the number and the order of these stores are exit counts: they must be Linux's.
 */

const RW = PROT_READ | PROT_WRITE;
const MiB2 = 2 * 1024 * 1024;

/** An 8-byte store (x86-64 `set_pte` and the atomics: one `mov`, `xchg` or `cmpxchg` of the whole entry). */
function st(pa: number, lo: number, hi = 0): Store {
  return { pa, size: 8, lo: lo >>> 0, hi: hi >>> 0 };
}

/** A 4-byte store (a half of a PAE entry). */
function half(pa: number, value: number): Store {
  return { pa, size: 4, lo: value >>> 0, hi: 0 };
}

/** The guest-physical address of the entry of `level` that maps `va` in `proc` (read from guest memory directly). */
function entryPa(k: Kernel, proc: Process, va: number, level: number): number {
  const L = k.layout;
  const mem = k.machine.memory;
  let table = proc.root;
  for (let lv = L.top; ; lv--) {
    const pa = table + (Math.floor(va / 2 ** L.shift[lv]!) % L.entries) * L.entrySize;
    if (lv === level) return pa;
    const lo = mem.read32(pa);
    expect(lo & PT_PRESENT).toBe(PT_PRESENT);
    table = (lo & ~0xfff) + (mem.read32(pa + 4) & 0xfffff) * 2 ** 32;
  }
}

/** The current value of the pte of `va` (low half). */
function pteLo(k: Kernel, proc: Process, va: number): number {
  return k.inspectPte(proc, va)!.lo >>> 0;
}

function setup(pages: number, mode: number = MODE_LONG4): { k: Kernel; v: Vcpu; p: Process; base: number } {
  const { k, v } = boot(mode);
  const p = k.createProcess(v, 'p');
  k.switchTo(v, p);
  const base = k.mmap(v, p, null, pages * PAGE_SIZE, RW, VMA_ANON);
  return { k, v, p, base };
}

describe('pte stores', () => {
  describe('mprotect (mm/mprotect.c change_pte_range)', () => {
    it('stores every present pte twice: 0 (ptep_modify_prot_start), then the new value (ptep_modify_prot_commit), changed or not', () => {
      // Page 0 is written (a writable anonymous pte), page 1 read (the zero page, read-only), page 2 never
      // touched (pte_none: change_pte_range skips it). mprotect(PROT_READ): for each present pte,
      // ptep_modify_prot_start is ptep_get_and_clear (x86-64 native: an xchg that stores 0), then
      // ptep_modify_prot_commit is set_pte_at of pte_modify(old, PAGE_READONLY). Page 1's pte comes back the
      // same, and is stored twice all the same: 4 stores.
      const { k, v, p, base } = setup(3);
      user(v, () => {
        v.write(base, 4, 1);
        v.read(base + PAGE_SIZE, 4);
      });
      const pte0 = pteLo(k, p, base);
      const pte1 = pteLo(k, p, base + PAGE_SIZE);
      const a0 = entryPa(k, p, base, 1);
      const a1 = a0 + 8;
      const log = recordStores(k, v);
      k.mprotect(v, p, base, 3 * PAGE_SIZE, PROT_READ);
      const hiXd = k.inspectPte(p, base)!.hi >>> 0;
      expect(log).toEqual([st(a0, 0), st(a0, pte0 & ~PT_WRITABLE, hiXd), st(a1, 0), st(a1, pte1, hiXd)]);
    });

    it('stores a PROT_NONE pte (x86 pte_present) twice too, and flushes nothing when it was not present', () => {
      // pte_present is true for a PROT_NONE pte, so change_pte_range rewrites it; pte_needs_flush(old, new)
      // is false for an old pte without _PAGE_PRESENT (the TLB holds no translation of it): no INVLPG.
      const { k, v, p, base } = setup(1);
      user(v, () => v.write(base, 4, 1));
      k.mprotect(v, p, base, PAGE_SIZE, PROT_NONE);
      const a0 = entryPa(k, p, base, 1);
      const none = pteLo(k, p, base);
      const invlpgs = k.stats.invlpgs;
      const log = recordStores(k, v);
      k.mprotect(v, p, base, PAGE_SIZE, RW);
      expect(log.map((s) => s.pa)).toEqual([a0, a0]);
      expect(log[0]!.lo).toBe(0);
      expect(log[1]!.lo).toBe(((none & ~0x400) | PT_PRESENT | PT_WRITABLE) >>> 0);
      expect(k.stats.invlpgs - invlpgs).toBe(0);
    });

    it('flushes the range of the ptes that need it, not the whole area (tlb_flush_pte_range, tlb_end_vma)', () => {
      // An area of 40 pages of which pages 3 and 4 are present: mprotect(PROT_READ) gathers [page 3, page 5)
      // in the mmu_gather (pte_needs_flush: R/W cleared) and flush_tlb_mm_range flushes 2 pages with INVLPG;
      // flushing the whole area (40 pages, over tlb_single_page_flush_ceiling) would be a full flush.
      const { k, v, p, base } = setup(40);
      user(v, () => {
        v.write(base + 3 * PAGE_SIZE, 4, 1);
        v.write(base + 4 * PAGE_SIZE, 4, 1);
      });
      const before = { invlpgs: k.stats.invlpgs, full: k.stats.fullFlushes };
      k.mprotect(v, p, base, 40 * PAGE_SIZE, PROT_READ);
      expect(k.stats.invlpgs - before.invlpgs).toBe(2);
      expect(k.stats.fullFlushes - before.full).toBe(0);
    });
  });

  describe('fork (mm/memory.c copy_page_range)', () => {
    it('allocates the child tables first (p?d_alloc, pte_alloc), then per pte: ptep_set_wrprotect in the parent, set_pte_at in the child', () => {
      // copy_pud_range, copy_pmd_range and copy_pte_range each allocate the child's table of their level
      // (pud_alloc, pmd_alloc, pte_alloc_map_lock: one store each, p4d_populate/pud_populate/pmd_populate)
      // before they look at the parent's entries below; copy_present_pte then write-protects the parent's
      // pte (ptep_set_wrprotect: one cmpxchg of the whole pte) and sets the child's, old (pte_mkold).
      const { k, v, p, base } = setup(2);
      user(v, () => {
        v.write(base, 4, 1);
        v.write(base + PAGE_SIZE, 4, 2);
      });
      const pte0 = pteLo(k, p, base);
      const pte1 = pteLo(k, p, base + PAGE_SIZE);
      const hi = k.inspectPte(p, base)!.hi >>> 0;
      const log = recordStores(k, v);
      const child = k.fork(v, p);
      const at = (proc: Process, va: number, level: number): number => entryPa(k, proc, va, level);
      const tableOf = (proc: Process, level: number): number => {
        const e = k.machine.memory.read32(at(proc, base, level + 1));
        return e & ~0xfff;
      };
      expect(log).toEqual([
        st(at(child, base, 4), tableOf(child, 3) | USER_TABLE),
        st(at(child, base, 3), tableOf(child, 2) | USER_TABLE),
        st(at(child, base, 2), tableOf(child, 1) | USER_TABLE),
        st(at(p, base, 1), pte0 & ~PT_WRITABLE, hi),
        st(at(child, base, 1), pte0 & ~PT_WRITABLE & ~PT_ACCESSED, hi),
        st(at(p, base + PAGE_SIZE, 1), pte1 & ~PT_WRITABLE, hi),
        st(at(child, base + PAGE_SIZE, 1), pte1 & ~PT_WRITABLE & ~PT_ACCESSED, hi),
      ]);
    });

    it('gives the child a page table for each of the parent page tables under an anonymous area, even one with no pte present', () => {
      // A 4 MiB area (less a page) across two page tables; a page is written in each, then the second one is unmapped: its
      // page table stays (the rest of the area uses it) with no pte present. copy_pmd_range calls
      // copy_pte_range for every present parent PDE, and copy_pte_range allocates the child's page table
      // before it reads a pte: the child gets both page tables.
      // 1023 pages: mmap(NULL) puts the area's end at mmap_base, 0x7ffff7fff000, a page below a 2 MiB
      // boundary (mmap.test.ts), so it starts at 0x7ffff7c00000, 2 MiB aligned, and spans two page tables.
      const { k, v, p, base } = setup(2 * 512 - 1);
      expect(base).toBe(0x7ffff7c00000);
      expect(base % MiB2).toBe(0);
      user(v, () => {
        v.write(base, 4, 1);
        v.write(base + MiB2, 4, 2);
      });
      k.munmap(v, p, base + MiB2, PAGE_SIZE);
      expect(k.tableFor(v, p, base + MiB2, 1, false)).toBeGreaterThanOrEqual(0);
      const child = k.fork(v, p);
      expect(child.tables[1]).toBe(2);
      expect(k.tableFor(v, child, base + MiB2 + PAGE_SIZE, 1, false)).toBeGreaterThanOrEqual(0);
    });
  });

  describe('faults (mm/memory.c)', () => {
    it('do_anonymous_page: one set_pte_at; a write to the zero page is wp_page_copy: ptep_clear_flush (0, INVLPG), then set_pte_at', () => {
      const { k, v, p, base } = setup(1);
      user(v, () => v.read(base, 4));
      const pa = entryPa(k, p, base, 1);
      const zero = pteLo(k, p, base);
      expect(zero >>> 12).toBe(k.zeroFrame);
      const log = recordStores(k, v);
      const invlpgs = k.stats.invlpgs;
      user(v, () => v.write(base, 4, 1));
      const now = pteLo(k, p, base);
      expect(log.map((s) => [s.pa, s.lo])).toEqual([
        [pa, 0],
        [pa, now],
      ]);
      expect(now & (PT_WRITABLE | PT_DIRTY | PT_ACCESSED)).toBe(PT_WRITABLE | PT_DIRTY | PT_ACCESSED);
      expect(k.stats.invlpgs - invlpgs).toBe(1);
    });

    it('wp_page_reuse: one store (ptep_set_access_flags) making the pte writable, dirty and young', () => {
      const { k, v, p, base } = setup(1);
      user(v, () => v.write(base, 4, 1));
      const child = k.fork(v, p);
      k.exit(v, child);
      k.switchTo(v, p);
      const old = pteLo(k, p, base);
      const log = recordStores(k, v);
      user(v, () => v.write(base, 4, 2));
      expect(log.map((s) => [s.pa, s.lo])).toEqual([[entryPa(k, p, base, 1), (old | PT_WRITABLE | PT_DIRTY | PT_ACCESSED) >>> 0]]);
    });
  });

  describe('munmap (mm/memory.c zap_pte_range, mm/memory.c free_pgtables)', () => {
    it('clears each present pte once (ptep_get_and_clear_full), then the entries of the tables freed, lowest level first', () => {
      const { k, v, p, base } = setup(2);
      user(v, () => {
        v.write(base, 4, 1);
        v.write(base + PAGE_SIZE, 4, 1);
      });
      const addrs = [entryPa(k, p, base, 1), entryPa(k, p, base + PAGE_SIZE, 1), entryPa(k, p, base, 2), entryPa(k, p, base, 3), entryPa(k, p, base, 4)];
      const log = recordStores(k, v);
      k.munmap(v, p, base, 2 * PAGE_SIZE);
      expect(log).toEqual(addrs.map((pa) => st(pa, 0)));
    });
  });

  describe('PAE (arch/x86/include/asm/pgtable-3level.h): 8-byte entries written by a 32-bit kernel', () => {
    it('set_pte stores the high half, then the low half (native_set_pte); pmd_populate is one store (set_pmd: pxx_xchg64)', () => {
      // The first write fault: __pte_alloc's pmd_populate (one cmpxchg8b of the PDE), then
      // do_anonymous_page's set_pte_at: two 4-byte stores, the high half (XD) first, so that the pte becomes
      // present only with its high half in place.
      const { k, v, p, base } = setup(1, MODE_PAE);
      const log = recordStores(k, v);
      user(v, () => v.write(base, 4, 1));
      const pde = entryPa(k, p, base, 2);
      const pte = entryPa(k, p, base, 1);
      const e = k.inspectPte(p, base)!;
      expect(e.hi >>> 0).toBe(0x80000000); // XD: the area is not executable
      expect(log).toEqual([st(pde, k.machine.memory.read32(pde)), half(pte + 4, e.hi), half(pte, e.lo)]);
    });

    it('mprotect: ptep_get_and_clear is one store of 0 (cmpxchg8b), set_pte two halves', () => {
      const { k, v, p, base } = setup(1, MODE_PAE);
      user(v, () => v.write(base, 4, 1));
      const pte = entryPa(k, p, base, 1);
      const e = k.inspectPte(p, base)!;
      const log = recordStores(k, v);
      k.mprotect(v, p, base, PAGE_SIZE, PROT_READ);
      expect(log).toEqual([st(pte, 0), half(pte + 4, e.hi), half(pte, e.lo & ~PT_WRITABLE)]);
    });

    it('fork: ptep_set_wrprotect is a cmpxchg of a long, the low half; the child gets its PDE, then its pte in halves', () => {
      // The PD is preallocated (preallocate_pmds), so pmd_alloc allocates nothing; pte_alloc_map_lock does.
      const { k, v, p, base } = setup(1, MODE_PAE);
      user(v, () => v.write(base, 4, 1));
      const e = k.inspectPte(p, base)!;
      const log = recordStores(k, v);
      const child = k.fork(v, p);
      const cpde = entryPa(k, child, base, 2);
      const cpte = entryPa(k, child, base, 1);
      // (after pgd_alloc's stores to the child's PDPT, which are not copy_page_range's)
      expect(log.filter((x) => Math.floor(x.pa / PAGE_SIZE) !== child.root / PAGE_SIZE)).toEqual([
        st(cpde, k.machine.memory.read32(cpde)),
        half(entryPa(k, p, base, 1), e.lo & ~PT_WRITABLE),
        half(cpte + 4, e.hi),
        half(cpte, e.lo & ~PT_WRITABLE & ~PT_ACCESSED),
      ]);
    });

    it('a COW fault: ptep_clear_flush is one store of 0, the new pte two halves', () => {
      const { k, v, p, base } = setup(1, MODE_PAE);
      user(v, () => v.read(base, 4));
      const pte = entryPa(k, p, base, 1);
      const log = recordStores(k, v);
      user(v, () => v.write(base, 4, 1));
      const e = k.inspectPte(p, base)!;
      expect(log).toEqual([st(pte, 0), half(pte + 4, e.hi), half(pte, e.lo)]);
    });

    it('munmap: a pte cleared by ptep_get_and_clear (one store), the PDE by pmd_clear (the low half, then the high half)', () => {
      const { k, v, p, base } = setup(1, MODE_PAE);
      user(v, () => v.write(base, 4, 1));
      const pte = entryPa(k, p, base, 1);
      const pde = entryPa(k, p, base, 2);
      const log = recordStores(k, v);
      k.munmap(v, p, base, PAGE_SIZE);
      // (the PD stays: PAE keeps its preallocated PDs until the process ends)
      expect(log).toEqual([st(pte, 0), half(pde, 0), half(pde + 4, 0)]);
    });

    it('exit: ptes cleared by ptep_get_and_clear_full of a full mm (pte_clear: the low half, then the high half)', () => {
      const { k, v, p, base } = setup(1, MODE_PAE);
      user(v, () => v.write(base, 4, 1));
      const pte = entryPa(k, p, base, 1);
      const pde = entryPa(k, p, base, 2);
      const log = recordStores(k, v);
      k.exit(v, p);
      // the pte (zap_pte_range), then the PDE (free_pgtables: pmd_clear); the PDPTEs cleared after are set_pud's, one store each
      const ptOrPd = [pte, pde].map((a) => Math.floor(a / PAGE_SIZE));
      expect(log.filter((x) => ptOrPd.includes(Math.floor(x.pa / PAGE_SIZE)))).toEqual([half(pte, 0), half(pte + 4, 0), half(pde, 0), half(pde + 4, 0)]);
    });
  });
});
