/**
 * KVM's `mmu_lock` as the model schedules it (arch/x86/kvm/mmu/mmu.c; Documentation/virt/kvm/locking.rst,
 * "Lock ordering"): a spinlock for the shadow MMU. A vCPU that finds it held spins: in a sequential run that
 * never happens (each operation runs to completion); under the race scheduler (race/explore.ts) the
 * spinning thread is not runnable until the holder releases it, and each acquisition that found the lock
 * held is counted as contended (KVM has no such stat; lockstat names it "contentions").
 */
export class MmuLock {
  /** The id of the thread (vCPU, or the host's dirty-log harvester) that holds the lock, or -1. */
  holder = -1;
  /** Acquisitions (`mmu_lock.acquired`), and those that had to wait first (`mmu_lock.contended`). */
  acquired = 0;
  contended = 0;
  /** Threads that found the lock held and have not got it yet (each counted once per acquisition). */
  private readonly waiting = new Set<number>();

  /** Notes that `who` found the lock unavailable (counted as contended once per acquisition). */
  protected markWaiting(who: number): void {
    if (!this.waiting.has(who)) {
      this.waiting.add(who);
      this.contended++;
    }
  }

  /** spin_trylock: takes the lock for `who` and returns true, or returns false (and notes the contention) when it is held. */
  tryAcquire(who: number): boolean {
    if (this.holder === who) throw new Error(`mmu_lock: thread ${who} takes the lock it already holds (a self-deadlock)`);
    if (this.holder !== -1) {
      if (!this.waiting.has(who)) {
        this.waiting.add(who);
        this.contended++;
      }
      return false;
    }
    this.waiting.delete(who);
    this.holder = who;
    this.acquired++;
    return true;
  }

  /** spin_lock in a sequential run: the lock must be free (nothing else runs). */
  acquire(who: number): void {
    if (!this.tryAcquire(who)) throw new Error(`mmu_lock: thread ${who} found the lock held by ${this.holder} in a sequential run`);
  }

  /** spin_unlock: `who` must hold the lock. */
  release(who: number): void {
    if (this.holder !== who) throw new Error(`mmu_lock: thread ${who} releases a lock held by ${this.holder}`);
    this.holder = -1;
  }

  /**
   * Whether `who`, which wants the lock, could take it now (the scheduler runs only threads that can make
   * progress). Asking while another thread holds it is a contention (counted once per acquisition).
   */
  available(who: number): boolean {
    if (this.holder === -1 || this.holder === who) return true;
    if (!this.waiting.has(who)) {
      this.waiting.add(who);
      this.contended++;
    }
    return false;
  }
}

/**
 * The TDP MMU's `mmu_lock`: a reader-writer lock (arch/x86/kvm/mmu/tdp_mmu.c; Documentation/virt/kvm/locking.rst:
 * "the TDP MMU ... takes mmu_lock for read in the page fault path"). vCPU page faults take it for read and run
 * side by side, changing sptes only by compare-and-swap; zaps, memslot changes and the dirty-log ioctls take it
 * for write (`write_lock(&kvm->mmu_lock)`: `KVM_MMU_LOCK` on x86), which waits until no reader holds it. The
 * write side is `MmuLock`'s interface (`tryAcquire`, `acquire`, `release`, `available`), so the dirty-log
 * operations (`GetDirtyLogOp`, `ResetDirtyRingsOp`) take it as they take the shadow MMU's spinlock. `acquired`
 * and `contended` count both sides.
 */
export class MmuRwLock extends MmuLock {
  /** The threads holding the lock for read. */
  private readonly readers = new Set<number>();
  private readonly waitingRead = new Set<number>();

  /** How many threads hold the lock for read. */
  get readCount(): number {
    return this.readers.size;
  }

  /** write_trylock: as `MmuLock.tryAcquire`, but the lock must also have no reader. */
  override tryAcquire(who: number): boolean {
    if (this.readers.has(who)) throw new Error(`mmu_lock: thread ${who} takes the lock for write while it holds it for read (a self-deadlock)`);
    if (this.readers.size > 0 && this.holder === -1) {
      this.markWaiting(who);
      return false;
    }
    return super.tryAcquire(who);
  }

  override available(who: number): boolean {
    if (this.readers.size > 0 && !this.readers.has(who)) {
      this.markWaiting(who);
      return false;
    }
    return super.available(who);
  }

  /** read_trylock: takes the lock for read for `who` unless a writer holds it (then notes the contention). */
  tryAcquireRead(who: number): boolean {
    if (this.readers.has(who)) throw new Error(`mmu_lock: thread ${who} takes the read lock it already holds`);
    if (this.holder !== -1) {
      if (!this.waitingRead.has(who)) {
        this.waitingRead.add(who);
        this.contended++;
      }
      return false;
    }
    this.waitingRead.delete(who);
    this.readers.add(who);
    this.acquired++;
    return true;
  }

  /** read_lock in a sequential run: no writer may hold it. */
  acquireRead(who: number): void {
    if (!this.tryAcquireRead(who)) throw new Error(`mmu_lock: thread ${who} found the lock held for write by ${this.holder} in a sequential run`);
  }

  /** read_unlock: `who` must hold the lock for read. */
  releaseRead(who: number): void {
    if (!this.readers.delete(who)) throw new Error(`mmu_lock: thread ${who} releases a read lock it does not hold`);
  }

  /** Whether `who` could take the lock for read now (no writer holds it); asking while one does is a contention. */
  availableRead(who: number): boolean {
    if (this.holder === -1) return true;
    if (!this.waitingRead.has(who)) {
      this.waitingRead.add(who);
      this.contended++;
    }
    return false;
  }
}
