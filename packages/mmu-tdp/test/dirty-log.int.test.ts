import { DirtyLog } from '@vmexit/core';
import { EPT_SPTE_W } from '@vmexit/core/mmu';
import { describe, expect, it } from 'vitest';
import { handGuest } from './hand-guest.js';
import { leafLoc } from '../src/map.js';

const gfns = (log: DirtyLog): number[] => DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0));

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
