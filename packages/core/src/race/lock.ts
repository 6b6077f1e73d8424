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
  /**
   * Modelled time of sequential runs with several vCPUs (LockTimeline): each vCPU acquisition is placed on
   * its vCPU's modelled clock, and one that overlaps another vCPU's critical section spins. Null: no timing
   * (a sequential acquisition never waits).
   */
  timeline: LockTimeline | null = null;
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
    // The waiting set is empty in a sequential run: skip its delete (a hash lookup per acquisition).
    if (this.waiting.size !== 0) this.waiting.delete(who);
    this.holder = who;
    this.acquired++;
    return true;
  }

  /**
   * spin_lock in a sequential run: the lock must be free (nothing else runs). Returns the modelled cycles
   * `who` spun first (its `timeline`'s answer; 0 without one, and for the host's threads, which have no
   * clock); an acquisition that spun is counted as contended.
   */
  acquire(who: number): number {
    if (!this.tryAcquire(who)) throw new Error(`mmu_lock: thread ${who} found the lock held by ${this.holder} in a sequential run`);
    if (this.timeline === null || who < 0) return 0;
    const spin = this.timeline.acquire(who);
    if (spin > 0) this.contended++;
    return spin;
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

/**
 * Critical sections remembered per vCPU (a power of two; older ones are forgotten, so an acquisition further
 * behind another vCPU's clock than that vCPU's last 65,536 sections sees no contention from it). The vCPUs'
 * clocks drift apart as the scheduler runs one quantum after another (by tens of millions of cycles in a
 * kbuild of 4 vCPUs, some 25,000 sections), so the history must span that drift.
 */
const TIMELINE_HISTORY = 1 << 16;
/** Sections a vCPU's history starts with; it doubles as needed up to TIMELINE_HISTORY. */
const TIMELINE_INITIAL = 1024;

/**
 * When `mmu_lock` would have been contended had the vCPUs run in parallel, for sequential runs: the model runs
 * one vCPU's quantum after another, but each vCPU has a modelled clock (`clock(vcpu)`: its cycles under the
 * cost model, guest accesses included, as the caller defines it). An acquisition at clock t holds the lock over
 * [t, t + holdCycles) (the slow path's critical section); when that overlaps a critical section another vCPU
 * already recorded, the two would have met at the lock and one of them spun for the length of the overlap (a
 * spinlock: the later one waits until the other releases). The vCPU simulated second is the one charged,
 * whichever arrived first, so the total spin is right and its split between vCPUs is approximate; its
 * critical section then starts after the spin, and the check repeats against the other vCPUs. The caller's
 * clock must include the cycles each acquisition returned (the MMU counts them as `mmu_lock.spin_cycles`,
 * which the cost model prices one for one); `spun` keeps their sum per vCPU. Nothing else changes: the guest does the same accesses in the same order,
 * so counters other than the lock's, and the memory digest, are those of an untimed run. With one vCPU
 * nothing ever spins.
 */
export class LockTimeline {
  /** Per vCPU: its last critical sections [start, end), in order (a ring of `starts[v].length`, a power of two). */
  private readonly starts: Float64Array[];
  private readonly ends: Float64Array[];
  private readonly count: Int32Array;
  /** Cycles each vCPU spun so far. */
  readonly spun: Float64Array;

  /**
   * @param vcpus the vCPUs (ids 0..vcpus-1)
   * @param holdCycles how long each acquisition holds the lock (its critical section), in modelled cycles
   * @param clock a vCPU's modelled clock now, including the cycles its earlier acquisitions spun
   */
  constructor(
    /** The vCPUs (ids 0..vcpus-1). */
    readonly vcpus: number,
    /** How long each acquisition holds the lock, in modelled cycles. */
    readonly holdCycles: number,
    /** A vCPU's modelled clock now, including the cycles its earlier acquisitions spun. */
    readonly clock: (vcpu: number) => number,
  ) {
    if (!(holdCycles > 0)) throw new Error(`LockTimeline: holdCycles must be positive, not ${holdCycles}`);
    this.starts = Array.from({ length: vcpus }, () => new Float64Array(TIMELINE_INITIAL));
    this.ends = Array.from({ length: vcpus }, () => new Float64Array(TIMELINE_INITIAL));
    this.count = new Int32Array(vcpus);
    this.spun = new Float64Array(vcpus);
  }

  /** Places an acquisition of `vcpu` at its clock; returns the cycles it spins first (0: the lock was free). */
  acquire(vcpu: number): number {
    const c = this.count[vcpu]!;
    // A vCPU's clock never goes back, and its own critical sections do not overlap (nor count as a spin).
    const prevEnd = c > 0 ? this.ends[vcpu]![(c - 1) & (this.ends[vcpu]!.length - 1)]! : -Infinity;
    const t = Math.max(this.clock(vcpu), prevEnd);
    const h = this.holdCycles;
    let s = t;
    // At most one overlap per other vCPU moves s forward each pass; a pass without overlap ends it.
    for (let pass = 0; pass <= this.vcpus; pass++) {
      let moved = false;
      for (let o = 0; o < this.vcpus; o++) {
        if (o === vcpu) continue;
        const k = this.lastStartingBefore(o, s + h);
        if (k < 0) continue;
        const i = k & (this.starts[o]!.length - 1);
        const a = this.starts[o]![i]!;
        const b = this.ends[o]![i]!;
        if (b <= s) continue;
        // [a, b) overlaps [s, s + h): the overlap is the wait of whichever came second.
        s += Math.min(b, s + h) - Math.max(a, s);
        moved = true;
      }
      if (!moved) break;
    }
    if (c === this.starts[vcpu]!.length && c < TIMELINE_HISTORY) this.grow(vcpu);
    const i = c & (this.starts[vcpu]!.length - 1);
    this.starts[vcpu]![i] = s;
    this.ends[vcpu]![i] = s + h;
    this.count[vcpu] = c + 1;
    const spin = s - t;
    this.spun[vcpu] = this.spun[vcpu]! + spin;
    return spin;
  }

  /** Doubles vCPU `v`'s history (it is full and has never wrapped: sequence numbers are indexes). */
  private grow(v: number): void {
    const n = this.starts[v]!.length * 2;
    const starts = new Float64Array(n);
    const ends = new Float64Array(n);
    starts.set(this.starts[v]!);
    ends.set(this.ends[v]!);
    this.starts[v] = starts;
    this.ends[v] = ends;
  }

  /** The sequence number of vCPU `o`'s last remembered critical section that starts before `x`, or -1. */
  private lastStartingBefore(o: number, x: number): number {
    const c = this.count[o]!;
    const starts = this.starts[o]!;
    const mask = starts.length - 1;
    let lo = Math.max(0, c - starts.length);
    let hi = c - 1;
    if (hi < lo || starts[lo & mask]! >= x) return -1;
    while (lo < hi) {
      const mid = lo + Math.ceil((hi - lo) / 2);
      if (starts[mid & mask]! < x) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}
