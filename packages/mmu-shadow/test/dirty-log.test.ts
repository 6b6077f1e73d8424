import { DirtyLog } from '@vmexit/core';
import { SPTE_MMU_WRITABLE, SPTE_W } from '@vmexit/core/mmu';
import { describe, expect, it } from 'vitest';
import type { ShadowMmu, ShadowPage } from '../src/index.js';
import { A, D, P, setup, W } from './harness.js';

/** The leaf spte location of `va` under vCPU 0's root (4-level guest), or -1 when a level above is not present. */
function leafLoc(mmu: ShadowMmu, va: number): number {
  let sp: ShadowPage = mmu.states[0]!.root!;
  for (;;) {
    const loc = sp.base + (Math.floor(va / 2 ** (12 + 9 * (sp.level - 1))) & 511);
    if (sp.level === 1) return loc;
    const lo = mmu.pool.lo(loc);
    const hi = mmu.pool.hi(loc);
    if (!mmu.isPresent(lo, hi)) return -1;
    sp = mmu.childPage(lo, hi);
  }
}

/** A 4-level guest with 4 KiB pages over 0-4 MiB and a dirty 2 MiB page at 8 MiB (direct shadow pages below it), dirty logging attached. */
function logged(fastPageFault: boolean, vcpus = 1) {
  const t = setup('long4', { fastPageFault, vcpus });
  t.pt.map(0x800000, 0x800000, P | W | A | D, 2);
  const log = new DirtyLog(t.machine.memory);
  t.mmu.attachDirtyLog(log);
  return { ...t, log };
}

const gfns = (log: DirtyLog): number[] => DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0));

describe('ShadowMmu dirty logging', () => {
  describe('DirtyLog.enable', () => {
    it('write-protects every writable leaf of the slot, keeping MMU-writable, and flushes', () => {
      const { vcpu, mmu, log, h } = logged(false);
      vcpu.write(0x200000, 4, 1);
      const loc = leafLoc(mmu, 0x200000);
      expect(mmu.pool.lo(loc) & (SPTE_W | SPTE_MMU_WRITABLE)).toBe(SPTE_W | SPTE_MMU_WRITABLE);
      h.reset();
      log.enable(0);
      expect(mmu.pool.lo(loc) & (SPTE_W | SPTE_MMU_WRITABLE)).toBe(SPTE_MMU_WRITABLE);
      expect(h.c('remote_tlb_flush')).toBe(1);
      expect(gfns(log)).toEqual([]);
    });

    it('refuses a read-only slot, an unknown slot, twice, and initially-set without manual protect, naming the input', () => {
      const { log } = logged(false);
      expect(() => log.enable(7)).toThrow(/memslot 7 does not exist/);
      expect(() => log.enable(0, { initiallySet: true })).toThrow(/initiallySet .* needs manualProtect/);
      log.enable(0);
      expect(() => log.enable(0)).toThrow(/already logs/);
      expect(() => log.clearDirtyLog(0, 0, 64, new Uint32Array(2))).toThrow(/not in manual-protect mode/);
    });
  });

  describe('slow path (4 KiB guest pages: indirect shadow pages, never fast)', () => {
    it('a write fault marks the page dirty and makes the spte writable; KVM_GET_DIRTY_LOG returns, clears and re-protects', () => {
      const { vcpu, log, h } = logged(true);
      vcpu.write(0x200000, 4, 1); // map A and B writable before logging starts
      vcpu.write(0x201000, 4, 1);
      log.enable(0);
      h.reset();
      // Write A: the spte is present, W=0 -> #PF P|W, 1 exit; the page is indirect, so the slow path under
      // mmu_lock rebuilds the leaf writable and make_spte marks A dirty. The 2nd write hits the TLB: no exit.
      // Read B: the TLB was flushed; the walk of B's read-only spte succeeds: no exit.
      vcpu.write(0x200000, 4, 2);
      vcpu.write(0x200008, 4, 3);
      vcpu.read(0x201000, 4);
      expect(h.e('pf')).toBe(1);
      expect(h.c('pf_fast')).toBe(0);
      expect(h.c('mmu_lock.acquired')).toBe(1);
      expect(gfns(log)).toEqual([0x200]);
      // The harvest re-protected A and flushed: the next write faults again (1 more exit) and marks A again.
      expect(gfns(log)).toEqual([]);
      vcpu.write(0x200000, 4, 4);
      expect(h.e('pf')).toBe(2);
      expect(gfns(log)).toEqual([0x200]);
    });

    it('an emulated store marks its page dirty (mark_page_dirty of kvm_vcpu_write_guest)', () => {
      const { vcpu, log, pt } = logged(false);
      log.enable(0);
      const e = pt.entryAddr(0x300000, 1); // a guest pte: its page table is write-protected, the store is emulated
      vcpu.write(e, 8, 0x300000 | P | W, 0);
      expect(gfns(log)).toContain(Math.floor(e / 4096));
    });
  });

  describe('fast page fault (a 2 MiB guest page: direct shadow pages)', () => {
    for (const fast of [true, false]) {
      it(`${fast ? 'with' : 'without'} fast-page-fault: every write-protect fault is ${fast ? 'fixed by a cmpxchg, no mmu_lock' : 'handled under mmu_lock'}`, () => {
        const { vcpu, log, h } = logged(fast);
        for (let i = 0; i < 4; i++) vcpu.write(0x800000 + i * 4096, 4, 1);
        log.enable(0);
        h.reset();
        // 4 writes to the 4 write-protected pages: 4 #PF P|W exits. Fast: each a cmpxchg (pf_fast, pf_fixed),
        // no lock. Slow: each FNAME(page_fault) under mmu_lock. Then a write to a never-mapped page of the same
        // large page: P=0, the slow path in both (1 lock), writable at once and marked dirty.
        for (let i = 0; i < 4; i++) vcpu.write(0x800000 + i * 4096, 4, 2);
        vcpu.write(0x804000, 4, 2);
        expect(h.e('pf')).toBe(5);
        expect(h.c('pf_fast')).toBe(fast ? 4 : 0);
        expect(h.c('pf_fixed')).toBe(5);
        expect(h.c('mmu_lock.acquired')).toBe(fast ? 1 : 5);
        expect(gfns(log)).toEqual([0x800, 0x801, 0x802, 0x803, 0x804]);
      });
    }

    it('costs nothing while no slot logs: a write to a read-only direct spte takes the slow path', () => {
      const { vcpu, h, mmu } = logged(true);
      vcpu.write(0x800000, 4, 1);
      expect(mmu.fastFaults[0]!.busy).toBe(false);
      expect(h.c('pf_fast')).toBe(0);
    });

    it('never sets W on a page-table gfn: shadowing a gfn clears MMU-writable even from an spte already write-protected for logging', () => {
      const { vcpu, log, h, mmu, pt } = logged(true);
      vcpu.write(0x805000, 4, 1);
      log.enable(0);
      const loc = leafLoc(mmu, 0x805000);
      expect(mmu.pool.lo(loc) & (SPTE_W | SPTE_MMU_WRITABLE)).toBe(SPTE_MMU_WRITABLE);
      // The guest makes gfn 0x805 a page table (maps 0x600000 through it) and touches it: an indirect shadow
      // page for gfn 0x805 write-protects it (rmap_write_protect, pt_protect).
      const pde = pt.entryAddr(0x600000, 2);
      vcpu.write(pde, 8, 0x805000 | P | W, 0);
      vcpu.read(0x600000, 4);
      expect(mmu.pool.lo(loc) & (SPTE_W | SPTE_MMU_WRITABLE)).toBe(0);
      h.reset();
      vcpu.write(0x805000, 4, 1); // a write to a guest page table: emulated, never fixed fast
      expect(h.c('pf_fast')).toBe(0);
      expect(h.c('pf_emulate')).toBe(1);
    });
  });

  describe('manual protect (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)', () => {
    it('initially-set: all bits set, nothing protected; getDirtyLog does not clear; clearDirtyLog clears and protects the named pages', () => {
      const { vcpu, log, h, machine } = logged(true);
      vcpu.write(0x800000, 4, 1);
      vcpu.write(0x801000, 4, 1);
      log.enable(0, { manualProtect: true, initiallySet: true });
      const pages = machine.memory.pages;
      expect(gfns(log).length).toBe(pages);
      expect(gfns(log).length).toBe(pages);
      h.reset();
      vcpu.write(0x800000, 4, 2); // still writable: no exit
      expect(h.e('pf')).toBe(0);
      // Clear [0x800, 0x840): only those bits set in the mask (the first two pages) are cleared and protected.
      const mask = new Uint32Array(2);
      mask[0] = 0b11;
      log.clearDirtyLog(0, 0x800, 64, mask);
      expect(log.isDirty(0x800)).toBe(false);
      expect(log.isDirty(0x802)).toBe(true);
      vcpu.write(0x800000, 4, 3); // protected again: 1 exit, fixed fast, marked
      vcpu.write(0x801000, 4, 3);
      expect(h.e('pf')).toBe(2);
      expect(h.c('pf_fast')).toBe(2);
      expect(log.isDirty(0x800) && log.isDirty(0x801)).toBe(true);
      expect(() => log.clearDirtyLog(0, 3, 64, mask)).toThrow(/first a multiple of 64/);
    });
  });
});
