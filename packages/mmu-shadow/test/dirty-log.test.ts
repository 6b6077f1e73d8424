import { DirtyLog, type Vcpu } from '@vmexit/core';
import fc from 'fast-check';
import { SPTE_MMU_WRITABLE, SPTE_W } from '@vmexit/core/mmu';
import { describe, expect, it } from 'vitest';
import type { ShadowMmu, ShadowPage } from '../src/index.js';
import { A, D, P, setup, U, W, type Mode } from './harness.js';

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

    it('refuses an unknown slot, twice, and initially-set without manual protect, naming the input', () => {
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

  describe('prefetch (FNAME(pte_prefetch)) while a slot logs', () => {
    const USER = 0x40000000;
    const DATA = 0x900000; // gpte i maps DATA + i * 4096
    const userRead = (v: Vcpu, va: number): void => {
      v.setCpl(3);
      v.read(va, 4);
      v.setCpl(0);
    };
    /** A guest in `mode` whose user pages USER + i * 4096 (one aligned group of 8 gptes) have the flags `flags[i]`, prefetch on, slot 0 logging. */
    function group(mode: Mode, flags: readonly number[]) {
      const t = setup(mode);
      t.h.decider = (ev) => (ev.kind === 'prefetch' ? true : null);
      for (let i = 0; i < flags.length; i++) t.pt.map(USER + i * 4096, DATA + i * 4096, flags[i]!);
      const log = new DirtyLog(t.machine.memory);
      t.mmu.attachDirtyLog(log);
      log.enable(0);
      gfns(log); // the harvest before the reads
      t.h.reset();
      const present = (): boolean[] =>
        flags.map((_, i) => {
          const loc = userLoc(t.mmu, USER + i * 4096);
          return t.mmu.isPresent(t.mmu.pool.lo(loc), t.mmu.pool.hi(loc));
        });
      const dirtyData = (): number[] => gfns(log).filter((g) => g >= DATA / 4096 && g < DATA / 4096 + 8);
      return { ...t, present, dirtyData };
    }
    /** The leaf spte location of user address `va` through the root of VA bits 31:30 (PAE, 32-bit) or vCPU 0's root. */
    function userLoc(mmu: ShadowMmu, va: number): number {
      const st = mmu.states[0]!;
      let sp: ShadowPage = st.root ?? st.paeRoots[(va >>> 30) & 3]!;
      while (sp.level > 1) {
        const loc = sp.base + (Math.floor(va / 2 ** (12 + 9 * (sp.level - 1))) & 511);
        sp = mmu.childPage(mmu.pool.lo(loc), mmu.pool.hi(loc));
      }
      return sp.base + ((va >>> 12) & 511);
    }

    for (const mode of ['legacy32', 'pae', 'long4'] as const) {
      it(`${mode}: stops at a writable, dirty gpte into the logging slot (gfn_to_memslot_dirty_bitmap): no page marked that the guest did not write`, () => {
        const RO = P | U | A; // read-only gptes: prefetched as read-only sptes, nothing to log
        const { vcpu, h, present, dirtyData } = group(mode, [RO, RO, RO, RO, P | W | U | A | D, RO, RO, RO]);
        // Read 0: 1 exit (#PF, the guest walk succeeds): spte 0 read-only, then the prefetch maps gptes 1-3 and
        // stops at gpte 4 (write access into a logging slot: KVM's slot lookup for the prefetch fails), so 5-7
        // are not mapped either.
        userRead(vcpu, USER);
        expect(h.e('pf')).toBe(1);
        expect(present()).toEqual([true, true, true, true, false, false, false, false]);
        expect(dirtyData()).toEqual([]);
        // Reads 1-3: no exit. Read 4: 1 exit; its own fault maps it writable (the gpte is dirty) and make_spte
        // marks it dirty, as KVM does; its prefetch maps 5-7 (read-only). Reads 5-7: no exit. 2 exits in all.
        for (let i = 1; i < 8; i++) userRead(vcpu, USER + i * 4096);
        expect(h.e('pf')).toBe(2);
        expect(present()).toEqual(Array.from({ length: 8 }, () => true));
        expect(dirtyData()).toEqual([DATA / 4096 + 4]);
      });
    }

    it('property: a read marks no data page dirty but its own, and the prefetch maps the group up to the first gpte it may not map', () => {
      const gpteFlags = fc.constantFrom(0, P | U, P | U | A, P | W | U | A, P | W | U | A | D);
      fc.assert(
        fc.property(fc.constantFrom<Mode>('legacy32', 'pae', 'long4'), fc.array(gpteFlags, { minLength: 8, maxLength: 8 }), fc.nat(7), (mode, flags, at) => {
          const f = flags.slice();
          f[at] = f[at]! | P | U; // the read's own page is mapped
          const { vcpu, present, dirtyData } = group(mode, f);
          userRead(vcpu, USER + at * 4096);
          // KVM FNAME(pte_prefetch): from the group's first gpte, skip the fault's own, stop at the first not present
          // and accessed, or with W and D (write access into the logging slot).
          const want = f.map((_, i) => i === at);
          for (let i = 0; i < 8; i++) {
            if (i === at) continue;
            if ((f[i]! & (P | A)) !== (P | A) || (f[i]! & (W | D)) === (W | D)) break;
            want[i] = true;
          }
          expect(present()).toEqual(want);
          const own = (f[at]! & (W | D)) === (W | D) ? [DATA / 4096 + at] : [];
          expect(dirtyData()).toEqual(own);
        }),
        { numRuns: 150 },
      );
    });

    it('in a direct page: a writable guest large page in the logging slot is not prefetched (direct_pte_prefetch_many), a read-only one is', () => {
      const LARGE = 0x40000000; // a user 2 MiB page at gpa 8 MiB, in slot 0
      for (const [flags, mapped] of [
        [P | W | U | A | D, 1], // write access: the slot lookup for the prefetch fails, only the fault's own spte
        [P | U | A, 8], // read-only: the group of 8 is mapped, nothing is marked dirty
      ] as const) {
        const t = setup('long4');
        t.h.decider = (ev) => (ev.kind === 'prefetch' ? true : null);
        t.pt.map(LARGE, 0x800000, flags, 2);
        const log = new DirtyLog(t.machine.memory);
        t.mmu.attachDirtyLog(log);
        log.enable(0);
        gfns(log);
        t.h.reset();
        userRead(t.vcpu, LARGE + 3 * 4096);
        expect(t.h.e('pf')).toBe(1);
        // Then the group's other pages: one exit each that the prefetch did not map.
        for (const i of [0, 1, 2, 4, 5, 6, 7]) userRead(t.vcpu, LARGE + i * 4096);
        expect(t.h.e('pf')).toBe(1 + (8 - mapped));
        // Each read of the writable, dirty page faults on its own and maps it writable, marking it (make_spte).
        expect(gfns(log).filter((g) => g >= 0x800 && g < 0x808)).toEqual(flags & W ? [0x800, 0x801, 0x802, 0x803, 0x804, 0x805, 0x806, 0x807] : []);
        t.mmu.audit();
      }
    });
  });
});
