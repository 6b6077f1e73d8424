import { PFERR_PK, PFERR_PRESENT, PFERR_RSVD, PFERR_WRITE } from '../arch/constants.js';
import type { SptePool } from './pool.js';
import { SPTE_U, SPTE_W } from './spte.js';

/**
 * The parts of KVM's fast page fault (arch/x86/kvm/mmu/mmu.c `fast_page_fault`) that do not depend on how an
 * MMU walks its tables, shared by the shadow MMU (mmu-shadow fast-fault.ts) and, later, the TDP MMU: the
 * outcomes, the entry condition, the access check and the spte compare-and-swap.
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
