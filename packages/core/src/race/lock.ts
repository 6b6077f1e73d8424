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
    // The waiting set is empty in a sequential run: skip its delete (a hash lookup per acquisition).
    if (this.waiting.size !== 0) this.waiting.delete(who);
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
