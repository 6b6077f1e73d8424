import * as core from '@vmexit/core';
import {
  type Mmu,
  type MmuHost,
  type NonPresentSpteEncoding,
  type ExitResolution,
  type DirtyLog,
  type DirtyLogMmu,
  type FastPageFaultControl,
  type Memslot,
  type Vcpu,
} from '@vmexit/core';
import * as coreMmu from '@vmexit/core/mmu';
import { auditShadowMmu } from './audit.js';
import { HOST_MAXPHYADDR } from './context.js';
import { ShadowMmuError } from './errors.js';
import { DirtyMarkingMemory, flushForLog, markGpaDirty, slotRemoveWriteAccess, writeProtectMasked } from './dirty-log.js';
import { FastPageFault } from './fast-fault.js';
import { pageFault } from './fault.js';
import type { ShadowPage } from './page.js';
import { commitZap, defaultMaxMmuPages, getPage, prepareZap, zapOldest } from './page-cache.js';
import { pteWrite } from './pte-write.js';
import { crWrite, finish, loadRoots } from './roots.js';
import { ShadowMmuState, VcpuShadowState } from './state.js';
import { invlpgSync, syncPage } from './unsync.js';

// Module-local copies of the imported constants and helpers the exit path uses. V8 folds a module's own constants into
// its compiled code, but reads an imported binding through its module cell, with a check, on every use (core
// DESIGN.md, "Speed").
const { FAST_FIXED, FAST_SPURIOUS, growPageCache, pageFaultCanBeFast, SPTE_P, SPTES_PER_PAGE } = coreMmu;
const { hexU64, pageNumber, RESUME } = core;

/** How the shadow MMU is sized: its page budget (KVM's n_max_mmu_pages). */
export interface ShadowMmuOptions {
  /** n_max_mmu_pages (KVM_SET_NR_MMU_PAGES); default `defaultMaxMmuPages(guest pages)`. */
  readonly maxMmuPages?: number;
  /**
   * KVM's fast page fault (fast-fault.ts): write-protect faults under dirty logging on direct pages are fixed
   * by a cmpxchg without `mmu_lock`. Default off (the `fast-page-fault` policy turns it on).
   */
  readonly fastPageFault?: boolean;
}

/** Bits 51:HOST_MAXPHYADDR of an spte's high half: reserved in every entry format under the host MAXPHYADDR. */
const HOST_RSVD_HI = ((0xfffff >>> (HOST_MAXPHYADDR - 32)) << (HOST_MAXPHYADDR - 32)) >>> 0;

/**
 * The KVM-style shadow MMU (arch/x86/kvm/mmu/mmu.c, paging_tmpl.h; Documentation/virt/kvm/x86/mmu.rst): the
 * `Mmu` and `NonPresentSpteEncoding` interfaces over the shadow MMU's state. Each method is the entry of one
 * mechanism (fault.ts, pte-write.ts, roots.ts, unsync.ts, page-cache.ts); DESIGN.md walks through them.
 */
export class ShadowMmu extends ShadowMmuState implements Mmu, NonPresentSpteEncoding, DirtyLogMmu, FastPageFaultControl {
  readonly name = 'shadow' as const;
  private readonly options: ShadowMmuOptions;
  /** Whether write-protect faults under dirty logging try the fast path first. */
  fastPageFault: boolean;
  /** Each vCPU's fast page fault (by vCPU id). */
  readonly fastFaults: FastPageFault[] = [];

  constructor(options: ShadowMmuOptions = {}) {
    super();
    this.options = options;
    this.fastPageFault = options.fastPageFault === true;
  }

  // -------------------------------------------------------------------------------------------------
  // Mmu

  init(host: MmuHost): void {
    if (host.vcpus.length === 0) throw new ShadowMmuError('E_MMU_STATE', 'the shadow MMU needs at least one vCPU');
    const memory = host.vcpus[0]!.memory;
    const max = this.options.maxMmuPages ?? defaultMaxMmuPages(memory.pages);
    if (!Number.isInteger(max) || max < 8) {
      throw new ShadowMmuError('E_MMU_OPTION', `maxMmuPages must be an integer of at least 8 (4 PAE roots and a walk's pages), not ${max}`);
    }
    this.initState(host, memory, max);
  }

  attachVcpu(vcpu: Vcpu): void {
    const st = new VcpuShadowState(vcpu);
    this.states[vcpu.id] = st;
    this.floodCountsRead = -1; // the new vCPU's route may see flood events
    this.fastFaults[vcpu.id] = new FastPageFault(this, vcpu);
    st.ctx.syncFromGuest();
    vcpu.activeCtx = st.ctx;
    vcpu.activeMem = this.shadowMemory;
    this.initiator = vcpu.id;
    loadRoots(this, st);
    finish(this);
  }

  handlePageFault(vcpu: Vcpu, address: number, errorCode: number): ExitResolution {
    // kvm_mmu_page_fault: the fast path first, without mmu_lock (only while some slot logs dirty pages, so that
    // it costs nothing otherwise), then FNAME(page_fault) under mmu_lock.
    const log = this.dirtyLog;
    if (this.fastPageFault && log !== null && log.loggingSlots > 0 && pageFaultCanBeFast(errorCode)) {
      const r = this.fastFaults[vcpu.id]!.run(address, errorCode);
      if (r === FAST_FIXED || r === FAST_SPURIOUS) {
        this.stateOf(vcpu).bump(this.host, 5 /* pf_taken */); // counted by pageFault otherwise
        this.enterGuest(vcpu.id);
        return RESUME;
      }
    }
    this.lockFor(vcpu.id);
    let res: ExitResolution;
    try {
      res = pageFault(this, vcpu, address, errorCode);
    } finally {
      this.mmuLock.release(vcpu.id);
    }
    this.enterGuest(vcpu.id);
    return res;
  }

  trackWrite(vcpu: Vcpu, gpa: number, size: number, oldLo: number, oldHi: number, newLo: number, newHi: number): void {
    // emulator_write_phys -> kvm_vcpu_write_guest: mark_page_dirty; then kvm_mmu_track_write under mmu_lock.
    markGpaDirty(this, gpa, vcpu.id);
    this.lockFor(vcpu.id);
    try {
      // The halves as int32 (`| 0`): an unsigned half with bit 31 set is no small integer to V8, and passing it to
      // pteWrite would box it in a new heap number; pteWrite reads them with bit operations only.
      pteWrite(this, vcpu, gpa, size, oldLo | 0, oldHi | 0, newLo | 0, newHi | 0, true); // the emulator's store was the last thing it did
    } finally {
      this.mmuLock.release(vcpu.id);
    }
    this.enterGuest(vcpu.id);
  }

  /**
   * The end of an exit whose handling may have pushed to the vCPU's dirty ring, before the guest runs again
   * (KVM `vcpu_enter_guest` -> `kvm_dirty_ring_check_request`): a soft-full ring exits to user space with
   * KVM_EXIT_DIRTY_RING_FULL (DirtyLog.enterGuest), counted as `dirty_ring_full_exits` (KVM's exit reason, named
   * as its `mmio_exits`). Checked after every exit whose handling may mark pages: page faults, emulated writes,
   * and the CR writes and INVLPGs that sync unsync pages (KVM checks the request before every entry).
   */
  private enterGuest(id: number): void {
    if (this.dirtyLog?.enterGuest(id) === true) this.host.count(id, 'dirty_ring_full_exits');
  }

  /**
   * Takes `mmu_lock` for vCPU `id` in a sequential run. The lock counts every acquisition itself; the vCPU's
   * `mmu_lock.acquired` counter is kept in runs with a dirty log attached (the runs that compare the fast page
   * fault), so that the counter sets of other runs, and their golden results, stay as they were. With a
   * `LockTimeline` on the lock (runs of several vCPUs that model the time, see core's race/lock.ts), an
   * acquisition that would have met another vCPU's critical section counts `mmu_lock.contended` and the
   * cycles it spun, `mmu_lock.spin_cycles` (which the cost model prices).
   */
  private lockFor(id: number): void {
    const spin = this.mmuLock.acquire(id);
    if (this.dirtyLog !== null) this.host.count(id, 'mmu_lock.acquired');
    if (spin > 0) {
      this.host.count(id, 'mmu_lock.contended');
      this.host.count(id, 'mmu_lock.spin_cycles', spin);
    }
  }

  crWritten(vcpu: Vcpu, cr: number, _oldValue: number, exited: boolean): void {
    crWrite(this, vcpu, cr, exited);
    // A CR3 write that syncs unsync pages may push to the ring (make_spte): checked before the guest re-enters.
    if (exited) this.enterGuest(vcpu.id);
  }

  invlpg(vcpu: Vcpu, va: number, exited: boolean): void {
    // kvm_mmu_invlpg: the architectural TLB invalidation was done by the vCPU; an unsync level-1 page that
    // maps `va` gets its spte re-read from the gpte (FNAME(invlpg)). With every page synced there is nothing
    // to do. Counted when it exited.
    if (exited) this.host.count(vcpu.id, 'invlpg');
    if (this.unsyncPages.size === 0) return;
    if (!exited)
      throw new ShadowMmuError(
        'E_MMU_STATE',
        `vCPU ${vcpu.id}: INVLPG ${hexU64(va)} did not exit while ${this.unsyncPages.size} shadow pages are unsync: unsync pages need INVLPG exiting`,
      );
    const st = this.stateOf(vcpu);
    this.initiator = vcpu.id;
    invlpgSync(this, st, va);
    finish(this);
    this.enterGuest(vcpu.id);
  }

  emulationFailed(vcpu: Vcpu, gpa: number): boolean {
    // kvm_mmu_unprotect_page: a page table recycled into a data page; zap every shadow page of the gfn.
    this.initiator = vcpu.id;
    const pages = this.indirectPagesOf(pageNumber(gpa));
    for (const sp of pages) prepareZap(this, sp);
    finish(this);
    return pages.length > 0;
  }

  /** `--audit`: checks every invariant of the MMU (see audit.ts); throws ShadowMmuError E_MMU_AUDIT at the first violation. */
  audit(): void {
    auditShadowMmu(this);
  }

  /** FastPageFaultControl: the `fast-page-fault` policy turns the fast path on. */
  setFastPageFault(on: boolean): void {
    this.fastPageFault = on;
  }

  // -------------------------------------------------------------------------------------------------
  // DirtyLogMmu (dirty-log.ts)

  /** Binds the VM's dirty log: this MMU write-protects for it and marks the pages it makes writable. */
  attachDirtyLog(log: DirtyLog): void {
    this.dirtyLog = log;
    this.dirtyMarkingMemory = new DirtyMarkingMemory(this, this.memory);
    log.attach(this);
  }

  slotRemoveWriteAccess(slot: Memslot): boolean {
    return slotRemoveWriteAccess(this, slot);
  }

  writeProtectMasked(slot: Memslot, offset: number, mask: number): boolean {
    return writeProtectMasked(this, slot, offset, mask);
  }

  flushRemoteTlbs(initiator: number): void {
    flushForLog(this, initiator);
  }

  // -------------------------------------------------------------------------------------------------
  // NonPresentSpteEncoding (KVM c7addb902054, "Allow not-present guest page faults to bypass kvm")

  /**
   * The value of a non-present spte that must exit (`trap`) and of one whose gpte is known not present
   * (`notrap`). `notrap` must have P=0; `trap` must equal `notrap` (no distinction) or have P=1 and a bit in
   * 51:46, reserved under the host MAXPHYADDR in every entry format, so the hardware walk faults P=1|RSVD.
   * Every non-present spte already in the pool becomes the new trap value.
   */
  setNonPresentSptes(trapLo: number, trapHi: number, notrapLo: number, notrapHi: number): void {
    trapLo >>>= 0;
    trapHi >>>= 0;
    notrapLo >>>= 0;
    notrapHi >>>= 0;
    const hex64 = (lo: number, hi: number): string => `0x${hi.toString(16).padStart(8, '0')}${lo.toString(16).padStart(8, '0')}`;
    if ((notrapLo & SPTE_P) !== 0) throw new ShadowMmuError('E_MMU_OPTION', `the notrap spte ${hex64(notrapLo, notrapHi)} has P set: it must fault with P=0`);
    const same = trapLo === notrapLo && trapHi === notrapHi;
    if (!same && ((trapLo & SPTE_P) === 0 || (trapHi & HOST_RSVD_HI) === 0)) {
      throw new ShadowMmuError(
        'E_MMU_OPTION',
        `the trap spte ${hex64(trapLo, trapHi)} must have P and a reserved bit in 51:${HOST_MAXPHYADDR} set, so that it faults with P=1|RSVD (KVM uses 0xfffffffffffff001)`,
      );
    }
    const pool = this.pool;
    for (const sp of [...this.active, ...this.invalidRoots]) {
      for (let i = 0; i < SPTES_PER_PAGE; i++) {
        const loc = sp.base + i;
        if (!this.isPresent(pool.lo(loc), pool.hi(loc))) pool.set(loc, trapLo, trapHi);
      }
    }
    this.trapLo = trapLo;
    this.trapHi = trapHi;
    this.notrapLo = notrapLo;
    this.notrapHi = notrapHi;
  }

  // -------------------------------------------------------------------------------------------------
  // The page budget, and the mechanisms tests and tools drive directly

  /** KVM `kvm_mmu_change_mmu_pages` (KVM_SET_NR_MMU_PAGES): a new budget; zaps the oldest pages above it. */
  setMaxPages(n: number): void {
    if (!Number.isInteger(n) || n < 8) throw new ShadowMmuError('E_MMU_OPTION', `maxMmuPages must be an integer of at least 8, not ${n}`);
    growPageCache(this, n);
    this.maxPages = n;
    if (this.usedPages > n) zapOldest(this, this.usedPages - n);
    finish(this);
  }

  /** The page for (gfn, role), created on a miss (page-cache.ts `getPage`); every mechanism gets its pages here. */
  getPage(gfn: number, role: number): ShadowPage {
    return getPage(this, gfn, role);
  }

  /** Zaps `sp` (page-cache.ts `prepareZap`); the page is freed at the end of the current operation. */
  prepareZap(sp: ShadowPage): void {
    prepareZap(this, sp);
  }

  /** Syncs unsync page `sp` with its guest table (unsync.ts `syncPage`). */
  syncPage(vcpu: Vcpu, sp: ShadowPage): void {
    syncPage(this, vcpu, sp);
  }

  /** Frees what was zapped (after the TLB flush). */
  commitZap(): void {
    commitZap(this);
  }
}
