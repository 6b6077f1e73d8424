import { type Memslot } from '@vmexit/core';
import { ACC_ALL, childRole, makeLeafSpte, spanStart } from '@vmexit/core/mmu';
import { linkPage, newPage, splitHuge } from './map.js';
import { isMmioSpte, isPresentSpte } from './mmio.js';
import type { TdpPage } from './page.js';
import type { TdpMmuState } from './state.js';
import { addLeaf, childOf, isLeaf, removeSubtree, SPAN, spteIndex } from './zap.js';

/** Still running (a step machine's "more"). */
export const MAP_MORE = -1;
/** RET_PF_FIXED: the leaf installed. */
export const MAP_FIXED = 0;
/** RET_PF_SPURIOUS: the leaf the fault would install is there already. */
export const MAP_SPURIOUS = 1;
/** RET_PF_RETRY: a compare-and-swap failed (another thread changed the spte); the guest re-executes the access. */
export const MAP_RETRY = 2;
const RESULT_NAMES = ['fixed', 'spurious', 'retry'];

const PH_READ = 0;
const PH_LINK = 1;
const PH_SPLIT = 2;
const PH_LEAF = 3;
const PH_IDLE = 4;
const PHASE_NAMES = ['read spte', 'cmpxchg link', 'cmpxchg split', 'cmpxchg leaf', 'idle'];

/** Deliberate faults for the race explorer's tests (a broken MMU must be caught). Never set in a run. */
export interface TdpMapMutation {
  /** The slow path stores the leaf without the compare (`tdp_mmu_set_spte_atomic` replaced by a plain store). */
  readonly slowPlainStore?: boolean;
}

/**
 * One vCPU's slow page fault past its checks (KVM tdp_mmu.c `kvm_tdp_mmu_map`, under `mmu_lock` held for read) as
 * a step machine (one per vCPU; reused): the walk from the root towards the goal level for the gfn, creating each
 * missing page table (`tdp_mmu_alloc_sp`, `tdp_mmu_link_sp`) and splitting a huge leaf above the goal
 * (`tdp_mmu_split_huge_page`), then the leaf (`tdp_mmu_map_handle_target_level` with `make_spte`): the frame of the
 * gfn (host-physical addresses of guest RAM are its guest-physical ones), all rights, writable unless the memslot
 * is read-only.
 *
 * Several vCPUs hold the read lock at once, so every spte change is `tdp_mmu_set_spte_atomic`, a `try_cmpxchg64`
 * against the value the walk read (`iter->old_spte`); when another thread (a vCPU's slow path, the lockless fast
 * path) changed the spte in between, it fails and the fault returns RET_PF_RETRY (a link's new page freed,
 * `tdp_mmu_free_sp`: here it is allocated only once the compare succeeded, in the same atomic step), and the guest
 * re-executes the access. The machine is split at those points for the race explorer: a read step (the walk down
 * the present page tables to the spte it must change: under the read lock no thread changes a present non-leaf
 * spte, as zaps take the lock for write) and a compare-and-swap step (link, split, or leaf). A normal run steps it
 * to its end at once, allocating nothing; a cmpxchg there never fails.
 */
export class TdpMapFault {
  /** The outcome once ended (MAP_FIXED, MAP_SPURIOUS, MAP_RETRY). */
  result = MAP_FIXED;
  /** RET_PF_RETRY outcomes of this vCPU (no KVM stat: `kvm_mmu_do_page_fault` counts only `pf_taken` for them). */
  retries = 0;
  private phase = PH_IDLE;
  private gfn = 0;
  private goal = 1;
  private writable = false;
  private sp: TdpPage | null = null;
  private level = 0;
  /** The spte the next compare-and-swap changes, and the value the walk read (`iter->old_spte`). */
  private loc = 0;
  private lo = 0;
  private hi = 0;
  /** The leaf `make_spte` built. */
  private newLo = 0;
  private newHi = 0;

  constructor(
    readonly s: TdpMmuState,
    /** The vCPU whose fault this is (counters and the dirty ring go to it). */
    readonly vcpuId: number,
    /** Deliberate breakage for the explorer's tests (`{}`: none). */
    readonly mutation: TdpMapMutation = {},
  ) {}

  /** What the next step does (for schedules). */
  get phaseName(): string {
    return PHASE_NAMES[this.phase]!;
  }

  /** The outcome's name. */
  get resultName(): string {
    return RESULT_NAMES[this.result]!;
  }

  /** Begins the map of `gfn` (in `slot`) with a leaf at level `goal` (KVM `kvm_mmu_hugepage_adjust`'s `goal_level`). */
  start(gfn: number, slot: Memslot, goal: number): void {
    this.gfn = gfn;
    this.goal = goal;
    this.writable = !slot.readonly;
    this.sp = this.s.root;
    this.level = this.s.rootLevel;
    this.phase = PH_READ;
  }

  /** The whole map (a normal, sequential run). */
  run(gfn: number, slot: Memslot, goal: number): number {
    this.start(gfn, slot, goal);
    let r: number;
    while ((r = this.step()) === MAP_MORE);
    return r;
  }

  /** One atomic step: MAP_MORE, or the outcome. */
  step(): number {
    this.s.initiator = this.vcpuId;
    switch (this.phase) {
      case PH_READ:
        this.phase = this.read();
        break;
      case PH_LINK:
        this.phase = this.unchanged() ? this.link() : this.retry();
        break;
      case PH_SPLIT:
        // tdp_mmu_split_huge_page: the child's 512 sptes are filled before the link, unreachable until it.
        if (this.unchanged()) {
          this.sp = splitHuge(this.s, this.sp!, this.loc, this.level);
          this.level--;
          this.phase = PH_READ;
        } else this.phase = this.retry();
        break;
      case PH_LEAF:
        this.phase = this.mutation.slowPlainStore === true || this.unchanged() ? this.setLeaf() : this.retry();
        break;
      default:
        throw new Error(`vCPU ${this.vcpuId}: the TDP map was stepped while idle`);
    }
    if (this.phase !== PH_IDLE) return MAP_MORE;
    this.sp = null;
    return this.result;
  }

  /**
   * tdp_mmu_for_each_pte: down the present page tables to the spte this fault changes, keeping the value read. At
   * the goal level, `make_spte`, and "if (new_spte == iter->old_spte) ret = RET_PF_SPURIOUS" (another vCPU mapped
   * it, or the TLB held a stale translation; the A/D flags the hardware set do not count). Otherwise a leaf
   * write-protected for dirty logging is replaced by make_spte's writable one.
   */
  private read(): number {
    const s = this.s;
    const pool = s.pool;
    const gfn = this.gfn;
    let sp = this.sp!;
    for (let level = this.level; ; level--) {
      const loc = sp.base + spteIndex(gfn, level);
      const lo = pool.lo(loc);
      const hi = pool.hi(loc);
      const present = isPresentSpte(lo);
      if (level !== this.goal && present && !isLeaf(lo, level)) {
        sp = childOf(s, lo, hi);
        continue;
      }
      this.sp = sp;
      this.level = level;
      this.loc = loc;
      this.lo = lo;
      this.hi = hi;
      if (level !== this.goal) return present ? PH_SPLIT : PH_LINK; // a huge leaf above the goal, or no page table
      const span = SPAN[level]!;
      const w = this.writable;
      makeLeafSpte(s.scratch, spanStart(gfn, span), ACC_ALL, w, w, 0, s.format, level);
      this.newLo = s.scratch.lo;
      this.newHi = s.scratch.hi;
      if (present && isLeaf(lo, level)) {
        const hw = s.format.accessedLo | s.format.dirtyLo;
        if ((this.newLo | hw) === (lo | hw) && this.newHi === hi) {
          this.result = MAP_SPURIOUS;
          return PH_IDLE;
        }
      }
      return PH_LEAF;
    }
  }

  /** `try_cmpxchg64(sptep, &iter->old_spte, ...)`'s compare: the spte still holds the value the walk read. */
  private unchanged(): boolean {
    const pool = this.s.pool;
    return pool.lo(this.loc) === this.lo && pool.hi(this.loc) === this.hi;
  }

  /** A failed cmpxchg: "Force the guest to retry if installing an upper level SPTE failed" (kvm_tdp_mmu_map), or the leaf's. */
  private retry(): number {
    this.retries++;
    this.result = MAP_RETRY;
    return PH_IDLE;
  }

  /** tdp_mmu_alloc_sp + tdp_mmu_init_child_sp + tdp_mmu_link_sp: a new page table below the spte, then the walk goes on in it. */
  private link(): number {
    const s = this.s;
    const sp = this.sp!;
    const level = this.level;
    if (isMmioSpte(this.lo, this.hi)) s.mmioSptes--; // a stale MMIO spte above the goal (a memslot appeared): replaced
    const span = SPAN[level]!;
    const child = newPage(s, spanStart(this.gfn, span), childRole(sp.role, this.loc - sp.base, true, ACC_ALL), this.loc);
    linkPage(s, this.loc, child);
    this.sp = child;
    this.level = level - 1;
    return PH_READ;
  }

  /** tdp_mmu_map_handle_target_level: the leaf is set (its compare succeeded). */
  private setLeaf(): number {
    const s = this.s;
    const lo = this.lo;
    const hi = this.hi;
    const level = this.level;
    let added = true;
    if (isPresentSpte(lo)) {
      // A page table where the leaf belongs is replaced by the huge leaf, its pages freed after a flush
      // (handle_changed_spte -> handle_removed_pt).
      if (isLeaf(lo, level)) added = false;
      else removeSubtree(s, childOf(s, lo, hi));
    } else if (isMmioSpte(lo, hi)) s.mmioSptes--; // stale generation (handle_mmio_page_fault -> RET_PF_INVALID)
    s.setSpte(this.loc, this.newLo, this.newHi);
    if (added) addLeaf(s, level);
    // make_spte: "if ((spte & PT_WRITABLE_MASK) && kvm_slot_dirty_track_enabled(slot)) mark_page_dirty_in_slot()".
    const span = SPAN[level]!;
    if (this.writable && s.dirtyLog !== null) s.dirtyLog.markPageDirty(spanStart(this.gfn, span), this.vcpuId);
    this.result = MAP_FIXED;
    return PH_IDLE;
  }
}
