import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DirtyLog, DirtyRing, GuestMemory, KVM_DIRTY_GFN_F_DIRTY, KVM_DIRTY_GFN_F_RESET, type DirtyLogMmu, type Memslot } from '../../src/index.js';
import { MmuLock, ResetDirtyRingsOp } from '../../src/mmu/index.js';

/** An MMU that records what the dirty log asks of it (the write-protected runs and the flushes). */
class RecordingMmu implements DirtyLogMmu {
  readonly mmuLock = new MmuLock();
  readonly runs: [number, number][] = [];
  readonly pages = new Set<number>();
  flushes = 0;
  attachDirtyLog(log: DirtyLog): void {
    log.attach(this);
  }
  slotRemoveWriteAccess(): boolean {
    return false;
  }
  writeProtectMasked(slot: Memslot, offset: number, mask: number): boolean {
    expect(this.mmuLock.holder).toBe(-2); // under mmu_lock, by the host
    this.runs.push([offset, mask >>> 0]);
    for (let b = 0; b < 32; b++) if ((mask >>> b) & 1) this.pages.add(slot.baseGfn + offset + b);
    return true;
  }
  flushRemoteTlbs(): void {
    this.flushes++;
  }
}

function ringLog(vcpus = 1) {
  const memory = new GuestMemory(4 * 1024 * 1024, [{ base: 0, size: 4 * 1024 * 1024, readonly: false }]);
  const log = new DirtyLog(memory);
  const mmu = new RecordingMmu();
  mmu.attachDirtyLog(log);
  log.enableRing(vcpus, 256);
  log.enable(0);
  mmu.flushes = 0; // enabling the log flushed once (kvm_mmu_slot_apply_flags flushes unconditionally): count the resets' only
  return { log, mmu };
}

describe('DirtyRing', () => {
  it('goes DIRTY -> RESET (harvested) -> 0 (reset), with a soft-full request at size - 64 entries', () => {
    const r = new DirtyRing(0, 256);
    expect(r.softLimit).toBe(192);
    for (let i = 0; i < 191; i++) r.push(0, i);
    expect([r.softFullRequest, r.checkRequest()]).toEqual([false, false]);
    r.push(0, 191);
    expect([r.softFullRequest, r.checkRequest()]).toEqual([true, true]);
    expect(r.flags[0]).toBe(KVM_DIRTY_GFN_F_DIRTY);
    const seen: number[] = [];
    expect(r.collect((_s, o) => seen.push(o))).toBe(192);
    expect(seen.slice(0, 3)).toEqual([0, 1, 2]);
    expect(r.flags[0]).toBe(KVM_DIRTY_GFN_F_RESET);
    expect(r.collect(() => {})).toBe(0); // nothing DIRTY left
  });

  it('refuses a push to a full ring (KVM would overwrite a dirty entry)', () => {
    const r = new DirtyRing(3, 256);
    for (let i = 0; i < 256; i++) r.push(0, i);
    expect(() => r.push(0, 256)).toThrow(/dirty ring of vCPU 3: full \(256 entries not reset\)/);
  });
});

describe('ResetDirtyRingsOp (KVM_RESET_DIRTY_RINGS)', () => {
  it('coalesces as kvm_dirty_ring_reset: forward within a word, backwards while the mask fits, a new run otherwise; one flush; only harvested entries', () => {
    const { log, mmu } = ringLog();
    // 10 starts a run; 11 and 20 join it (forward, within 32); 5 is 5 back and the mask still fits shifted: the
    // run now starts at 5 (bits 0, 5, 6, 15). 300 starts a new run, 299 extends it backwards (bits 0, 1), 330 is
    // 31 ahead of 299 (bit 31); 298 is 1 back but bit 31 would be shifted out: a third run.
    for (const gfn of [10, 11, 20, 5, 300, 299, 330, 298]) log.markPageDirty(gfn, 0);
    expect(log.collectRings(() => {})).toBe(8);
    log.markPageDirty(12, 0); // pushed after the harvest: DIRTY, not RESET: the reset stops before it
    expect(log.resetDirtyRings()).toBe(8);
    expect(mmu.runs).toEqual([
      [5, 0x8061],
      [299, 0x80000003],
      [298, 1],
    ]);
    expect([...mmu.pages].sort((a, b) => a - b)).toEqual([5, 10, 11, 20, 298, 299, 300, 330]);
    expect(mmu.flushes).toBe(1);
    expect(log.rings![0]!.used()).toBe(1);
    expect(log.isDirty(12)).toBe(true);
    expect(log.isDirty(10)).toBe(false);
  });

  it('does nothing and flushes nothing when no entry was harvested; a vCPU without a ring is an error', () => {
    const { log, mmu } = ringLog();
    expect(() => log.markPageDirty(7, 1)).toThrow(/vCPU 1 has no dirty ring \(KVM_CAP_DIRTY_LOG_RING was enabled for 1 vCPUs\)/);
    log.markPageDirty(7, 0);
    expect(log.resetDirtyRings()).toBe(0);
    expect([mmu.runs.length, mmu.flushes]).toEqual([0, 0]);
  });

  it('property: a reset write-protects exactly the harvested pages of every ring, in runs of at most 32 pages', () => {
    fc.assert(
      fc.property(fc.array(fc.array(fc.integer({ min: 0, max: 1023 }), { maxLength: 150 }), { minLength: 1, maxLength: 3 }), (perVcpu) => {
        const { log, mmu } = ringLog(perVcpu.length);
        perVcpu.forEach((gfns, v) => gfns.forEach((g) => log.markPageDirty(g, v)));
        const harvested = new Set<number>();
        const n = log.collectRings((_s, g) => harvested.add(g));
        const op = new ResetDirtyRingsOp(log, log.rings!, -2);
        while (!op.done) op.step();
        expect(op.cleared).toBe(n);
        expect([...mmu.pages].sort((a, b) => a - b)).toEqual([...harvested].sort((a, b) => a - b));
        expect(mmu.flushes).toBe(n > 0 ? 1 : 0);
        for (const r of log.rings!) expect(r.used()).toBe(0);
      }),
      { numRuns: 100 },
    );
  });
});
