import { DirtyLog } from '@vmexit/core';
import { EPT_SPTE_W, SPTE_LARGE } from '@vmexit/core/mmu';
import { describe, expect, it } from 'vitest';
import { handGuest } from './hand-guest.js';
import { leafLoc } from '../src/map.js';
import { childOf, spteIndex } from '../src/zap.js';
import type { TdpMmu } from '../src/index.js';

const gfns = (log: DirtyLog): number[] => DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0));

/** The location of the level-2 spte that maps `gfn` (the walk from the root through present non-leaf sptes). */
function level2Loc(mmu: TdpMmu, gfn: number): number {
  let sp = mmu.root;
  for (let level = mmu.rootLevel; level > 2; level--) {
    const loc = sp.base + spteIndex(gfn, level);
    sp = childOf(mmu, mmu.pool.lo(loc), mmu.pool.hi(loc));
  }
  return sp.base + spteIndex(gfn, 2);
}

/** The hand-built guest (hand-guest.ts) with 2 MiB host pages, va 0x1000 -> gpa 0x200000 (a 2 MiB leaf) and va 0x2000 -> gpa 0x10000, both written once, and a dirty log attached. */
async function logged(backend: 'vmx' | 'svm', fast: boolean) {
  const g = await handGuest(backend, { hostPages: '2m' });
  g.mmu.setFastPageFault(fast);
  g.map(0x1000, 0x200000);
  g.map(0x2000, 0x10000);
  g.tryWrite(0x1000, 1);
  g.tryWrite(0x2000, 1);
  const log = new DirtyLog(g.vm.machine.memory);
  g.mmu.attachDirtyLog(log);
  const before = { ...g.c() };
  const d = (k: string): number => (g.c()[k] ?? 0) - (before[k] ?? 0);
  return { g, log, d, reset: () => Object.assign(before, g.c()) };
}

describe('TdpMmu dirty logging', () => {
  it('enabling the log splits the huge leaf, write-protects every leaf keeping MMU-writable, and flushes once', async () => {
    const { g, log, d } = await logged('vmx', false);
    expect(g.mmu.leaves[2]).toBe(2); // 0-2 MiB (the guest's tables and gpa 0x10000) and 2-4 MiB (gpa 0x200000)
    log.enable(0);
    // kvm_mmu_slot_apply_flags: eager splitting of the 2 huge leaves, then kvm_tdp_mmu_wrprot_slot, one flush.
    expect([g.mmu.leaves[1], g.mmu.leaves[2], d('split_huge_pages'), d('remote_tlb_flush')]).toEqual([2 * 512, 0, 2, 1]);
    const loc = leafLoc(g.mmu, 0x200);
    expect(g.mmu.pool.lo(loc) & EPT_SPTE_W).toBe(0);
    expect(g.mmu.pool.hi(loc) & g.mmu.format.mmuWritableHi).toBe(g.mmu.format.mmuWritableHi);
    expect(gfns(log)).toEqual([]);
    g.mmu.audit();
  });

  for (const backend of ['vmx', 'svm'] as const) {
    for (const fast of [false, true]) {
      it(`${backend}, fast page fault ${fast ? 'on' : 'off'}: write faults mark the pages dirty; KVM_GET_DIRTY_LOG returns, clears and re-protects`, async () => {
        const { g, log, d, reset } = await logged(backend, fast);
        log.enable(0);
        reset();
        // The store to va 0x1000 after the flush walks the guest's tables again. The guest's paging-structure
        // accesses are writes to the second stage: on VMX because the EPTP enables A/D (SDM Vol. 3C §29.3.5), on
        // SVM because nested walks of guest tables are user writes (APM Vol. 2 §15.25.5). The PML4, PDPT, PD and
        // PT pages (gfns 1-4) are write-protected now, and each is an EPT violation / #NPF with P|W, then the data
        // page 0x200: 5 exits. Each is fixed (pf_fixed) by the fast path (no mmu_lock) or by the slow path (the
        // read lock once per exit), and each page fixed is marked dirty.
        expect(g.tryWrite(0x1000, 2)).toBe(true);
        const exits = 5;
        const exitName = backend === 'vmx' ? 'exits.EPT_VIOLATION' : 'exits.VMEXIT_NPF';
        expect([d(exitName), d('pf_fixed'), d('pf_fast'), d('mmu_lock.acquired')]).toEqual([exits, exits, fast ? exits : 0, fast ? 0 : exits]);
        const written = [1, 2, 3, 4, 0x200];
        expect(gfns(log)).toEqual(written);
        // The harvest re-protected them and flushed: the same store faults as many times again.
        reset();
        expect(g.tryWrite(0x1000, 3)).toBe(true);
        expect(d(exitName)).toBe(exits);
        expect(gfns(log)).toEqual(written);
        g.mmu.audit();
      });
    }
  }

  for (const backend of ['vmx', 'svm'] as const) {
    it(`${backend}, KVM_DIRTY_LOG_INITIALLY_SET: the first clear splits the huge leaf and protects only the pages it names`, async () => {
      const { g, log, d, reset } = await logged(backend, false);
      const exitName = backend === 'vmx' ? 'exits.EPT_VIOLATION' : 'exits.VMEXIT_NPF';
      g.map(0x3000, 0x201000); // gfn 0x201, in the same 2 MiB leaf as gfn 0x200 (va 0x1000)
      // Initially-set: every bit starts set, nothing is split or protected (kvm_mmu_slot_apply_flags returns early).
      log.enable(0, { manualProtect: true, initiallySet: true });
      expect([g.mmu.leaves[2], d('split_huge_pages'), d('remote_tlb_flush')]).toEqual([2, 0, 0]);
      // KVM_CLEAR_DIRTY_LOG of gfn 0x200 alone: kvm_arch_mmu_enable_log_dirty_pt_masked splits the 2 MiB leaf
      // over it first (kvm_mmu_try_split_huge_pages), then write-protects the one 4 KiB leaf; one flush.
      log.clearDirtyLog(0, 0x200, 64, new Uint32Array([1, 0]));
      expect([g.mmu.leaves[2], g.mmu.leaves[1], d('split_huge_pages'), d('remote_tlb_flush')]).toEqual([1, 512, 1, 1]);
      reset();
      // A store to gfn 0x201: its 4 KiB leaf kept the huge leaf's W (the guest's tables are in the 0-2 MiB leaf,
      // untouched): no exit. A store to gfn 0x200: one write-protect fault.
      expect(g.tryWrite(0x3000, 2)).toBe(true);
      expect(d(exitName)).toBe(0);
      expect(g.tryWrite(0x1000, 2)).toBe(true);
      expect([d(exitName), d('pf_fixed')]).toEqual([1, 1]);
      g.mmu.audit();
    });
  }

  it('the fast path also fixes a leaf left write-protected after the log was turned off (KVM tries it for every P|W fault)', async () => {
    // 4 KiB host pages, so that nothing could be mapped larger once the log is off (KVM recovers huge pages then).
    const g = await handGuest('vmx');
    g.mmu.setFastPageFault(true);
    g.map(0x1000, 0x10000);
    g.tryWrite(0x1000, 1);
    const log = new DirtyLog(g.vm.machine.memory);
    g.mmu.attachDirtyLog(log);
    log.enable(0);
    log.disable(0); // KVM_MEM_LOG_DIRTY_PAGES cleared: the leaves stay write-protected (MMU-writable kept)
    const before = { ...g.c() };
    const d = (k: string): number => (g.c()[k] ?? 0) - (before[k] ?? 0);
    // The store walks the guest's four table pages (writes to EPT, §29.3.5) and writes the data page: 5 violations
    // with P|W on MMU-writable leaves. kvm_tdp_mmu_page_fault -> fast_page_fault sets W by cmpxchg each time:
    // pf_fast and pf_fixed 5, mmu_lock never taken.
    expect(g.tryWrite(0x1000, 2)).toBe(true);
    expect([d('exits.EPT_VIOLATION'), d('pf_taken'), d('pf_fast'), d('pf_fixed'), d('mmu_lock.acquired')]).toEqual([5, 5, 5, 5, 0]);
    g.mmu.audit();
  });

  for (const backend of ['vmx', 'svm'] as const) {
    it(`${backend}: turning the log off maps huge again (kvm_mmu_recover_huge_pages): one write-protect fault per 2 MiB, not per page`, async () => {
      const { g, log, d, reset } = await logged(backend, true);
      const exitName = backend === 'vmx' ? 'exits.EPT_VIOLATION' : 'exits.VMEXIT_NPF';
      g.map(0x3000, 0x201000); // gfn 0x201, in the same 2 MiB as gfn 0x200 (va 0x1000)
      log.enable(0); // the two 2 MiB leaves split into 1024 4 KiB leaves, all write-protected
      reset();
      // KVM_MEM_LOG_DIRTY_PAGES cleared: kvm_mmu_slot_apply_flags -> kvm_mmu_recover_huge_pages. Both page tables
      // (0-2 MiB: the guest's tables and gpa 0x10000; 2-4 MiB: gpa 0x200000) lie in slot 0 and the 2 MiB host
      // pages allow a 2 MiB leaf: each becomes a huge leaf made from its first 4 KiB leaf (make_huge_spte), the
      // tables are freed, one flush.
      log.disable(0);
      expect([g.mmu.leaves[1], g.mmu.leaves[2]]).toEqual([0, 2]);
      expect([d('pages_4k'), d('pages_2m'), d('tdp_mmu_pages'), d('remote_tlb_flush')]).toEqual([-1024, 2, -2, 1]);
      // The first leaf was write-protected for the log (W clear, MMU-writable kept): so is the huge leaf.
      expect(leafLoc(g.mmu, 0x200)).toBe(-1); // the walk stops above level 1
      const pde = level2Loc(g.mmu, 0x200);
      const f = g.mmu.format;
      expect([g.mmu.pool.lo(pde) & SPTE_LARGE, g.mmu.pool.lo(pde) & f.writableLo, g.mmu.pool.hi(pde) & f.mmuWritableHi]).toEqual([
        SPTE_LARGE,
        0,
        f.mmuWritableHi,
      ]);
      reset();
      // Stores to gfn 0x200 and 0x201. The first store's walk writes the guest's table pages (gfns 1-4, see
      // above), all in the 0-2 MiB huge leaf: one EPT violation / #NPF with P|W, fixed by the fast path for the
      // whole 2 MiB (the slot no longer logs); then gfn 0x200: one more for the 2-4 MiB leaf. The store to gfn
      // 0x201 finds that leaf writable: no exit. 2 exits (with the 4 KiB leaves left write-protected: 6, one per
      // table page and one per data page).
      expect(g.tryWrite(0x1000, 2)).toBe(true);
      expect(g.tryWrite(0x3000, 2)).toBe(true);
      expect([d(exitName), d('pf_fast'), d('pf_fixed'), d('mmu_lock.acquired')]).toEqual([2, 2, 2, 0]);
      expect([g.mmu.leaves[1], g.mmu.leaves[2]]).toEqual([0, 2]);
      g.mmu.audit();
    });
  }

  it('re-enabling the log on a slot whose leaves are all write-protected still flushes once (unconditional in kvm_mmu_slot_apply_flags)', async () => {
    const g = await handGuest('vmx');
    g.map(0x1000, 0x10000);
    g.tryWrite(0x1000, 1);
    const log = new DirtyLog(g.vm.machine.memory);
    g.mmu.attachDirtyLog(log);
    log.enable(0);
    log.disable(0); // 4 KiB host pages: nothing to recover, the leaves stay write-protected
    const before = g.c()['remote_tlb_flush'] ?? 0;
    log.enable(0); // no leaf loses W now
    expect((g.c()['remote_tlb_flush'] ?? 0) - before).toBe(1);
  });

  it('an emulated store marks its page dirty (mark_page_dirty of kvm_vcpu_write_guest)', async () => {
    const { g, log } = await logged('vmx', false);
    log.enable(0);
    g.mmu.trackWrite(g.v, 0x345000);
    expect(gfns(log)).toEqual([0x345]);
  });

  it('with dirty rings, the fixed pages go to the vCPU ring and a reset re-protects them', async () => {
    const { g, log, d, reset } = await logged('svm', true);
    log.enableRing(1, 256);
    log.enable(0);
    reset();
    expect(g.tryWrite(0x1000, 2)).toBe(true);
    const got: number[] = [];
    expect(log.collectRings((_s, gfn) => got.push(gfn))).toBe(5);
    expect(got).toEqual([1, 2, 3, 4, 0x200]); // the guest's four table pages, then the data page (see above)
    expect(log.resetDirtyRings()).toBe(5);
    reset();
    expect(g.tryWrite(0x1000, 3)).toBe(true);
    expect([d('exits.VMEXIT_NPF'), d('pf_fast')]).toEqual([5, 5]);
  });
});
