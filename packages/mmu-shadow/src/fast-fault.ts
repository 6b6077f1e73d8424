import { hexU64, PFERR_USER, type MmuHost, type Vcpu } from '@vmexit/core';
import {
  FAST_PH_CMPXCHG,
  FAST_PH_END,
  FAST_PH_READ,
  FAST_SPURIOUS,
  isWriteAllowed,
  LocklessFastFault,
  SPTE_MMU_WRITABLE,
  SPTE_U,
  SPTE_W,
  type FastFaultMutation,
  type SptePool,
} from '@vmexit/core/mmu';
import { ShadowMmuError } from './errors.js';
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
 * The fault is core's step machine (`LocklessFastFault`: the cmpxchg with its retries, the statistics), split at
 * KVM's racing points so that the race explorer can interleave it with other threads; this class is its walk of
 * the shadow tables. A normal run steps it to its end at once, allocating nothing.
 */

/** Deliberate faults for the race explorer's tests (core's `FastFaultMutation`). */
export type { FastFaultMutation };

/** One vCPU's fast page fault in progress (one per vCPU; reused): core's step machine over the shadow tables. */
export class FastPageFault extends LocklessFastFault {
  private va = 0;
  private user = false;
  private sp: ShadowPage | null = null;

  constructor(
    readonly s: ShadowMmuState,
    readonly vcpu: Vcpu,
    mutation: FastFaultMutation = {},
  ) {
    super(vcpu.id, mutation);
  }

  protected get pool(): SptePool {
    return this.s.pool;
  }

  protected get host(): MmuHost {
    return this.s.host;
  }

  protected get writableLo(): number {
    return SPTE_W;
  }

  /** Begins a fast page fault on `va` with `errorCode` (KVM `fast_page_fault` entry); `step` runs it. */
  start(va: number, errorCode: number): void {
    this.va = va;
    this.user = (errorCode & PFERR_USER) !== 0;
    this.begin();
  }

  protected enterLockless(): void {
    // walk_shadow_page_lockless_begin: from here no shadow page this vCPU can reach is freed.
    this.s.locklessWalkers++;
  }

  protected exitLockless(): void {
    this.s.locklessWalkers--;
    this.sp = null;
  }

  protected restartWalk(): boolean {
    this.sp = topPage(this.s.stateOf(this.vcpu), this.va);
    return this.sp !== null;
  }

  protected readSpte(): number {
    // for_each_shadow_entry_lockless: one spte read per level.
    const s = this.s;
    const sp = this.sp!;
    // walk_shadow_page_lockless_begin keeps the pages this walk reaches from being freed: the remote flush before
    // kvm_mmu_commit_zap_page frees them waits for this vCPU (race scenario `fast-pf-vs-page-zap`).
    if (s.pages[sp.frame] !== sp)
      throw new ShadowMmuError('E_MMU_STATE', `vCPU ${this.vcpu.id}: the lockless walk read the freed shadow page of gfn ${hexU64(sp.gfn)}`);
    const loc = sp.base + levelIndex(this.va, sp.level);
    const lo = s.pool.lo(loc);
    const hi = s.pool.hi(loc);
    if (!s.isPresent(lo, hi)) return FAST_PH_END;
    if (sp.level > 1) {
      this.sp = s.childPage(lo, hi);
      return FAST_PH_READ;
    }
    this.loc = loc;
    this.lo = lo;
    this.hi = hi;
    // SMAP (SDM Vol. 3A §4.6.1): the hardware walk of the shadow applies the guest's CR4.SMAP and EFLAGS.AC to
    // the spte's U bit, so a supervisor write to a user spte faults P|W whatever the spte's W: neither spurious
    // nor fixed by setting W (either would retry the same fault forever). KVM's `fast_page_fault` never sees
    // such a fault: it runs on direct MMUs only, where a guest's SMAP fault does not exit. The slow path's
    // guest walk injects it.
    if (!this.user && (lo & SPTE_U) !== 0 && this.smapForbids()) return FAST_PH_END;
    if (isWriteAllowed(lo, this.user)) {
      this.result = FAST_SPURIOUS;
      return FAST_PH_END;
    }
    // KVM fast_page_fault: "if (fault->write && is_mmu_writable_spte(spte))": an spte without MMU-writable (a gfn
    // write-protected as a guest page table) is the slow path's (race scenario `fast-pf-vs-shadowing`).
    const mmuWritable = (lo & SPTE_MMU_WRITABLE) !== 0 || this.mutation.ignoreMmuWritable === true;
    if (!sp.direct || !mmuWritable || !isWriteAllowed(lo | SPTE_W, this.user)) {
      // an indirect page, a page-table gfn, or rights the guest does not grant: slow path. An spte the fast
      // path would have fixed but for its indirect page is counted (`pf_fast_indirect`, no KVM stat), so
      // that a comparison shows how many write-protect faults shadow paging leaves under mmu_lock.
      if (!sp.direct && (lo & SPTE_MMU_WRITABLE) !== 0 && isWriteAllowed(lo | SPTE_W, this.user)) s.host.count(this.vcpu.id, 'pf_fast_indirect');
      return FAST_PH_END;
    }
    return FAST_PH_CMPXCHG;
  }

  /** CR4.SMAP with EFLAGS.AC = 0 in the context the hardware walks the shadow under (an explicit supervisor access). */
  private smapForbids(): boolean {
    const ctx = this.s.stateOf(this.vcpu).ctx;
    return ctx.cr4Smap && !ctx.eflagsAc;
  }

  protected markDirty(): void {
    // The gfn of a direct page's spte (kvm_mmu_page_get_gfn).
    const sp = this.sp!;
    if (this.s.dirtyLog !== null) this.s.dirtyLog.markPageDirty(sp.gfn + (this.loc - sp.base), this.vcpu.id);
  }
}
