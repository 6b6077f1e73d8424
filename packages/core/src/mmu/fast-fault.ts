import { PFERR_PK, PFERR_PRESENT, PFERR_RSVD, PFERR_WRITE } from '../arch/constants.js';
import type { MmuHost } from '../vm/mmu.js';
import type { SptePool } from './pool.js';
import { SPTE_U, SPTE_W } from './spte.js';

/**
 * The parts of KVM's fast page fault (arch/x86/kvm/mmu/mmu.c `fast_page_fault`) that do not depend on how an
 * MMU walks its tables, shared by the shadow MMU and the TDP MMU (mmu-shadow and mmu-tdp fast-fault.ts): the
 * outcomes, the entry condition, the access check, the spte compare-and-swap, and `LocklessFastFault`, the step
 * machine both run (its walk is the MMU's).
 */

/** Still running (a step machine's "more"). */
export const FAST_MORE = 0;
/** RET_PF_FIXED: W set by the cmpxchg, page marked dirty. */
export const FAST_FIXED = 1;
/** RET_PF_SPURIOUS: the spte already allows the access. */
export const FAST_SPURIOUS = 2;
/** RET_PF_INVALID: not fixable without `mmu_lock`; take the slow path. */
export const FAST_SLOW = 3;

/** The most cmpxchg failures before the fast path gives up (KVM: `if (++retry_count > 4) break`). */
export const FAST_PF_MAX_RETRY = 4;

/**
 * KVM `page_fault_can_be_fast` (the 2012 form: "the fault was caused by a write-protection violation"):
 * present, write, no reserved bit (an MMIO or trap spte), no protection-key violation.
 */
export function pageFaultCanBeFast(errorCode: number): boolean {
  return (errorCode & (PFERR_PRESENT | PFERR_WRITE | PFERR_RSVD | PFERR_PK)) === (PFERR_PRESENT | PFERR_WRITE);
}

/**
 * KVM `is_access_allowed` for a write; for a user write on a shadow spte U too (non-leaf shadow sptes grant
 * every right, so the leaf decides).
 */
export function isWriteAllowed(lo: number, user: boolean): boolean {
  return (lo & SPTE_W) !== 0 && (!user || (lo & SPTE_U) !== 0);
}

/**
 * `try_cmpxchg64(sptep, &old, new)`: stores (`newLo`, `newHi`) at `loc` only if the spte still is (`oldLo`,
 * `oldHi`). One atomic step of the model (nothing runs inside a step).
 */
export function spteCmpxchg(pool: SptePool, loc: number, oldLo: number, oldHi: number, newLo: number, newHi: number): boolean {
  if (pool.lo(loc) !== oldLo || pool.hi(loc) !== oldHi) return false;
  pool.set(loc, newLo, newHi);
  return true;
}

/** The lockless begin (`walk_shadow_page_lockless_begin`, the TDP MMU's `kvm_tdp_mmu_walk_lockless_begin`): the next step of a `LocklessFastFault`. */
export const FAST_PH_BEGIN = 0;
/** One spte read of the lockless walk. */
export const FAST_PH_READ = 1;
/** The compare-and-swap that sets W (`fast_pf_fix_direct_spte`). */
export const FAST_PH_CMPXCHG = 2;
/** `mark_page_dirty_in_slot`. */
export const FAST_PH_MARK = 3;
/** The lockless end, and the statistics. */
export const FAST_PH_END = 4;
/** No fast page fault in progress. */
export const FAST_PH_IDLE = 5;
const PHASE_NAMES = ['lockless begin', 'read spte', 'cmpxchg', 'mark_page_dirty', 'lockless end', 'idle'];

/** Deliberate faults for the race explorer's tests (a broken MMU must be caught). Never set in a run. */
export interface FastFaultMutation {
  /** A plain store of the new spte instead of the compare-and-swap. */
  readonly plainStore?: boolean;
  /**
   * The fast path ignores MMU-writable (locking.rst: W is set only when "spte.WRITE_PROTECT = 1", the MMU-writable
   * bit, so that a gfn write-protected as a guest page table, `rmap_write_protect(pt_protect)`, stays read-only).
   */
  readonly ignoreMmuWritable?: boolean;
}

/**
 * One vCPU's fast page fault as a step machine (one per vCPU; reused), split at KVM's racing points (lockless
 * begin, each spte read, the cmpxchg, the dirty mark, lockless end) so that the race explorer can interleave it
 * with other threads; a normal run (`run`) steps it to its end at once, allocating nothing. The compare-and-swap
 * with its retries (at most FAST_PF_MAX_RETRY, then the slow path) and the statistics (`pf_fast` with
 * `pf_fixed` or `pf_spurious`; `pf_fast_cmpxchg_fail`, no KVM stat) are here; the walk, the W bit, the gfn that
 * is marked and the lockless section are the MMU's (mmu-shadow `FastPageFault`, mmu-tdp `TdpFastPageFault`).
 */
export abstract class LocklessFastFault {
  /** The outcome (FAST_SLOW until the fault is fixed or found spurious). */
  result = FAST_SLOW;
  /** The next step (FAST_PH_*). */
  phase = FAST_PH_IDLE;
  /** Compare-and-swap failures of this vCPU (`pf_fast_cmpxchg_fail`). */
  cmpxchgFailures = 0;
  /** The leaf spte the walk found: its location and value (set by `readSpte` before FAST_PH_CMPXCHG). */
  protected loc = 0;
  /** The leaf's low half. */
  protected lo = 0;
  /** The leaf's high half. */
  protected hi = 0;
  private retries = 0;

  constructor(
    /** The vCPU whose fault this is. */
    readonly vcpuId: number,
    /** Deliberate breakage for the explorer's tests (`{}`: none). */
    readonly mutation: FastFaultMutation,
  ) {}

  /** The MMU's frame pool (where the sptes are). */
  protected abstract get pool(): SptePool;
  /** The MMU's host (statistics). */
  protected abstract get host(): MmuHost;
  /** The spte's W bit (low half) the cmpxchg sets. */
  protected abstract get writableLo(): number;
  /** Enters the lockless section (before the first walk). */
  protected abstract enterLockless(): void;
  /** Leaves the lockless section and drops the walk's state. */
  protected abstract exitLockless(): void;
  /** (Re)starts the walk at the root; false: no root to walk (the slow path). */
  protected abstract restartWalk(): boolean;
  /**
   * One spte read of the walk: returns FAST_PH_READ (descend), FAST_PH_CMPXCHG (the leaf is fixable; `loc`,
   * `lo`, `hi` set) or FAST_PH_END (the slow path, or spurious with `result` set to FAST_SPURIOUS).
   */
  protected abstract readSpte(): number;
  /** Marks the page the fixed spte maps dirty. */
  protected abstract markDirty(): void;
  /** After a successful cmpxchg at `loc` (default: nothing). */
  protected onFixed(_loc: number): void {}

  /** What the next step does (for schedules). */
  get phaseName(): string {
    return PHASE_NAMES[this.phase]!;
  }

  /** A fast page fault is in progress. */
  get busy(): boolean {
    return this.phase !== FAST_PH_IDLE;
  }

  /** Resets the machine for a new fault (the subclass's `start` records its address first). */
  protected begin(): void {
    this.retries = 0;
    this.result = FAST_SLOW;
    this.phase = FAST_PH_BEGIN;
  }

  /** Begins the fast path on `addr` (the va or the gpa) with `errorCode`; `step` runs it. */
  abstract start(addr: number, errorCode: number): void;

  /** Runs the whole fast path (a normal, sequential run). */
  run(addr: number, errorCode: number): number {
    this.start(addr, errorCode);
    while (this.step() === FAST_MORE);
    return this.result;
  }

  /** One atomic step; returns FAST_MORE, or the result once the lockless section has ended. */
  step(): number {
    switch (this.phase) {
      case FAST_PH_BEGIN:
        this.enterLockless();
        this.phase = this.restartWalk() ? FAST_PH_READ : FAST_PH_END;
        return FAST_MORE;
      case FAST_PH_READ:
        this.phase = this.readSpte();
        return FAST_MORE;
      case FAST_PH_CMPXCHG: {
        // fast_pf_fix_direct_spte: try_cmpxchg64(sptep, &old_spte, old_spte | PT_WRITABLE_MASK).
        const pool = this.pool;
        const loc = this.loc;
        const newLo = (this.lo | this.writableLo) >>> 0;
        if (this.mutation.plainStore === true) pool.set(loc, newLo, this.hi);
        if (this.mutation.plainStore === true || spteCmpxchg(pool, loc, this.lo, this.hi, newLo, this.hi)) {
          this.onFixed(loc);
          this.phase = FAST_PH_MARK;
        } else {
          this.cmpxchgFailures++;
          this.host.count(this.vcpuId, 'pf_fast_cmpxchg_fail');
          if (++this.retries > FAST_PF_MAX_RETRY) this.phase = FAST_PH_END;
          else this.phase = this.restartWalk() ? FAST_PH_READ : FAST_PH_END;
        }
        return FAST_MORE;
      }
      case FAST_PH_MARK:
        // "if (is_writable_pte(new_spte) && !is_writable_pte(old_spte)) mark_page_dirty_in_slot(...)".
        this.markDirty();
        this.result = FAST_FIXED;
        this.phase = FAST_PH_END;
        return FAST_MORE;
      case FAST_PH_END: {
        this.exitLockless();
        this.phase = FAST_PH_IDLE;
        const id = this.vcpuId;
        // kvm_mmu_do_page_fault / fast_page_fault statistics: pf_fast for a fast outcome, and pf_fixed or pf_spurious.
        if (this.result === FAST_FIXED) {
          this.host.count(id, 'pf_fast');
          this.host.count(id, 'pf_fixed');
        } else if (this.result === FAST_SPURIOUS) {
          this.host.count(id, 'pf_fast');
          this.host.count(id, 'pf_spurious');
        }
        return this.result;
      }
      default:
        throw new Error(`vCPU ${this.vcpuId}: the fast page fault was stepped while idle`);
    }
  }
}
