import { ACC_FETCH, MODE_LONG4, PAGE_SIZE, PFERR_FETCH, PFERR_PRESENT, PT_PRESENT, PT_WRITABLE } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { FAULT_FILE, FAULT_SIGSEGV, FAULT_WP_REUSE, FAULT_ZERO_PAGE } from '../../src/os/stats.js';
import { PROT_NONE, PROT_READ, PROT_WRITE, VMA_ANON, VMA_FILE_SHARED } from '../../src/os/vma.js';
import { boot, user } from '../helpers.js';

/*
 * Cases where the guest kernel must do what Linux does to its page tables and TLBs, each with the Linux
 * function it follows (mm/mprotect.c, mm/memory.c, arch/x86/mm/fault.c, include/asm-generic/tlb.h).
 */

const RW = PROT_READ | PROT_WRITE;

describe('Linux fidelity', () => {
  it('mprotect(PROT_READ|PROT_WRITE) makes an exclusive anonymous page writable and flushes it everywhere (change_pte_range, can_change_pte_writable)', () => {
    // The write barrier of mprotect-storm: the page is made read-only, the SIGSEGV handler makes it
    // writable again. Linux (MM_CP_TRY_CHANGE_WRITABLE) sets R/W on the pte of a PageAnonExclusive page,
    // and pte_needs_flush (R/W changed) flushes it: INVLPG here, a shootdown to the reader's vCPU. The
    // retried write then needs no fault.
    const { k, m } = boot(MODE_LONG4, { vcpus: 2 });
    const [v0, v1] = m.vcpus as [(typeof m.vcpus)[0], (typeof m.vcpus)[0]];
    const p = k.createProcess(v0, 'gc');
    k.switchTo(v0, p);
    k.switchTo(v1, p);
    const base = k.mmap(v0, p, null, 4 * PAGE_SIZE, RW, VMA_ANON);
    user(v0, () => {
      for (let i = 0; i < 4; i++) v0.write(base + i * PAGE_SIZE, 4, i);
    });
    user(v1, () => v1.read(base, 4));
    k.mprotect(v0, p, base, 4 * PAGE_SIZE, PROT_READ);
    expect(k.inspectPte(p, base)!.lo & PT_WRITABLE).toBe(0);
    const before = { invlpgs: k.stats.invlpgs, shootdowns: k.stats.shootdowns, faults: k.stats.pageFaults };
    k.mprotect(v0, p, base, PAGE_SIZE, RW);
    expect(k.inspectPte(p, base)!.lo & PT_WRITABLE).toBe(PT_WRITABLE);
    expect(k.stats.invlpgs - before.invlpgs).toBe(2);
    expect(k.stats.shootdowns - before.shootdowns).toBe(1);
    user(v0, () => v0.write(base, 4, 99));
    expect(k.stats.pageFaults - before.faults).toBe(0);
  });

  it('mprotect(PROT_READ|PROT_WRITE) leaves a page read-only that fork shared, even once the child is gone (PageAnonExclusive)', () => {
    // fork clears PageAnonExclusive on both sides (folio_try_dup_anon_rmap_pte); the page becomes exclusive
    // again only when a write fault reuses it (do_wp_page), so mprotect may not make it writable.
    const { k, v } = boot(MODE_LONG4);
    const p = k.createProcess(v, 'parent');
    k.switchTo(v, p);
    const base = k.mmap(v, p, null, 2 * PAGE_SIZE, RW, VMA_ANON);
    user(v, () => {
      v.write(base, 4, 1);
      v.write(base + PAGE_SIZE, 4, 2);
    });
    const child = k.fork(v, p);
    k.exit(v, child);
    k.switchTo(v, p);
    user(v, () => v.write(base + PAGE_SIZE, 4, 3)); // wp_page_reuse: exclusive again
    expect(k.stats.faults[FAULT_WP_REUSE]).toBe(1);
    k.mprotect(v, p, base, 2 * PAGE_SIZE, PROT_READ);
    k.mprotect(v, p, base, 2 * PAGE_SIZE, RW);
    expect(k.inspectPte(p, base)!.lo & PT_WRITABLE).toBe(0);
    expect(k.inspectPte(p, base + PAGE_SIZE)!.lo & PT_WRITABLE).toBe(PT_WRITABLE);
    user(v, () => v.write(base, 4, 4));
    expect(k.stats.faults[FAULT_WP_REUSE]).toBe(2);
  });

  it('a fetch from a non-executable area maps the page, then the fetch from the NX page is the SIGSEGV (access_error)', () => {
    // arch/x86/mm/fault.c access_error: an instruction fetch is checked as a read; not present, it needs
    // only an accessible area (do_anonymous_page maps the zero page, with NX); present (PF_PROT), it is the
    // error.
    const { k, v } = boot(MODE_LONG4);
    const p = k.createProcess(v, 'p');
    k.switchTo(v, p);
    const base = k.mmap(v, p, null, PAGE_SIZE, RW, VMA_ANON);
    let aborted = false;
    user(v, () => {
      try {
        v.touch(base, ACC_FETCH);
      } catch {
        aborted = true;
      }
    });
    expect(aborted).toBe(true);
    expect([...k.events].map((e) => [e.errorCode & (PFERR_FETCH | PFERR_PRESENT), e.kind])).toEqual([
      [PFERR_FETCH, 'zero-page'],
      [PFERR_FETCH | PFERR_PRESENT, 'sigsegv'],
    ]);
  });

  it('a read of a write-only area is a zero-page fault, not a SIGSEGV (access_error: vma_is_accessible)', () => {
    const { k, v } = boot(MODE_LONG4);
    const p = k.createProcess(v, 'p');
    k.switchTo(v, p);
    const base = k.mmap(v, p, null, PAGE_SIZE, PROT_WRITE, VMA_ANON);
    user(v, () => v.read(base, 4));
    expect(k.stats.faults[FAULT_ZERO_PAGE]).toBe(1);
    expect(k.stats.faults[FAULT_SIGSEGV]).toBe(0);
  });

  it('a read fault in a shared writable file mapping maps the page read-only; the first write is a write-notify fault (do_read_fault, wp_page_shared)', () => {
    // A regular file's shared writable mapping wants write notification (vma_wants_writenotify: the mapping
    // can write back), so its vm_page_prot has no R/W: do_read_fault installs a read-only pte, and the
    // first write goes through do_wp_page -> wp_page_shared, which makes it writable and dirty.
    const { k, v } = boot(MODE_LONG4);
    const p = k.createProcess(v, 'p');
    k.switchTo(v, p);
    const base = k.mmap(v, p, null, PAGE_SIZE, RW, VMA_FILE_SHARED, k.file('/data'), 0);
    user(v, () => v.read(base, 4));
    expect(k.stats.faults[FAULT_FILE]).toBe(1);
    expect(k.inspectPte(p, base)!.lo & PT_WRITABLE).toBe(0);
    user(v, () => v.write(base, 4, 7));
    expect(k.stats.faults[FAULT_WP_REUSE]).toBe(1);
    expect(k.inspectPte(p, base)!.lo & PT_WRITABLE).toBe(PT_WRITABLE);
  });

  it('brk grows the heap area, which fork then copies whole: its zero-page ptes too (do_brk_flags, vma_needs_copy)', () => {
    // do_brk_flags expands the heap's vma (can_vma_merge_after: a vma with an anon_vma merges with a growth
    // that has none), so the whole heap has the anon_vma and copy_page_range copies every present pte of it.
    const { k, v } = boot(MODE_LONG4);
    const p = k.createProcess(v, 'p');
    k.switchTo(v, p);
    k.exec(v, p, { path: '/bin/x', textPages: 1, dataPages: 0, bssPages: 0, stackPages: 1 });
    const heap = p.brkEnd;
    k.brk(v, p, heap + PAGE_SIZE);
    user(v, () => v.write(heap, 4, 1));
    k.brk(v, p, heap + 2 * PAGE_SIZE);
    user(v, () => v.read(heap + PAGE_SIZE, 4));
    expect(p.vmas.find(heap)).toBe(p.vmas.find(heap + PAGE_SIZE));
    const child = k.fork(v, p);
    expect(k.inspectPte(child, heap + PAGE_SIZE)!.lo & PT_PRESENT).toBe(PT_PRESENT);
    k.switchTo(v, child);
    const faults = k.stats.pageFaults;
    user(v, () => v.read(heap + PAGE_SIZE, 4));
    expect(k.stats.pageFaults - faults).toBe(0);
  });

  it('munmap flushes PROT_NONE ptes and freed page tables (zap_pte_range: pte_present; pte_free_tlb)', () => {
    // x86 pte_present is true for a PROT_NONE pte, so zap_pte_range adds it to the mmu_gather's range;
    // freeing a page table adds its (aligned) address too, and tlb_finish_mmu flushes that range.
    const { k, v } = boot(MODE_LONG4);
    const p = k.createProcess(v, 'p');
    k.switchTo(v, p);
    // MAP_FIXED at a 512 GiB-aligned address: the page table, PD and PDPT freed are each added at the start of
    // what they map (pte_free_tlb, pmd_free_tlb, pud_free_tlb), here base. At the top-down mmap(NULL) address,
    // 0x7ffff7ffd000, they would be 0x7ffff7e00000, 0x7fffc0000000 and 0x7f8000000000: a range over 33 pages,
    // a full flush, with or without the PROT_NONE pte.
    const base = k.mmap(v, p, 0x7f0000000000, 2 * PAGE_SIZE, RW, VMA_ANON);
    user(v, () => v.write(base, 4, 1));
    k.mprotect(v, p, base, 2 * PAGE_SIZE, PROT_NONE);
    expect(k.inspectPte(p, base)!.lo & PT_PRESENT).toBe(0);
    const before = k.stats.invlpgs;
    k.munmap(v, p, base, 2 * PAGE_SIZE);
    // the PROT_NONE pte at base, and the page table (mapping from base, which is 2 MiB aligned) freed
    expect(k.stats.invlpgs - before).toBe(1);
    expect(k.stats.tablesFreed[1]).toBe(1);
  });

  it('munmap of an area with no page present flushes the page tables it frees (free_pgtables, tlb_flush_pmd_range)', () => {
    const { k, v } = boot(MODE_LONG4);
    const p = k.createProcess(v, 'p');
    k.switchTo(v, p);
    // MAP_FIXED at a 512 GiB-aligned address, so that the page table, PD and PDPT freed below are all added
    // at the same address (pte_free_tlb, pmd_free_tlb, pud_free_tlb: the start of what each maps). At the
    // top-down mmap(NULL) address, 0x7ffff7ffb000, they would be 0x7ffff7e00000, 0x7fffc0000000 and
    // 0x7f8000000000: over 33 strides of 2 MiB apart, a full flush.
    const base = k.mmap(v, p, 0x7f0000000000, 4 * PAGE_SIZE, RW, VMA_ANON);
    user(v, () => v.write(base, 4, 1));
    // The first page's area goes, but its page table stays for the rest of the area.
    k.munmap(v, p, base, PAGE_SIZE);
    expect(k.stats.tablesFreed[1]).toBe(0);
    const before = k.stats.invlpgs;
    // The rest, never touched: nothing present, but the page table (and the PD, PDPT above it) is freed.
    k.munmap(v, p, base + PAGE_SIZE, 3 * PAGE_SIZE);
    expect(k.stats.tablesFreed[1]).toBe(1);
    expect(k.stats.invlpgs - before).toBe(1);
  });
});
