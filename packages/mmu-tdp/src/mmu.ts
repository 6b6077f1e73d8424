import {
  hexU64,
  PAGE_SIZE,
  PFERR_RSVD,
  PFERR_WRITE,
  type GuestMemory,
  type Mmu,
  type MmuHost,
  type ExitResolution,
  EMULATE,
  RESUME,
  type DirtyLog,
  type DirtyLogMmu,
  type FastPageFaultControl,
  type CpuDirtyLogControl,
  type PageModificationLogging,
  type Memslot,
  type Vcpu,
  EptStage,
  PmlLog,
  type SecondStage,
} from '@vmexit/core';
import {
  createPageCache,
  FAST_FIXED,
  FAST_SPURIOUS,
  HOST_THREAD,
  pageFaultCanBeFast,
  POOL_BASE,
  ROLE_DIRECT,
  rootRoleOf,
  SPTE_FORMAT_EPT,
  SPTE_FORMAT_NPT,
  SptePoolMemory,
} from '@vmexit/core/mmu';
import { auditTdpMmu } from './audit.js';
import { flushForLog, markGpaDirty, recoverHugePages, slotRemoveWriteAccess, writeProtectMasked } from './dirty-log.js';
import { TdpFastPageFault } from './fast-fault.js';
import { TdpMmuError } from './errors.js';
import { leafLoc, mapMmio, mappingLevel, newPage, splitHugePages } from './map.js';
import { MAP_MORE, MAP_RETRY, MAP_SPURIOUS, TdpMapFault } from './map-fault.js';
import { isMmioSpte, MMIO_GEN_MASK, mmioSpteGeneration, mmioValue } from './mmio.js';
import { hostPageLevel, TdpMmuState, type HostPages } from './state.js';
import { finish, memslotChanged, SPAN, zapAll, zapLeafs } from './zap.js';

/** 2^i for i = 0..52 (a guest MAXPHYADDR's limit per fault, from a table: V8 computes `**` with a call). */
const POW2 = Array.from({ length: 53 }, (_, i) => 2 ** i);

/** How the TDP MMU is built: the host page size that backs guest RAM (the largest leaf it may map). */
export interface TdpMmuOptions {
  /**
   * The host page size backing guest RAM: the largest leaf the MMU builds. Default '4k'. A variant's own
   * `hostPages` (`--host-pages`, passed as `MmuHost.hostPages`) takes precedence.
   */
  readonly hostPages?: HostPages;
  /** KVM's fast page fault (fast-fault.ts); default off (the `fast-page-fault` policy turns it on). */
  readonly fastPageFault?: boolean;
}

/** Frames the pool starts with (it doubles when full: the TDP MMU has no page budget). */
const INITIAL_FRAMES = 64;
/** The most frames the pool may grow to at POOL_BASE (4 GiB of tables). */
const MAX_FRAMES = 1 << 20;
/** The window the pool lives in below a processor MAXPHYADDR too small for POOL_BASE (64 MiB of tables). */
const SMALL_WINDOW = 64 * 1024 * 1024;

/**
 * Where the TDP tables live in host-physical memory: at POOL_BASE (2^40) when the processor can address it,
 * else in the highest 64 MiB window below 2^MAXPHYADDR that no memslot uses (the second stage's tables must
 * be reachable by its walk, and guest RAM's host-physical addresses are its guest-physical ones).
 */
function choosePoolBase(memory: GuestMemory, top: number): number {
  if (POOL_BASE + INITIAL_FRAMES * PAGE_SIZE <= top) return POOL_BASE;
  for (let b = top - SMALL_WINDOW; b >= 0; b -= SMALL_WINDOW) {
    const lo = b / PAGE_SIZE;
    const hi = (b + SMALL_WINDOW) / PAGE_SIZE;
    if (!memory.slots.some((s) => s.baseGfn < hi && s.baseGfn + s.pages > lo)) return b;
  }
  throw new TdpMmuError('E_MMU_STATE', `no 64 MiB of host-physical space below 2^${Math.log2(top)} is free of memslots for the TDP tables`);
}

/**
 * The processor's PML log as KVM drives it (vmx.c `vmx_secondary_exec_control`, `vmx_update_cpu_dirty_logging`):
 * SECONDARY_EXEC_ENABLE_PML is set only while some memslot logs dirty pages (`nr_memslots_dirty_logging`), and
 * every change of that count is applied before the vCPU re-enters (KVM_REQ_UPDATE_CPU_DIRTY_LOGGING). With the
 * control clear the processor sets EPT dirty flags without logging them and never has a PML-full event (SDM
 * Vol. 3C §29.3.6). The backend's PageModificationLogging only turns PML on, so the EPT walk is given this view of
 * the vCPU's log, which logs into it only while the VM's dirty log has a logging slot.
 */
class PmlWhileLogging extends PmlLog {
  constructor(
    private readonly vcpuLog: PmlLog,
    private readonly s: TdpMmuState,
  ) {
    super();
  }

  override log(gpa: number): boolean {
    const d = this.s.dirtyLog;
    return d === null || d.loggingSlots === 0 || this.vcpuLog.log(gpa);
  }
}

/**
 * KVM's TDP MMU (arch/x86/kvm/mmu/tdp_mmu.c, with mmu.c's `kvm_tdp_page_fault` and spte.c's `make_spte` /
 * `make_mmio_spte`) as core's `Mmu`: one direct root that maps guest-physical to host-physical addresses
 * for every vCPU, in the backend's second-stage format (EPT on VMX, NPT on SVM); leaves built at the first
 * EPT violation / #NPF on a gfn (4 KiB, or 2 MiB / 1 GiB where the host backing and the memslot allow),
 * MMIO sptes with the memslot generation, zaps with a remote flush. The guest's own page faults, CR3 loads
 * and INVLPGs never reach it: under TDP they do not exit.
 */
export class TdpMmu extends TdpMmuState implements Mmu, DirtyLogMmu, FastPageFaultControl, CpuDirtyLogControl {
  readonly name = 'tdp' as const;
  private readonly options: TdpMmuOptions;
  /** Whether write-protect faults under dirty logging try the fast path first (the `fast-page-fault` policy). */
  fastPageFault: boolean;
  /** Each vCPU's fast page fault (by vCPU id). */
  readonly fastFaults: TdpFastPageFault[] = [];
  /** Each vCPU's slow page fault's map (by vCPU id). */
  readonly mapFaults: TdpMapFault[] = [];
  /** The backend's PML once `enableCpuDirtyLog` turned it on, and each vCPU's log (by vCPU id). */
  private pml: PageModificationLogging | null = null;
  readonly pmlLogs: PmlLog[] = [];

  constructor(options: TdpMmuOptions = {}) {
    super();
    this.fastPageFault = options.fastPageFault === true;
    const hp = options.hostPages ?? '4k';
    if (hp !== '4k' && hp !== '2m' && hp !== '1g') throw new TdpMmuError('E_MMU_OPTION', `hostPages must be '4k', '2m' or '1g', not '${String(hp)}'`);
    this.options = options;
  }

  // -------------------------------------------------------------------------------------------------
  // Mmu

  init(host: MmuHost): void {
    if (host.vcpus.length === 0) throw new TdpMmuError('E_MMU_STATE', 'the TDP MMU needs at least one vCPU');
    const backend = host.backend;
    if (backend === undefined || backend === null || host.backendState === undefined) {
      throw new TdpMmuError('E_MMU_STATE', 'the TDP MMU needs a backend (VMX or SVM) to point the second stage at its tables');
    }
    this.host = host;
    this.backend = backend;
    const v0 = host.vcpus[0]!;
    this.memory = v0.memory;
    const top = 2 ** v0.hostMaxPhyAddr;
    const base = choosePoolBase(this.memory, top);
    this.maxPoolFrames = base === POOL_BASE ? Math.min(MAX_FRAMES, (top - POOL_BASE) / PAGE_SIZE) : SMALL_WINDOW / PAGE_SIZE;
    Object.assign(this, createPageCache(INITIAL_FRAMES, base));
    this.poolMemory = new SptePoolMemory(this.pool, this.memory);
    this.format = backend.name === 'vmx' ? SPTE_FORMAT_EPT : SPTE_FORMAT_NPT;
    // kvm_mmu_get_tdp_level: 5-level EPT only when the guest's MAXPHYADDR is above 48; NPT follows the host's
    // paging mode (get_npt_level), 5-level on a host whose MAXPHYADDR needs more than 48 bits.
    this.rootLevel = (backend.name === 'vmx' ? v0.ctx.maxPhyAddr : v0.hostMaxPhyAddr) > 48 ? 5 : 4;
    // The variant's host page size (`--host-pages`) when it names one, else the module's option, else 4 KiB.
    this.maxLeafLevel = hostPageLevel(host.hostPages ?? this.options.hostPages ?? '4k');
    this.mmioValue = mmioValue(this.format, v0.hostMaxPhyAddr);
    // kvm_tdp_mmu_get_vcpu_root_hpa: the root role is direct, all rights, the TDP level.
    this.root = newPage(this, 0, rootRoleOf(this.rootLevel, false, 0, true, true, false, false) | ROLE_DIRECT, -1);
    this.root.rootCount = host.vcpus.length;
  }

  attachVcpu(vcpu: Vcpu): void {
    // kvm_mmu_load -> vmx_load_mmu_pgd (EPTP: WB, walk length, A/D bits) / svm_load_mmu_pgd (nCR3).
    const state = this.host.backendState!(vcpu.id);
    this.backend.setNestedRoot(state, this.root.hpa, { levels: this.rootLevel as 4 | 5, accessedDirty: this.format.name === 'ept' });
    vcpu.setSecondStage(this.backend.createSecondStage(state, this.poolMemory, vcpu.hostMaxPhyAddr));
    this.fastFaults[vcpu.id] = new TdpFastPageFault(this, vcpu.id);
    this.mapFaults[vcpu.id] = new TdpMapFault(this, vcpu.id);
    if (this.pml !== null) this.enablePml(state, vcpu.secondStage!, vcpu.id);
  }

  /** Turns the backend's PML on for one vCPU, the EPT walk logging through `PmlWhileLogging`. */
  private enablePml(state: unknown, stage: SecondStage, id: number): void {
    const log = this.pml!.enablePml(state, stage);
    this.pmlLogs[id] = log;
    if (stage instanceof EptStage) stage.pml = new PmlWhileLogging(log, this);
  }

  /**
   * An EPT violation / misconfiguration or #NPF on `gpa` (KVM `kvm_mmu_page_fault` -> `handle_mmio_page_fault`
   * for PFERR_RSVD, else `kvm_tdp_page_fault`); `errorCode` is KVM's 64-bit form from the backend.
   */
  handlePageFault(vcpu: Vcpu, gpa: number, errorCode: number): ExitResolution {
    this.initiator = vcpu.id;
    const log = this.dirtyLog;
    // vmx_handle_exit: with PML on, every VM exit first empties the vCPU's log (vmx_flush_pml_buffer).
    if (this.pml !== null) this.flushPml(vcpu.id);
    if (this.format.name === 'ept' && (errorCode & PFERR_RSVD) === 0 && gpa >= POW2[vcpu.ctx.maxPhyAddr]!) {
      // A gpa the guest's MAXPHYADDR makes illegal (its tables set bits the host's MAXPHYADDR allows but the
      // guest's does not): KVM's handle_ept_violation (allow_smaller_maxphyaddr, on by default on VMX) returns
      // kvm_emulate_instruction at once, before kvm_mmu_page_fault, so no MMU counter moves (no pf_taken, no
      // pf_emulate) and mmu_lock is not taken; the emulator's walk of the guest's tables, under the guest's
      // MAXPHYADDR, raises the reserved-bit #PF the guest expects. SVM has no such check: with NPT, KVM turns
      // allow_smaller_maxphyaddr off and npf_interception calls kvm_mmu_page_fault (a gpa no memslot holds: MMIO).
      this.enterGuest(vcpu.id);
      return EMULATE;
    }
    let taken = true;
    // kvm_tdp_page_fault -> kvm_tdp_mmu_page_fault: the fast path first, without mmu_lock, for every fault that
    // page_fault_can_be_fast admits (KVM tries it whether or not a slot logs: a leaf write-protected while the
    // log was on stays so after KVM_MEM_LOG_DIRTY_PAGES is cleared, and its next write is fixed there), then under
    // the read lock.
    if (this.fastPageFault && pageFaultCanBeFast(errorCode)) {
      this.host.count(vcpu.id, 'pf_taken'); // kvm_mmu_do_page_fault counts every fault it handles, fast or not
      taken = false;
      const r = this.fastFaults[vcpu.id]!.run(gpa, errorCode);
      if (r === FAST_FIXED || r === FAST_SPURIOUS) {
        this.enterGuest(vcpu.id);
        return RESUME;
      }
    }
    this.mmuLock.acquireRead(vcpu.id);
    if (log !== null) this.host.count(vcpu.id, 'mmu_lock.acquired');
    let res: ExitResolution;
    try {
      res = this.pageFaultLocked(vcpu, gpa, errorCode, taken);
    } finally {
      this.mmuLock.releaseRead(vcpu.id);
    }
    this.enterGuest(vcpu.id);
    return res;
  }

  /**
   * The fault under `mmu_lock` held for read (KVM `kvm_tdp_page_fault` past the fast path, with
   * `handle_mmio_page_fault` for PFERR_RSVD): `pageFaultStart`, then the map's steps to its end.
   * `countTaken` false: the fast path already counted `pf_taken`.
   */
  pageFaultLocked(vcpu: Vcpu, gpa: number, errorCode: number, countTaken = true): ExitResolution {
    const map = this.mapFaults[vcpu.id]!;
    const res = this.pageFaultStart(vcpu, gpa, errorCode, countTaken, map);
    if (res !== null) return res;
    for (;;) {
      const r = this.pageFaultStep(map);
      if (r !== null) return r;
    }
  }

  /**
   * The slow fault's checks (MMIO, no memslot, a store to read-only RAM): their resolution, or null when the fault
   * maps the gfn, `map` started (`kvm_tdp_mmu_map`); `pageFaultStep` runs its steps. The race scenarios step them
   * between taking and dropping the read lock, several vCPUs at once.
   */
  pageFaultStart(vcpu: Vcpu, gpa: number, errorCode: number, countTaken: boolean, map: TdpMapFault): ExitResolution | null {
    this.initiator = vcpu.id;
    const gfn = Math.floor(gpa / PAGE_SIZE);
    if ((errorCode & PFERR_RSVD) !== 0) {
      // handle_mmio_page_fault: an MMIO spte of the current generation goes to emulation at once (no
      // pf_taken: kvm_mmu_do_page_fault is not reached); a stale one is faulted in again (RET_PF_INVALID).
      const loc = leafLoc(this, gfn);
      const lo = loc < 0 ? 0 : this.pool.lo(loc);
      const hi = loc < 0 ? 0 : this.pool.hi(loc);
      if (!isMmioSpte(lo, hi)) {
        throw new TdpMmuError('E_MMU_STATE', `vCPU ${vcpu.id}: a reserved-bit fault on gpa ${hexU64(gpa)}, whose spte is not an MMIO spte`);
      }
      if (mmioSpteGeneration(lo, hi) === (this.generation & MMIO_GEN_MASK)) return { kind: 'userspace', reason: 'mmio', gpa };
    }
    if (countTaken) this.host.count(vcpu.id, 'pf_taken');
    const slot = this.memory.slotForGfn(gfn);
    if (slot === null) {
      // kvm_handle_noslot_fault: cache an MMIO spte when MMIO caching is on and the gfn fits the tables and
      // the spte (not above the root's reach, not touching the MMIO value's own bit 51), then emulate.
      if (this.mmioValue !== null && gfn < SPAN[this.rootLevel + 1]! && gfn < 2 ** 39) {
        mapMmio(this, gfn);
        this.host.count(vcpu.id, 'pf_mmio_spte_created');
      }
      this.host.count(vcpu.id, 'pf_emulate');
      finish(this);
      return { kind: 'userspace', reason: 'mmio', gpa };
    }
    if ((errorCode & PFERR_WRITE) !== 0 && slot.readonly) {
      // A store to read-only RAM (KVM_MEM_READONLY): KVM_PFN_ERR_RO_FAULT -> RET_PF_EMULATE, an MMIO exit.
      this.host.count(vcpu.id, 'pf_emulate');
      return { kind: 'userspace', reason: 'mmio', gpa };
    }
    map.start(gfn, slot, mappingLevel(this, gfn, slot));
    return null;
  }

  /**
   * One step of the map `pageFaultStart` began: null while it has more, else RESUME, counted as
   * `kvm_mmu_do_page_fault` counts (`pf_fixed`, `pf_spurious`; nothing for RET_PF_RETRY: the guest repeats the access).
   */
  pageFaultStep(map: TdpMapFault): ExitResolution | null {
    const r = map.step();
    if (r === MAP_MORE) return null;
    if (r !== MAP_RETRY) this.host.count(map.vcpuId, r === MAP_SPURIOUS ? 'pf_spurious' : 'pf_fixed');
    finish(this);
    return RESUME;
  }

  /**
   * An emulated store (`emulator_write_phys` -> `kvm_vcpu_write_guest`): the page is marked dirty
   * (`mark_page_dirty`); KVM `kvm_mmu_track_write` then returns at once without indirect (shadow) pages:
   * nothing is write-tracked under TDP.
   */
  trackWrite(vcpu: Vcpu, gpa: number): void {
    if (this.dirtyLog === null) return;
    markGpaDirty(this, gpa, vcpu.id);
    this.enterGuest(vcpu.id);
  }

  /**
   * Before the guest runs again after an exit that may have pushed to the vCPU's dirty ring (KVM
   * `vcpu_enter_guest` -> `kvm_dirty_ring_check_request`): a soft-full ring exits to user space
   * (KVM_EXIT_DIRTY_RING_FULL), counted as `dirty_ring_full_exits` as on the shadow MMU.
   */
  private enterGuest(id: number): void {
    if (this.dirtyLog?.enterGuest(id) === true) this.host.count(id, 'dirty_ring_full_exits');
  }

  /**
   * The TDP root does not depend on the guest's CR0/CR3/CR4/EFER (kvm_calc_tdp_mmu_root_page_role): the tables
   * stay. But a write that exited (a host-owned CR0/CR4 bit, WRMSR EFER) is a VM exit like any other, and with
   * PML on `vmx_handle_exit` empties the vCPU's log first (`vmx_flush_pml_buffer`), whatever the exit reason.
   */
  crWritten(vcpu: Vcpu, _cr: number, _oldValue: number, exited: boolean): void {
    if (exited) this.otherExit(vcpu);
  }

  /** KVM `kvm_mmu_invlpg`: the guest's TLB entry is gone (the vCPU did that); the TDP tables do not change. Counted when it exited. */
  invlpg(vcpu: Vcpu, _va: number, exited: boolean): void {
    if (!exited) return;
    this.host.count(vcpu.id, 'invlpg');
    this.otherExit(vcpu);
  }

  /**
   * A VM exit that is not a second-stage fault: with PML on, `vmx_handle_exit` empties the vCPU's log before it
   * dispatches any exit (`vmx_flush_pml_buffer`), so the log restarts at entry 511 and the pages it held are
   * marked dirty now (pushed to the vCPU's dirty ring, whose soft-full check runs before the guest re-enters).
   */
  private otherExit(vcpu: Vcpu): void {
    if (this.pml === null) return;
    this.initiator = vcpu.id;
    this.flushPml(vcpu.id);
    this.enterGuest(vcpu.id);
  }

  /** No guest page table is write-protected under TDP: an emulation failure is not one the MMU can undo. */
  emulationFailed(): boolean {
    return false;
  }

  /** `--audit`: every invariant of the TDP tables (audit.ts); throws TdpMmuError E_MMU_AUDIT at the first violation. */
  audit(): void {
    auditTdpMmu(this);
  }

  // -------------------------------------------------------------------------------------------------
  // Memslot changes and the mechanisms tools and tests drive directly

  /**
   * A memslot over [baseGfn, baseGfn + pages) was changed (flags, deleted, moved: KVM
   * `kvm_arch_flush_shadow_memslot` and the new memslot generation): its leaves are zapped and flushed, and
   * every MMIO spte is stale from now on.
   */
  memslotChanged(baseGfn: number, pages: number): void {
    this.mmuLock.acquire(HOST_THREAD); // KVM_SET_USER_MEMORY_REGION: write_lock(&kvm->mmu_lock)
    memslotChanged(this, baseGfn, pages);
    finish(this);
    this.mmuLock.release(HOST_THREAD);
  }

  /** KVM `kvm_tdp_mmu_zap_leafs`: zaps the leaves mapping gfns in [start, end) and flushes, under `mmu_lock` held for write. */
  zapGfnRange(start: number, end: number): boolean {
    this.mmuLock.acquire(HOST_THREAD);
    const z = zapLeafs(this, start, end);
    finish(this);
    this.mmuLock.release(HOST_THREAD);
    return z;
  }

  /** KVM `kvm_tdp_mmu_zap_all`: frees every page below the root and flushes, under `mmu_lock` held for write. */
  zapAll(): void {
    this.mmuLock.acquire(HOST_THREAD);
    zapAll(this);
    finish(this);
    this.mmuLock.release(HOST_THREAD);
  }

  /** KVM `kvm_tdp_mmu_try_split_huge_pages` (eager page splitting): huge leaves over [start, end) become 4 KiB ones. */
  splitHugePages(start: number, end: number): void {
    splitHugePages(this, start, end);
    finish(this);
  }

  // -------------------------------------------------------------------------------------------------
  // FastPageFaultControl and DirtyLogMmu (fast-fault.ts, dirty-log.ts)

  /** FastPageFaultControl: the `fast-page-fault` policy turns the fast path on. */
  setFastPageFault(on: boolean): void {
    this.fastPageFault = on;
  }

  /** Binds the VM's dirty log: this MMU write-protects for it and marks the pages it makes writable. */
  attachDirtyLog(log: DirtyLog): void {
    this.dirtyLog = log;
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

  /** KVM `kvm_mmu_recover_huge_pages` once `slot` stops logging (dirty-log.ts): under `mmu_lock` held for read, as KVM takes it. */
  recoverHugePages(slot: Memslot): void {
    this.mmuLock.acquireRead(HOST_THREAD);
    try {
      recoverHugePages(this, slot);
    } finally {
      this.mmuLock.releaseRead(HOST_THREAD);
    }
  }

  // -------------------------------------------------------------------------------------------------
  // CpuDirtyLogControl: PML (KVM vmx.c enable_pml, vmx_flush_pml_buffer, handle_pml_full)

  /**
   * Dirty logging through the processor's PML log (the `pml` policy, with the backend's PML): each vCPU's log is
   * turned on as it attaches, and from then on dirty logging clears D flags instead of write-protecting
   * (dirty-log.ts; KVM with `kvm_x86_ops.cpu_dirty_log_size`), so that a logged write costs no exit until a
   * vCPU's 512 entries are full.
   */
  enableCpuDirtyLog(pml: PageModificationLogging): void {
    if (this.format.name !== 'ept') throw new TdpMmuError('E_MMU_STATE', 'PML logs EPT dirty flags: the second stage is NPT (SVM has no PML)');
    this.pml = pml;
    this.cpuDirtyLog = true;
    for (const v of this.host.vcpus) if (v.secondStage !== null) this.enablePml(this.host.backendState!(v.id), v.secondStage, v.id);
  }

  /** KVM `vmx_flush_pml_buffer`: every gpa the vCPU's log holds is marked dirty (`kvm_vcpu_mark_page_dirty`), the index reset to 511. */
  flushPml(vcpuId: number): number {
    const log = this.pmlLogs[vcpuId];
    if (log === undefined || log.index === 511) return 0;
    const dirty = this.dirtyLog;
    return log.drain((gpa) => dirty?.markPageDirty(Math.floor(gpa / PAGE_SIZE), vcpuId));
  }

  /** A PML-full exit (KVM `handle_pml_full`, after `vmx_handle_exit` emptied the log): resume; the access is repeated. */
  pmlFull(vcpu: Vcpu): ExitResolution {
    this.initiator = vcpu.id;
    this.flushPml(vcpu.id);
    this.enterGuest(vcpu.id);
    return RESUME;
  }

  /** KVM `kvm_arch_sync_dirty_log`: kick every vCPU (each exit empties its PML log) before a harvest. */
  syncDirtyLog(): void {
    if (this.pml === null) return;
    for (const v of this.host.vcpus) this.flushPml(v.id);
  }
}
