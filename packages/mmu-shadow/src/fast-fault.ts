import { PFERR_USER, type Vcpu } from '@vmexit/core';
import { FAST_FIXED, FAST_MORE, FAST_PF_MAX_RETRY, FAST_SLOW, FAST_SPURIOUS, isWriteAllowed, SPTE_MMU_WRITABLE, SPTE_W, spteCmpxchg } from '@vmexit/core/mmu';
import { levelIndex } from './gpte.js';
import type { ShadowPage } from './page.js';
import { topPage } from './roots.js';
import type { ShadowMmuState } from './state.js';

/**
 * The fast page fault (KVM arch/x86/kvm/mmu/mmu.c `fast_page_fault`, `page_fault_can_be_fast`,
 * `is_access_allowed`, `fast_pf_fix_direct_spte`; Documentation/virt/kvm/locking.rst, "Fast page fault"):
 * a write fault with error code P|W on an spte that is present, not writable, but MMU-writable (it was
 * write-protected only for dirty logging) is fixed by a compare-and-swap of the spte that sets W, without
 * `mmu_lock`, and the page is marked dirty; a fault whose spte already allows the access is spurious (a TLB
 * entry flushed lazily) and returns at once; when the spte changed under the walk, the cmpxchg fails and the
 * walk starts over (at most 4 times, then the slow path).
 *
 * Only direct shadow pages are fixed (here: the pages below a guest large page). An indirect spte's gfn is
 * not stable: locking.rst's ABA case is a gpte changed to map another gfn between the walk and the cmpxchg,
 * after which the old gfn would be marked dirty and the new one written unlogged; a direct page's sptes map
 * `sp.gfn + index` for its whole life (KVM `kvm_mmu_page_get_gfn`). KVM runs the fast path only on direct
 * MMUs (TDP, nonpaging); the outcomes, `pageFaultCanBeFast`, `isWriteAllowed` and `spteCmpxchg` are core's
 * (core/src/mmu/fast-fault.ts), for the TDP MMU's walk to use the same way.
 *
 * The fault is a step machine, split at KVM's racing points (lockless begin, each spte read, the cmpxchg, the
 * dirty mark, lockless end), so that the race explorer can interleave it with other threads; a normal run
 * steps it to its end at once, allocating nothing.
 */

const PH_BEGIN = 0;
const PH_READ = 1;
const PH_CMPXCHG = 2;
const PH_MARK = 3;
const PH_END = 4;
const PH_IDLE = 5;
const PHASE_NAMES = ['lockless begin', 'read spte', 'cmpxchg', 'mark_page_dirty', 'lockless end', 'idle'];

/** Deliberate faults for the race explorer's tests (a broken MMU must be caught). Never set in a run. */
export interface FastFaultMutation {
  /** A plain store of the new spte instead of the compare-and-swap. */
  readonly plainStore?: boolean;
}

/** One vCPU's fast page fault in progress (one per vCPU; reused). */
export class FastPageFault {
  result = FAST_SLOW;
  phase = PH_IDLE;
  private va = 0;
  private user = false;
  private retries = 0;
  private sp: ShadowPage | null = null;
  private loc = 0;
  private lo = 0;
  private hi = 0;
  /** Compare-and-swap failures of this vCPU (KVM has no stat; `pf_fast_cmpxchg_fail` here). */
  cmpxchgFailures = 0;

  constructor(
    readonly s: ShadowMmuState,
    readonly vcpu: Vcpu,
    readonly mutation: FastFaultMutation = {},
  ) {}

  /** What the next step does (for schedules). */
  get phaseName(): string {
    return PHASE_NAMES[this.phase]!;
  }

  get busy(): boolean {
    return this.phase !== PH_IDLE;
  }

  /** Begins a fast page fault on `va` with `errorCode` (KVM `fast_page_fault` entry); `step` runs it. */
  start(va: number, errorCode: number): void {
    this.va = va;
    this.user = (errorCode & PFERR_USER) !== 0;
    this.retries = 0;
    this.result = FAST_SLOW;
    this.phase = PH_BEGIN;
  }

  /** Runs the whole fast path (a normal, sequential run). */
  run(va: number, errorCode: number): number {
    this.start(va, errorCode);
    while (this.step() === FAST_MORE);
    return this.result;
  }

  /** One atomic step; returns FAST_MORE, or the result once the lockless section has ended. */
  step(): number {
    const s = this.s;
    const pool = s.pool;
    switch (this.phase) {
      case PH_BEGIN: {
        // walk_shadow_page_lockless_begin: from here no shadow page this vCPU can reach is freed.
        s.locklessWalkers++;
        this.sp = topPage(s.stateOf(this.vcpu), this.va);
        this.phase = this.sp === null ? PH_END : PH_READ;
        return FAST_MORE;
      }
      case PH_READ: {
        // for_each_shadow_entry_lockless: one spte read per level.
        const sp = this.sp!;
        const loc = sp.base + levelIndex(this.va, sp.level);
        const lo = pool.lo(loc);
        const hi = pool.hi(loc);
        if (!s.isPresent(lo, hi)) {
          this.phase = PH_END;
          return FAST_MORE;
        }
        if (sp.level > 1) {
          this.sp = s.childPage(lo, hi);
          return FAST_MORE;
        }
        this.loc = loc;
        this.lo = lo;
        this.hi = hi;
        if (isWriteAllowed(lo, this.user)) {
          this.result = FAST_SPURIOUS;
          this.phase = PH_END;
        } else if (!sp.direct || (lo & SPTE_MMU_WRITABLE) === 0 || !isWriteAllowed(lo | SPTE_W, this.user)) {
          // an indirect page, a page-table gfn, or rights the guest does not grant: slow path. An spte the fast
          // path would have fixed but for its indirect page is counted (`pf_fast_indirect`, no KVM stat), so
          // that a comparison shows how many write-protect faults shadow paging leaves under mmu_lock.
          if (!sp.direct && (lo & SPTE_MMU_WRITABLE) !== 0 && isWriteAllowed(lo | SPTE_W, this.user)) s.host.count(this.vcpu.id, 'pf_fast_indirect');
          this.phase = PH_END;
        } else {
          this.phase = PH_CMPXCHG;
        }
        return FAST_MORE;
      }
      case PH_CMPXCHG: {
        // fast_pf_fix_direct_spte: try_cmpxchg64(sptep, &old_spte, new_spte).
        const loc = this.loc;
        const newLo = (this.lo | SPTE_W) >>> 0;
        if (this.mutation.plainStore === true) pool.set(loc, newLo, this.hi);
        if (this.mutation.plainStore === true || spteCmpxchg(pool, loc, this.lo, this.hi, newLo, this.hi)) {
          this.phase = PH_MARK;
        } else {
          this.cmpxchgFailures++;
          s.host.count(this.vcpu.id, 'pf_fast_cmpxchg_fail');
          if (++this.retries > FAST_PF_MAX_RETRY) this.phase = PH_END;
          else {
            this.sp = topPage(s.stateOf(this.vcpu), this.va);
            this.phase = this.sp === null ? PH_END : PH_READ;
          }
        }
        return FAST_MORE;
      }
      case PH_MARK: {
        // "if (is_writable_pte(new_spte) && !is_writable_pte(old_spte)) mark_page_dirty_in_slot(...)": the gfn
        // of a direct page's spte (kvm_mmu_page_get_gfn).
        const sp = this.sp!;
        if (s.dirtyLog !== null) s.dirtyLog.markPageDirty(sp.gfn + (this.loc - sp.base), this.vcpu.id);
        this.result = FAST_FIXED;
        this.phase = PH_END;
        return FAST_MORE;
      }
      case PH_END: {
        s.locklessWalkers--;
        this.sp = null;
        this.phase = PH_IDLE;
        const id = this.vcpu.id;
        // kvm_mmu_do_page_fault / fast_page_fault statistics: pf_fast for a fast outcome, and pf_fixed or pf_spurious.
        if (this.result === FAST_FIXED) {
          s.host.count(id, 'pf_fast');
          s.host.count(id, 'pf_fixed');
        } else if (this.result === FAST_SPURIOUS) {
          s.host.count(id, 'pf_fast');
          s.host.count(id, 'pf_spurious');
        }
        return this.result;
      }
      default:
        throw new Error(`vCPU ${this.vcpu.id}: the fast page fault was stepped while idle`);
    }
  }
}
