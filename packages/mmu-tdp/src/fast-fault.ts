import { pageNumber, type MmuHost } from '@vmexit/core';
import {
  FAST_PH_CMPXCHG,
  FAST_PH_END,
  FAST_PH_READ,
  FAST_SPURIOUS,
  LocklessFastFault,
  spanStart,
  type FastFaultMutation,
  type SptePool,
} from '@vmexit/core/mmu';
import { isPresentSpte } from './mmio.js';
import type { TdpPage } from './page.js';
import type { TdpMmuState } from './state.js';
import { childOf, isLeaf, SPAN, spteIndex } from './zap.js';

/**
 * The fast page fault on the TDP MMU (KVM arch/x86/kvm/mmu/mmu.c `fast_page_fault` with the TDP MMU's lockless
 * walk, tdp_mmu.c `kvm_tdp_mmu_walk_lockless_begin` / `kvm_tdp_mmu_fast_pf_get_last_sptep`): a write fault (an
 * EPT violation or #NPF with error code P|W) on a leaf spte that is present, not writable, but MMU-writable
 * (write-protected only for dirty logging) is fixed by a compare-and-swap that sets W, without `mmu_lock`, and
 * the page is marked dirty; a leaf that already allows the write makes the fault spurious (a combined mapping
 * flushed lazily); when the spte changed under the walk, the cmpxchg fails and the walk starts again (at most 4
 * times), then the slow path. Every TDP spte is direct (it maps `sp.gfn + index * span` for its whole life,
 * `tdp_iter.gfn`), so the gfn that is marked is the one written: no ABA case as with indirect shadow pages.
 * A huge leaf in a logged slot is left to the slow path ("Do not fix write-permission on the large spte when
 * dirty logging is enabled"), which maps the gfn at 4 KiB.
 *
 * The outcomes, the entry check (`pageFaultCanBeFast`) and the step machine (`LocklessFastFault`: the cmpxchg
 * with its retries, the statistics) are core's (core/src/mmu/fast-fault.ts), shared with the shadow MMU; this
 * class is its walk of the TDP tables. The machine is split at KVM's racing points (lockless begin, each spte
 * read of the walk, the cmpxchg, the dirty mark, lockless end), for the race explorer; a normal run steps it to
 * its end at once, allocating nothing.
 */

/** Deliberate faults for the race explorer's tests (a broken MMU must be caught): core's `FastFaultMutation`. Never set in a run. */
export type TdpFastFaultMutation = FastFaultMutation;

/** One vCPU's fast page fault on the TDP MMU (one per vCPU; reused): core's step machine over the TDP tables. */
export class TdpFastPageFault extends LocklessFastFault {
  private gfn = 0;
  private sp: TdpPage | null = null;
  private level = 0;

  constructor(
    readonly s: TdpMmuState,
    vcpuId: number,
    mutation: TdpFastFaultMutation = {},
  ) {
    super(vcpuId, mutation);
  }

  protected get pool(): SptePool {
    return this.s.pool;
  }

  protected get host(): MmuHost {
    return this.s.host;
  }

  protected get writableLo(): number {
    return this.s.format.writableLo;
  }

  /** Begins a fast page fault on `gpa` (KVM `fast_page_fault` entry; the caller checked `pageFaultCanBeFast`). */
  start(gpa: number): void {
    this.gfn = pageNumber(gpa);
    this.begin();
  }

  protected enterLockless(): void {
    // kvm_tdp_mmu_walk_lockless_begin: rcu_read_lock(), so no page table this walk reaches is freed under it.
  }

  protected exitLockless(): void {
    // kvm_tdp_mmu_walk_lockless_end: rcu_read_unlock().
    this.sp = null;
  }

  protected restartWalk(): boolean {
    this.sp = this.s.root;
    this.level = this.s.rootLevel;
    return true;
  }

  protected readSpte(): number {
    // kvm_tdp_mmu_fast_pf_get_last_sptep: tdp_mmu_for_each_pte, one spte read per level.
    const s = this.s;
    const f = s.format;
    const sp = this.sp!;
    const level = this.level;
    const loc = sp.base + spteIndex(this.gfn, level);
    const lo = s.pool.lo(loc);
    const hi = s.pool.hi(loc);
    if (!isPresentSpte(lo)) return FAST_PH_END;
    if (!isLeaf(lo, level)) {
      this.sp = childOf(s, lo, hi);
      this.level = level - 1;
      return FAST_PH_READ;
    }
    this.loc = loc;
    this.lo = lo;
    this.hi = hi;
    const mmuWritable = (lo & f.mmuWritableLo) !== 0 || (hi & f.mmuWritableHi) !== 0 || this.mutation.ignoreMmuWritable === true;
    if ((lo & f.writableLo) !== 0) {
      this.result = FAST_SPURIOUS; // is_access_allowed: the spte already allows the write
      return FAST_PH_END;
    }
    if (!mmuWritable || (level > 1 && this.logged())) return FAST_PH_END; // read-only RAM, or a huge leaf in a logged slot: the slow path
    return FAST_PH_CMPXCHG;
  }

  protected override onFixed(loc: number): void {
    this.s.changedFrames.add(Math.floor(loc / 512));
  }

  protected markDirty(): void {
    // mark_page_dirty_in_slot(fault->gfn): the leaf's first gfn (a huge leaf is fixed only outside a logged slot).
    const span = SPAN[this.level]!;
    if (this.s.dirtyLog !== null) this.s.dirtyLog.markPageDirty(spanStart(this.gfn, span), this.vcpuId);
  }

  /** Whether the faulting gfn's memslot logs dirty pages (KVM `kvm_slot_dirty_track_enabled(fault->slot)`). */
  private logged(): boolean {
    const slot = this.s.memory.slotForGfn(this.gfn);
    return slot !== null && this.s.dirtyLog !== null && this.s.dirtyLog.isLogging(slot);
  }
}
