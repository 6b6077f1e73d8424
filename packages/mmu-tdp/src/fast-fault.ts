import { PAGE_SIZE } from '@vmexit/core';
import { FAST_FIXED, FAST_MORE, FAST_PF_MAX_RETRY, FAST_SLOW, FAST_SPURIOUS, spteCmpxchg } from '@vmexit/core/mmu';
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
 * The outcomes, the entry check (`pageFaultCanBeFast`) and `spteCmpxchg` are core's (core/src/mmu/fast-fault.ts),
 * shared with the shadow MMU. The fault is a step machine split at KVM's racing points (lockless begin, each
 * spte read of the walk, the cmpxchg, the dirty mark, lockless end), for the race explorer; a normal run steps
 * it to its end at once, allocating nothing.
 */

const PH_BEGIN = 0;
const PH_READ = 1;
const PH_CMPXCHG = 2;
const PH_MARK = 3;
const PH_END = 4;
const PH_IDLE = 5;
const PHASE_NAMES = ['lockless begin', 'read spte', 'cmpxchg', 'mark_page_dirty', 'lockless end', 'idle'];

/** Deliberate faults for the race explorer's tests (a broken MMU must be caught). Never set in a run. */
export interface TdpFastFaultMutation {
  /** A plain store of the new spte instead of the compare-and-swap. */
  readonly plainStore?: boolean;
}

/** One vCPU's fast page fault on the TDP MMU (one per vCPU; reused). */
export class TdpFastPageFault {
  result = FAST_SLOW;
  phase = PH_IDLE;
  private gfn = 0;
  private retries = 0;
  private sp: TdpPage | null = null;
  private level = 0;
  private loc = 0;
  private lo = 0;
  private hi = 0;
  /** Compare-and-swap failures of this vCPU (`pf_fast_cmpxchg_fail`). */
  cmpxchgFailures = 0;

  constructor(
    readonly s: TdpMmuState,
    readonly vcpuId: number,
    readonly mutation: TdpFastFaultMutation = {},
  ) {}

  /** What the next step does (for schedules). */
  get phaseName(): string {
    return PHASE_NAMES[this.phase]!;
  }

  /** Begins a fast page fault on `gpa` (KVM `fast_page_fault` entry; the caller checked `pageFaultCanBeFast`). */
  start(gpa: number): void {
    this.gfn = Math.floor(gpa / PAGE_SIZE);
    this.retries = 0;
    this.result = FAST_SLOW;
    this.phase = PH_BEGIN;
  }

  /** Runs the whole fast path (a normal, sequential run). */
  run(gpa: number, _errorCode: number): number {
    this.start(gpa);
    while (this.step() === FAST_MORE);
    return this.result;
  }

  private restart(): void {
    this.sp = this.s.root;
    this.level = this.s.rootLevel;
    this.phase = PH_READ;
  }

  /** One atomic step; returns FAST_MORE, or the result once the lockless section has ended. */
  step(): number {
    const s = this.s;
    const pool = s.pool;
    const f = s.format;
    switch (this.phase) {
      case PH_BEGIN:
        // kvm_tdp_mmu_walk_lockless_begin: rcu_read_lock(), so no page table this walk reaches is freed under it.
        this.restart();
        return FAST_MORE;
      case PH_READ: {
        // kvm_tdp_mmu_fast_pf_get_last_sptep: tdp_mmu_for_each_pte, one spte read per level.
        const sp = this.sp!;
        const level = this.level;
        const loc = sp.base + spteIndex(this.gfn, level);
        const lo = pool.lo(loc);
        const hi = pool.hi(loc);
        if (!isPresentSpte(lo)) {
          this.phase = PH_END;
          return FAST_MORE;
        }
        if (!isLeaf(lo, level)) {
          this.sp = childOf(s, lo, hi);
          this.level = level - 1;
          return FAST_MORE;
        }
        this.loc = loc;
        this.lo = lo;
        this.hi = hi;
        const mmuWritable = (lo & f.mmuWritableLo) !== 0 || (hi & f.mmuWritableHi) !== 0;
        if ((lo & f.writableLo) !== 0) {
          this.result = FAST_SPURIOUS; // is_access_allowed: the spte already allows the write
          this.phase = PH_END;
        } else if (!mmuWritable || (level > 1 && this.logged())) {
          this.phase = PH_END; // read-only RAM, or a huge leaf in a logged slot: the slow path
        } else {
          this.phase = PH_CMPXCHG;
        }
        return FAST_MORE;
      }
      case PH_CMPXCHG: {
        // fast_pf_fix_direct_spte: try_cmpxchg64(sptep, &old_spte, old_spte | PT_WRITABLE_MASK).
        const loc = this.loc;
        const newLo = (this.lo | f.writableLo) >>> 0;
        if (this.mutation.plainStore === true) pool.set(loc, newLo, this.hi);
        if (this.mutation.plainStore === true || spteCmpxchg(pool, loc, this.lo, this.hi, newLo, this.hi)) {
          s.changedFrames.add(Math.floor(loc / 512));
          this.phase = PH_MARK;
        } else {
          this.cmpxchgFailures++;
          s.host.count(this.vcpuId, 'pf_fast_cmpxchg_fail');
          if (++this.retries > FAST_PF_MAX_RETRY) this.phase = PH_END;
          else this.restart();
        }
        return FAST_MORE;
      }
      case PH_MARK: {
        // "if (is_writable_pte(new_spte) && !is_writable_pte(old_spte)) mark_page_dirty_in_slot(vcpu->kvm, fault->slot, fault->gfn)".
        const span = SPAN[this.level]!;
        if (s.dirtyLog !== null) s.dirtyLog.markPageDirty(Math.floor(this.gfn / span) * span, this.vcpuId);
        this.result = FAST_FIXED;
        this.phase = PH_END;
        return FAST_MORE;
      }
      case PH_END: {
        // kvm_tdp_mmu_walk_lockless_end: rcu_read_unlock(). Statistics: pf_fast, and pf_fixed or pf_spurious.
        this.sp = null;
        this.phase = PH_IDLE;
        const id = this.vcpuId;
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
        throw new Error(`vCPU ${this.vcpuId}: the fast page fault was stepped while idle`);
    }
  }

  /** Whether the faulting gfn's memslot logs dirty pages (KVM `kvm_slot_dirty_track_enabled(fault->slot)`). */
  private logged(): boolean {
    const slot = this.s.memory.slotForGfn(this.gfn);
    return slot !== null && this.s.dirtyLog !== null && this.s.dirtyLog.isLogging(slot);
  }
}
