import { describe, expect, it } from 'vitest';
import { DirtyLog, GuestMemory, type DirtyLogMmu, type Memslot } from '../../src/index.js';
import { MmuLock } from '../../src/mmu/index.js';

/**
 * An MMU that records what the dirty log asks of it. `writable` is whether its sptes are writable (what
 * `slotRemoveWriteAccess` reports); `pml` makes it log through the processor's log, whose pending pages
 * `syncDirtyLog` marks dirty (as `vmx_flush_pml_buffer` does at the kick of `kvm_arch_sync_dirty_log`).
 */
class RecordingMmu implements DirtyLogMmu {
  readonly mmuLock = new MmuLock();
  readonly calls: string[] = [];
  readonly pendingPml: number[] = [];
  log: DirtyLog | null = null;
  constructor(
    readonly writable: boolean,
    readonly cpuDirtyLog = false,
  ) {}
  attachDirtyLog(log: DirtyLog): void {
    this.log = log;
    log.attach(this);
  }
  slotRemoveWriteAccess(): boolean {
    this.calls.push('wrprot slot');
    return this.writable;
  }
  writeProtectMasked(_slot: Memslot, offset: number, mask: number): boolean {
    this.calls.push(`wrprot ${offset} 0x${(mask >>> 0).toString(16)}`);
    return this.writable;
  }
  flushRemoteTlbs(): void {
    this.calls.push('flush');
  }
  syncDirtyLog(): void {
    for (const gfn of this.pendingPml.splice(0)) this.log!.markPageDirty(gfn, 0);
  }
  recoverHugePages(slot: Memslot): void {
    this.calls.push(`recover slot ${slot.id} logging=${this.log!.isLogging(slot)}`);
  }
}

function logged(writable: boolean, pml = false) {
  const memory = new GuestMemory(4 * 1024 * 1024, [{ base: 0, size: 4 * 1024 * 1024, readonly: false }]);
  const log = new DirtyLog(memory);
  const mmu = new RecordingMmu(writable, pml);
  mmu.attachDirtyLog(log);
  return { log, mmu };
}

describe('DirtyLog against KVM (kvm_main.c, x86.c kvm_mmu_slot_apply_flags)', () => {
  it('enabling the log flushes the TLBs once even when no spte lost W; initially-set neither protects nor flushes', () => {
    // kvm_mmu_slot_apply_flags: "Unconditionally flush the TLBs after enabling dirty logging" (a slot whose sptes
    // are all read-only already, e.g. after the log was turned off and on again, still costs one flush).
    const { log, mmu } = logged(false);
    log.enable(0);
    expect(mmu.calls).toEqual(['wrprot slot', 'flush']);
    // KVM_DIRTY_LOG_INITIALLY_SET: "Initially-all-set does not require write protecting any page": it returns
    // before the write protection and the flush.
    log.disable(0);
    mmu.calls.length = 0;
    log.enable(0, { manualProtect: true, initiallySet: true });
    expect(mmu.calls).toEqual([]);
  });

  it('a read-only slot may log (check_memory_region_flags allows it): nothing to protect, no flush, an empty bitmap', () => {
    const memory = new GuestMemory(4 * 1024 * 1024, [
      { base: 0, size: 2 * 1024 * 1024, readonly: false },
      { base: 2 * 1024 * 1024, size: 2 * 1024 * 1024, readonly: true },
    ]);
    const log = new DirtyLog(memory);
    const mmu = new RecordingMmu(true);
    mmu.attachDirtyLog(log);
    // kvm_mmu_slot_apply_flags: "Nothing more to do for RO slots (which can't be dirtied and can't be made writable)".
    log.enable(1);
    expect([mmu.calls, log.loggingSlots, log.isLogging(memory.slots[1]!)]).toEqual([[], 1, true]);
    expect(DirtyLog.gfns(log.slotOf(1), log.getDirtyLog(1))).toEqual([]);
  });

  it('disabling the log asks the MMU to recover huge pages, once the slot no longer logs (kvm_mmu_recover_huge_pages)', () => {
    const { log, mmu } = logged(true);
    log.enable(0);
    mmu.calls.length = 0;
    log.disable(0);
    expect(mmu.calls).toEqual(['recover slot 0 logging=false']);
    expect(log.loggingSlots).toBe(0);
  });

  it('KVM_CLEAR_DIRTY_LOG syncs the processor logs first (kvm_arch_sync_dirty_log), so it clears and re-protects their pages too', () => {
    const { log, mmu } = logged(true, true);
    log.enable(0, { manualProtect: true });
    // Pages 3 and 5 were written and sit in a vCPU's PML log, not yet in the bitmap. User space clears page 3
    // (from an earlier KVM_GET_DIRTY_LOG): KVM kicks the vCPUs first, their logs reach the bitmap, and the
    // clear then takes page 3's bit and write-protects (under PML: clears D of) page 3. Page 5 stays dirty.
    mmu.pendingPml.push(3, 5);
    mmu.calls.length = 0;
    log.clearDirtyLog(0, 0, 64, new Uint32Array([1 << 3, 0]));
    expect(mmu.calls).toEqual(['wrprot 0 0x8', 'flush']);
    expect(DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0))).toEqual([5]);
  });

  it('a dirty ring reserves PML’s 512 entries too when the MMU logs through PML (kvm_dirty_ring_get_rsvd_entries)', () => {
    // KVM_DIRTY_RING_RSVD_ENTRIES (64) + kvm_cpu_dirty_log_size() (PML_LOG_NR_ENTRIES, 512 on VMX with PML): one
    // PML flush may push 512 entries past the soft limit. 1024 entries: soft limit 1024 - 576 = 448.
    const pml = logged(true, true).log;
    pml.enableRing(1, 1024);
    expect(pml.rings![0]!.softLimit).toBe(448);
    // 256 entries (4 KiB) is smaller than the 576 reserved: KVM_CAP_DIRTY_LOG_RING fails with -EINVAL.
    expect(() => logged(true, true).log.enableRing(1, 256)).toThrow(/smaller than the 576 reserved entries/);
    // Without PML: 64 reserved, as before.
    const plain = logged(true).log;
    plain.enableRing(1, 1024);
    expect(plain.rings![0]!.softLimit).toBe(960);
  });
});
