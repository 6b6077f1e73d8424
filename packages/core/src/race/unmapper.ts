import type { RaceThread } from './thread.js';

/** The MMU side of an `Unmapper`: its `mmu_lock` in the host's mode, the zap of one gfn and the flush. */
export interface UnmapMmu {
  /** The lock as schedules name it ('mmu_lock', 'mmu_lock (write)'). */
  readonly lockName: string;
  /** Whether the host could take `mmu_lock` (for write) now. */
  lockAvailable(): boolean;
  /** Takes `mmu_lock` for the host if free. */
  tryLock(): boolean;
  /** Releases `mmu_lock`. */
  unlock(): void;
  /** Zaps the sptes that map `gfn`; returns the schedule's text. */
  zap(gfn: number): string;
  /** Whether the flush can complete now (default: always; the shadow MMU waits for its lockless walkers). */
  flushReady?(): boolean;
  /** `kvm_flush_remote_tlbs` after the zap. */
  flush(): void;
}

/**
 * The host unmapping a gfn in a race scenario (an mmu-notifier invalidation, KVM `kvm_mmu_notifier_invalidate_range_start`
 * -> `kvm_unmap_gfn_range`): `mmu_lock`, the zap of the gfn's sptes, the remote TLB flush, the unlock, each one
 * step. How the MMU zaps, flushes and locks is `mmu`'s (mmu-shadow: the rmap under `mmu_lock`; mmu-tdp: the
 * TDP iterator under `mmu_lock` held for write).
 */
export class Unmapper implements RaceThread {
  readonly name = 'unmap';
  private phase = 0;

  constructor(
    private readonly mmu: UnmapMmu,
    private readonly gfn: number,
  ) {}

  get done(): boolean {
    return this.phase === 4;
  }

  runnable(): boolean {
    if (this.phase === 0) return this.mmu.lockAvailable();
    if (this.phase === 2) return this.mmu.flushReady === undefined || this.mmu.flushReady();
    return true;
  }

  step(): string {
    const mmu = this.mmu;
    switch (this.phase) {
      case 0:
        if (!mmu.tryLock()) return `spin on ${mmu.lockName}`;
        this.phase = 1;
        return mmu.lockName;
      case 1: {
        const what = mmu.zap(this.gfn);
        this.phase = 2;
        return what;
      }
      case 2:
        mmu.flush();
        this.phase = 3;
        return 'flush remote TLBs';
      default:
        mmu.unlock();
        this.phase = 4;
        return mmu.lockName.replace('mmu_lock', 'mmu_unlock');
    }
  }
}
