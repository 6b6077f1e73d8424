import {
  ACC_FETCH,
  ACC_USER,
  ACC_WRITE,
  CR4_PAE,
  MODE_LEGACY32,
  MODE_LONG4,
  MODE_LONG5,
  MODE_PAE,
  PAGE_SIZE,
  PFERR_PRESENT,
  PFERR_RSVD,
  PT_ACCESSED,
  PT_HI_XD,
  PT_PRESENT,
  PT_USER,
  PT_WRITABLE,
  WALK_OK,
  WALK_PAGE_FAULT,
  WALK_SIDE_EFFECTS,
  WalkResult,
  walk,
  type GuestMemory,
  type Memslot,
  type Mmu,
  type MmuHost,
  type NonPresentSpteEncoding,
  type PageFaultResolution,
  type PagingContext,
  type Vcpu,
} from '@vmexit/core';
import { auditShadowMmu } from './audit.js';
import { HOST_MAXPHYADDR, ShadowPagingContext } from './context.js';
import { ShadowMmuError } from './errors.js';
import { ShadowPage } from './page.js';
import { POOL_BASE, ShadowMemory, ShadowPool, SPTES_PER_PAGE } from './pool.js';
import { Rmaps } from './rmap.js';
import {
  ACC_EXEC_MASK,
  ACC_USER_MASK,
  ACC_WRITE_MASK,
  childRole,
  describeRole,
  ROLE_4BYTE_GPTE,
  ROLE_BASE_MASK,
  ROLE_INVALID,
  roleAccess,
  roleQuadrant,
  rootRoleOf,
} from './role.js';
import {
  SPTE_A,
  SPTE_D,
  SPTE_HI_ADDR_MASK,
  SPTE_HI_NX,
  SPTE_HI_PKEY_MASK,
  SPTE_HOST_WRITABLE,
  SPTE_MMU_WRITABLE,
  SPTE_NONLEAF_BITS,
  SPTE_P,
  SPTE_U,
  SPTE_W,
  sptePa,
  spteNeedsFlush,
} from './spte.js';
import { decideFlood, decidePrefetch, decidePteWrite, decideTrackedWrite, decideUnsync, detectWriteMisaligned, writtenSptes } from './write-decision.js';

/** KVM_MIN_ALLOC_MMU_PAGES: the smallest default page budget. */
export const KVM_MIN_ALLOC_MMU_PAGES = 64;
/** KVM_MIN_FREE_MMU_PAGES / KVM_REFILL_PAGES: reclaim when fewer than 5 pages are free, up to 25 (arch/x86/kvm/mmu/mmu.c). */
export const KVM_MIN_FREE_MMU_PAGES = 5;
export const KVM_REFILL_PAGES = 25;
/** KVM_MMU_NUM_PREV_ROOTS: cached roots of earlier CR3 values (64-bit guests only). */
export const KVM_MMU_NUM_PREV_ROOTS = 3;
/** RMAP_RECYCLE_THRESHOLD: an rmap longer than this is zapped whole. */
export const RMAP_RECYCLE_THRESHOLD = 1000;
/** KVM_MMU_HASH_SHIFT = 12: 4096 hash buckets keyed by gfn. */
export const KVM_MMU_HASH_SHIFT = 12;
/** PTE_PREFETCH_NUM: the aligned group of sptes `FNAME(pte_prefetch)` fills around a fault. */
export const PTE_PREFETCH_NUM = 8;

/** The default page budget (KVM `kvm_mmu_calculate_default_mmu_pages`): 20 per mille of guest pages, at least 64. */
export function defaultMaxMmuPages(guestPages: number): number {
  return Math.max(Math.floor((guestPages * 20) / 1000), KVM_MIN_ALLOC_MMU_PAGES);
}

export interface ShadowMmuOptions {
  /** n_max_mmu_pages (KVM_SET_NR_MMU_PAGES); default `defaultMaxMmuPages(guest pages)`. */
  readonly maxMmuPages?: number;
}

/** Per-vCPU state: the roots and the shadow paging context the hardware walks. */
export class VcpuShadowState {
  readonly ctx: ShadowPagingContext;
  /** 4/5-level guests: the root page. */
  root: ShadowPage | null = null;
  /** 32-bit and PAE guests: the four PAE roots (null = not present). */
  readonly paeRoots: (ShadowPage | null)[] = [null, null, null, null];
  /** The guest-state signature the roots were built for (mode, PG and role bits); -1 = none loaded. */
  signature = -1;
  /** The PDPTE registers the PAE roots were built from. */
  readonly pdpteLo = new Uint32Array(4);
  readonly pdpteHi = new Uint32Array(4);
  /** Cached roots of earlier CR3 values (KVM `prev_roots`), most recent first. */
  readonly prevRoots: { pgd: number; sp: ShadowPage }[] = [];
  /** A root in use was zapped: load new roots before the vCPU runs again (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS). */
  needReload = false;
  mmuEventSeq = 0;
  /** The 2007 write-flood detector (KVM 86a5ba025d0a): the last gfn this vCPU wrote by emulation and how often in a row. */
  lastPtWriteGfn = -1;
  lastPtWriteCount = 0;

  constructor(readonly vcpu: Vcpu) {
    this.ctx = new ShadowPagingContext(vcpu.ctx);
  }

  /** Every root slot's page (current roots only). */
  currentRoots(): ShadowPage[] {
    const out: ShadowPage[] = [];
    if (this.root !== null) out.push(this.root);
    for (const p of this.paeRoots) if (p !== null) out.push(p);
    return out;
  }
}

const EMULATE: PageFaultResolution = { kind: 'emulate' };
const RETRY: PageFaultResolution = { kind: 'retry' };

/**
 * The KVM-style shadow MMU (arch/x86/kvm/mmu/mmu.c, paging_tmpl.h; Documentation/virt/kvm/x86/mmu.rst).
 * See DESIGN.md for the structures and the rules each method follows.
 */
/**
 * The guest page directory behind PAE root slot `i` (SDM Vol. 3A §4.4.1: PDPTE register i; -1 when it is not
 * present), or, for a 32-bit guest, its one page directory, shadowed once per quadrant (mmu.rst "quadrant").
 */
function paeRootGfn(g: PagingContext, i: number): number {
  if (g.mode === MODE_LEGACY32) return Math.floor(g.cr3 / PAGE_SIZE);
  const lo = g.pdpteLo[i]!;
  if ((lo & PT_PRESENT) === 0) return -1;
  return (lo >>> 12) + (g.pdpteHi[i]! & 0xfffff) * 0x100000;
}

/** The role of PAE root slot `i`: a level-2 page; a 32-bit guest's slot i is quadrant i (VA bits 31:30). */
function paeRootRole(g: PagingContext, base: number, i: number): number {
  return base | 2 | (g.mode === MODE_LEGACY32 ? i << 5 : 0);
}

export class ShadowMmu implements Mmu, NonPresentSpteEncoding {
  readonly name = 'shadow' as const;
  host!: MmuHost;
  memory!: GuestMemory;
  pool!: ShadowPool;
  shadowMemory!: ShadowMemory;
  rmaps!: Rmaps;
  /** n_max_mmu_pages. */
  maxPages = 0;
  /** Pages in use, invalid roots included (KVM `n_used_mmu_pages`). */
  usedPages = 0;
  /** Shadow pages by pool frame (sptep -> page, KVM `sptep_to_sp`). */
  pages: (ShadowPage | null)[] = [];
  /** KVM `active_mmu_pages`: insertion order is age, so iteration starts at the oldest (the reclaim end). */
  readonly active = new Set<ShadowPage>();
  /** Zapped roots that some vCPU still uses (role.invalid), freed when their root count drops to 0. */
  readonly invalidRoots = new Set<ShadowPage>();
  /** KVM `mmu_page_hash`: 4096 buckets by gfn. */
  readonly hash: ShadowPage[][] = Array.from({ length: 1 << KVM_MMU_HASH_SHIFT }, () => []);
  /** Indirect (gpte-backed) pages per gfn: a gfn with a count is a write-protected guest page table. */
  readonly writeTrack = new Map<number, number>();
  indirectShadowPages = 0;
  readonly states: VcpuShadowState[] = [];

  private readonly freeFrames: number[] = [];
  private readonly invalidList: ShadowPage[] = [];
  private pendingFlush = false;
  private initiator = 0;
  private readonly walkResult = new WalkResult();
  private readonly options: ShadowMmuOptions;
  /**
   * The non-present spte encodings (KVM `kvm_mmu_set_nonpresent_ptes(trap, notrap)`): `trap` faults with
   * P=1|RSVD (so it exits even when P=0 faults bypass the hypervisor), `notrap` with P=0. Both 0 by default.
   */
  trapLo = 0;
  trapHi = 0;
  notrapLo = 0;
  notrapHi = 0;
  /** The level-1 pages that are out of sync, and how many there are per gfn. */
  readonly unsyncPages = new Set<ShadowPage>();
  readonly unsyncCount = new Map<number, number>();

  constructor(options: ShadowMmuOptions = {}) {
    this.options = options;
  }

  // -------------------------------------------------------------------------------------------------
  // Mmu interface

  init(host: MmuHost): void {
    if (host.vcpus.length === 0) throw new ShadowMmuError('E_MMU_STATE', 'the shadow MMU needs at least one vCPU');
    this.host = host;
    this.memory = host.vcpus[0]!.memory;
    const max = this.options.maxMmuPages ?? defaultMaxMmuPages(this.memory.pages);
    if (!Number.isInteger(max) || max < 8) {
      throw new ShadowMmuError('E_MMU_OPTION', `maxMmuPages must be an integer of at least 8 (4 PAE roots and a walk's pages), not ${max}`);
    }
    this.maxPages = max;
    this.pool = new ShadowPool(max);
    this.shadowMemory = new ShadowMemory(this.pool, this.memory);
    this.rmaps = new Rmaps(this.memory);
    this.pages = new Array<ShadowPage | null>(max).fill(null);
    for (let f = max - 1; f >= 0; f--) this.freeFrames.push(f);
  }

  attachVcpu(vcpu: Vcpu): void {
    const st = new VcpuShadowState(vcpu);
    this.states[vcpu.id] = st;
    st.ctx.syncFromGuest();
    vcpu.activeCtx = st.ctx;
    vcpu.activeMem = this.shadowMemory;
    this.initiator = vcpu.id;
    this.loadRoots(st);
    this.finish();
  }

  handlePageFault(vcpu: Vcpu, address: number, errorCode: number): PageFaultResolution {
    const st = this.stateOf(vcpu);
    this.initiator = vcpu.id;
    this.lastFaultVa = address;
    this.processReloads();
    // The 2007 flood detector (OLD-TMPL FNAME(page_fault), "reset fork detector"): any fault that is not an
    // emulated page-table write resets the vCPU's count; the two page-table-write paths below restore it.
    const ptWriteCount = st.lastPtWriteCount;
    st.lastPtWriteCount = 0;
    // make_mmu_pages_available + the topup of KVM's caches: reserve the pages the fetch may need before
    // any state changes (one per shadow level below the root).
    this.reservePages(st.ctx.mode === MODE_PAE ? 1 : st.ctx.mode === MODE_LONG4 ? 3 : 4, 'a page fault');
    // FNAME(page_fault) (paging_tmpl.h): the guest walk, with RSVD (from our own sptes) stripped and A/D set.
    const access = errorCode & (ACC_WRITE | ACC_USER | ACC_FETCH);
    const r = this.walkResult;
    const ws = walk(vcpu.ctx, vcpu.memory, address, access, WALK_SIDE_EFFECTS, r);
    if (ws === WALK_PAGE_FAULT) {
      // pf_guest is counted where the fault is injected (the VM's hooks, as KVM's kvm_inject_page_fault).
      return { kind: 'inject', vector: 14, errorCode: r.errorCode, cr2: address };
    }
    if (ws !== WALK_OK)
      throw new ShadowMmuError('E_MMU_STATE', `vCPU ${vcpu.id}: the guest walk of ${hexa(address)} ended with status ${ws} (expected a #PF or success)`);
    const gpa = r.pa;
    const gfn = Math.floor(gpa / PAGE_SIZE);
    const write = (access & ACC_WRITE) !== 0;
    const user = (access & ACC_USER) !== 0;
    const slot = this.memory.slotForGfn(gfn);
    // No memslot (or a write to read-only RAM): MMIO, an exit to user space (KVM `kvm_handle_noslot_fault`).
    if (slot === null || (write && slot.readonly)) return { kind: 'mmio', gpa };
    let writeProtected = write && this.isWriteProtected(gfn);
    if (writeProtected && decideTrackedWrite(this.host, vcpu.id, st.mmuEventSeq++, gfn, address, errorCode)) {
      // A policy unprotects the gfn (KVM 2007: a user-mode write is a hint that the page is no longer a
      // page table, `mmu_unshadow`): zap its shadow pages, and map the page writable below.
      for (const sp of this.indirectPagesOf(gfn)) this.prepareZap(sp);
      writeProtected = this.isWriteProtected(gfn);
    }
    // page_fault_handle_page_track: a write that hit a present spte (P=1 without RSVD: a trap spte is not
    // present) of a guest page table that an upper-level page write-tracks. A level-1-only gfn goes on to
    // the fetch, where it may go unsync (mmu_try_to_unsync_pages) or stay read-only (then emulated).
    if ((errorCode & (PFERR_PRESENT | PFERR_RSVD)) === PFERR_PRESENT && writeProtected && this.hasUpperLevelPage(gfn)) {
      this.clearFloodCounts(st, address);
      this.host.count(vcpu.id, 'pf_emulate');
      st.lastPtWriteCount = ptWriteCount;
      this.finish();
      return EMULATE;
    }
    // Rights of the leaf (walk_addr_generic): the AND over all levels; a clean gpte maps read-only unless
    // this is a write, which has just set D (`protect_clean_gpte`).
    let pteAccess = (r.writable ? ACC_WRITE_MASK : 0) | (r.user ? ACC_USER_MASK : 0) | (r.executable ? ACC_EXEC_MASK : 0);
    if (!r.dirty) pteAccess &= ~ACC_WRITE_MASK;
    const g = vcpu.ctx;
    // CR0.WP = 0 (mmu.rst "Emulating cr0.wp", FNAME(page_fault)): the hardware runs with WP = 1, so a
    // supervisor write to a read-only page gets a kernel-only writable spte; with SMEP it also loses X.
    if (write && !user && !g.cr0Wp && (pteAccess & ACC_WRITE_MASK) === 0) {
      if (g.cr4Smap && r.user) {
        // A user page made kernel-only would escape SMAP for later supervisor reads (KVM lets that
        // happen; mmu.rst leaves the case out). Emulating the store keeps the guest's view exact.
        this.host.count(vcpu.id, 'pf_emulate');
        this.finish();
        return EMULATE;
      }
      pteAccess = (pteAccess | ACC_WRITE_MASK) & ~ACC_USER_MASK;
      if (g.cr4Smep) pteAccess &= ~ACC_EXEC_MASK;
    }
    const res = this.fetch(st, address, r, gfn, slot, pteAccess, write);
    if (res === EMULATE) st.lastPtWriteCount = ptWriteCount; // a write to a write-protected page table
    this.finish();
    return res;
  }

  trackWrite(vcpu: Vcpu, gpa: number, size: number, oldLo: number, oldHi: number, newLo: number, newHi: number): void {
    // kvm_mmu_track_write (arch/x86/kvm/mmu/mmu.c).
    if (this.indirectShadowPages === 0) return;
    const st = this.stateOf(vcpu);
    this.initiator = vcpu.id;
    // mmu_pte_write_fetch_gpte: a 4-byte write into an 8-byte gpte is the whole gpte; re-read it after the store.
    let bytes = size;
    if ((vcpu.cr4 & CR4_PAE) !== 0 && bytes === 4) {
      gpa -= gpa % 8;
      bytes = 8;
    }
    let gLo = 0;
    let gHi = 0;
    if (bytes === 4 || bytes === 8) {
      gLo = this.memory.read32(gpa - (gpa % 4));
      gHi = bytes === 8 ? this.memory.read32(gpa - (gpa % 4) + 4) : 0;
    }
    const gfn = Math.floor(gpa / PAGE_SIZE);
    this.host.count(vcpu.id, 'mmu_pte_write');
    // The valid indirect pages of the gfn, as a snapshot (zapping one below changes its hash bucket), in a
    // scratch array that this call owns while it runs (a nested call would take a fresh one).
    const targets = this.pageScratch ?? [];
    this.pageScratch = null;
    const count = this.collectIndirectPages(gfn, targets);
    let baseRole = -1; // the vCPU's base role, computed for the first update-spte decision
    // The 2007 per-vCPU detector (OLD-MMU kvm_mmu_pre_write): consecutive emulated writes to one gfn.
    if (gfn === st.lastPtWriteGfn) st.lastPtWriteCount++;
    else {
      st.lastPtWriteGfn = gfn;
      st.lastPtWriteCount = 1;
    }
    const pool = this.pool;
    for (let t = 0; t < count; t++) {
      const sp = targets[t]!;
      targets[t] = null;
      if (sp.zapped) continue;
      const level = sp.level;
      const fourByte = (sp.role & ROLE_4BYTE_GPTE) !== 0;
      const pteSize = fourByte ? 4 : 8;
      const misaligned = detectWriteMisaligned(gpa, bytes, pteSize);
      // detect_write_flooding: the policy decides (today's KVM: per page, level 1 exempt, >= 3).
      sp.writeFloodingCount++;
      const flooded = decideFlood(this.host, vcpu.id, st.mmuEventSeq++, gfn, level, sp.writeFloodingCount, st.lastPtWriteCount);
      const decision = flooded ? 'zap-page' : decidePteWrite(this.host, vcpu.id, st.mmuEventSeq++, gpa, bytes, oldLo, oldHi, newLo, newHi, level, misaligned);
      if (decision === 'zap-page') {
        this.prepareZap(sp);
        this.host.count(vcpu.id, 'mmu_flooded');
        continue;
      }
      const quadrant = roleQuadrant(sp.role);
      // get_written_sptes for the first and the last byte written: a write that straddles two gptes touches
      // both (KVM zaps the page instead, detect_write_misaligned; without that policy both sptes are cleared).
      const w1 = writtenSptes(gpa, fourByte, level, quadrant);
      const w2 = misaligned ? writtenSptes(gpa + bytes - 1, fourByte, level, quadrant) : -1;
      // update_pte (KVM 2007-2021): a full, aligned gpte write into a level-1 page of the vCPU's base role.
      let update = decision === 'update-spte' && !misaligned && level === 1 && bytes >= pteSize;
      if (update) {
        if (baseRole < 0) baseRole = this.baseRole(vcpu);
        update = (sp.role & ROLE_BASE_MASK) === (baseRole & ROLE_BASE_MASK);
      }
      const passes = w2 >= 0 && w2 !== w1 ? 2 : 1;
      for (let pass = 0; pass < passes; pass++) {
        const w = pass === 0 ? w1 : w2;
        if (w < 0) continue; // another quadrant's alias
        const first = w >>> 2;
        const n = w & 3;
        for (let k = 0; k < n; k++) {
          const loc = sp.base + first + k;
          // kvm_mmu_pte_write: "entry = *spte; mmu_page_zap_pte(); [update]; if (need_remote_flush(entry,
          // *spte)) flush = true": the flush depends on the spte before and after, not on the zap alone, so
          // an update that keeps or adds rights flushes nothing (a TLB entry with fewer rights only misses).
          const sLo = pool.lo(loc);
          const sHi = pool.hi(loc);
          const pending = this.pendingFlush;
          this.zapSpte(sp, loc);
          this.pendingFlush = pending;
          if ((gLo !== 0 || gHi !== 0) && level !== 1) this.host.count(vcpu.id, 'mmu_pde_zapped');
          if (update) this.updatePte(vcpu, sp, loc, gLo, gHi);
          if (this.isPresent(sLo, sHi) && (!this.isPresent(pool.lo(loc), pool.hi(loc)) || spteNeedsFlush(sLo, sHi, pool.lo(loc), pool.hi(loc))))
            this.pendingFlush = true;
        }
      }
    }
    this.pageScratch = targets;
    this.finish();
  }

  crWritten(vcpu: Vcpu, cr: number, oldValue: number, exited: boolean): void {
    void oldValue;
    void exited;
    const st = this.stateOf(vcpu);
    this.initiator = vcpu.id;
    st.ctx.syncFromGuest();
    const sig = this.signatureOf(vcpu);
    if (sig !== st.signature) {
      // kvm_mmu_reset_context: a new mode or role. CR4.PSE changes what a 32-bit guest's PDE means without
      // changing the role, so pages of 4-byte gptes built under the old PSE are zapped.
      const zapFourByte = sig >= 0 && st.signature >= 0 && ((sig ^ st.signature) & SIG_PSE) !== 0;
      if (this.availablePages < MAX_ROOTS) this.ensureRootSpace(st, this.rootsReleased(st, true, 0, false), zapFourByte, 'the roots of the new mode');
      if (zapFourByte) this.zapAllFourByte();
      this.freeRoots(st, true);
      this.loadRoots(st);
    } else if (cr === 3 || this.pdptesChanged(st)) {
      this.newPgd(st);
    }
    // A guest TLB flush (KVM_REQ_MMU_SYNC / KVM_REQ_TLB_FLUSH_GUEST -> kvm_mmu_sync_roots): sync the unsync
    // pages the vCPU's roots reach. The vCPU flushed its TLB for this CR write (a CR3 write with the PCID
    // no-flush bit does not, and then the sync is merely early: always allowed).
    if (this.unsyncPages.size > 0) {
      if (!exited)
        throw new ShadowMmuError(
          'E_MMU_STATE',
          `vCPU ${vcpu.id}: a write of CR${cr === 0xc0000080 ? ' EFER' : cr} did not exit while ${this.unsyncPages.size} shadow pages are unsync: unsync pages need CR3-load exiting`,
        );
      this.syncRoots(st);
    }
    this.finish();
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
        `vCPU ${vcpu.id}: INVLPG ${hexa(va)} did not exit while ${this.unsyncPages.size} shadow pages are unsync: unsync pages need INVLPG exiting`,
      );
    const st = this.stateOf(vcpu);
    this.initiator = vcpu.id;
    this.invlpgSync(st, va);
    this.finish();
  }

  emulationFailed(vcpu: Vcpu, gpa: number): boolean {
    // kvm_mmu_unprotect_page: a page table recycled into a data page; zap every shadow page of the gfn.
    this.initiator = vcpu.id;
    const pages = this.indirectPagesOf(Math.floor(gpa / PAGE_SIZE));
    for (const sp of pages) this.prepareZap(sp);
    this.finish();
    return pages.length > 0;
  }

  /** `--audit`: checks every invariant of the MMU (see audit.ts); throws ShadowMmuError E_MMU_AUDIT at the first violation. */
  audit(): void {
    auditShadowMmu(this);
  }

  // -------------------------------------------------------------------------------------------------
  // Non-present sptes (KVM c7addb902054, "Allow not-present guest page faults to bypass kvm")

  /**
   * NonPresentSpteEncoding: the value of a non-present spte that must exit (`trap`) and of one whose gpte
   * is known not present (`notrap`). `notrap` must have P=0; `trap` must equal `notrap` (no distinction) or
   * have P=1 and a bit in 51:46, reserved under the host MAXPHYADDR in every entry format, so the hardware
   * walk faults P=1|RSVD. Every non-present spte already in the pool becomes the new trap value.
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

  /** Whether trap and notrap sptes differ (the bypass encoding is on). */
  get bypassEncoding(): boolean {
    return this.trapLo !== this.notrapLo || this.trapHi !== this.notrapHi;
  }

  /** KVM `is_shadow_present_pte`: P set and not the trap value. */
  isPresent(lo: number, hi: number): boolean {
    return (lo & SPTE_P) !== 0 && (lo !== this.trapLo || hi !== this.trapHi);
  }

  /** A notrap spte (only meaningful while the bypass encoding is on). */
  isNotrap(lo: number, hi: number): boolean {
    return lo === this.notrapLo && hi === this.notrapHi;
  }

  /** Sets `loc` to the trap value (KVM writes trap wherever it clears an spte). */
  private setTrap(loc: number): void {
    this.pool.set(loc, this.trapLo, this.trapHi);
  }

  /**
   * Whether `gfn` is a write-protected guest page table: shadowed by an indirect page that is not unsync
   * (KVM: write-tracked by an upper-level page, or rmap-write-protected for a synced level-1 page).
   */
  isWriteProtected(gfn: number): boolean {
    const t = this.writeTrack.get(gfn);
    return t !== undefined && t > (this.unsyncCount.get(gfn) ?? 0);
  }

  /** Whether some indirect page of `gfn` is above level 1 (KVM: the gfn is page-tracked, never unsync). */
  private hasUpperLevelPage(gfn: number): boolean {
    for (const sp of this.hash[this.hashOf(gfn)]!) if (sp.gfn === gfn && !sp.direct && !sp.zapped && sp.level > 1) return true;
    return false;
  }

  // -------------------------------------------------------------------------------------------------
  // Budget, allocation, zapping

  /** Free pages (KVM `kvm_mmu_available_pages`). */
  get availablePages(): number {
    return this.maxPages - this.usedPages;
  }

  /**
   * KVM `make_mmu_pages_available` plus the reservation of `need` pages: reclaim the oldest pages when
   * fewer than KVM_MIN_FREE_MMU_PAGES are free (up to KVM_REFILL_PAGES), then fail cleanly, before any
   * state is changed, when `need` pages are still not free.
   */
  reservePages(need: number, what: string): void {
    if (this.availablePages < Math.max(KVM_MIN_FREE_MMU_PAGES, need)) this.zapOldest(Math.max(KVM_REFILL_PAGES, need) - this.availablePages);
    // Pages zapped earlier in this operation (released invalid roots, a CR4.PSE zap) wait for the commit.
    if (this.availablePages < need && this.invalidList.length > 0) this.commitZap();
    if (this.availablePages < need) this.noSpace(need, what);
  }

  /** KVM `kvm_mmu_zap_oldest_mmu_pages` (v6): zap from the oldest end, skipping roots in use. */
  private zapOldest(toZap: number): void {
    let zapped = 0;
    for (const sp of this.active) {
      if (zapped >= toZap) break;
      if (sp.rootCount > 0) continue;
      this.prepareZap(sp);
      zapped++;
    }
    if (zapped > 0) {
      this.host.count(this.initiator, 'mmu_recycled', zapped);
      this.commitZap();
    }
  }

  /** KVM `kvm_mmu_change_mmu_pages` (KVM_SET_NR_MMU_PAGES): a new budget; zaps the oldest pages above it. */
  setMaxPages(n: number): void {
    if (!Number.isInteger(n) || n < 8) throw new ShadowMmuError('E_MMU_OPTION', `maxMmuPages must be an integer of at least 8, not ${n}`);
    if (n > this.pool.capacity) {
      const old = this.pool.capacity;
      this.pool.grow(n);
      for (let f = n - 1; f >= old; f--) this.freeFrames.unshift(f);
      while (this.pages.length < n) this.pages.push(null);
    }
    this.maxPages = n;
    if (this.usedPages > n) this.zapOldest(this.usedPages - n);
    this.finish();
  }

  private hashOf(gfn: number): number {
    const lo = gfn >>> 0;
    const hi = Math.floor(gfn / 4294967296);
    return (Math.imul(lo ^ Math.imul(hi, 0x85ebca6b), 0x9e3779b1) >>> (32 - KVM_MMU_HASH_SHIFT)) & ((1 << KVM_MMU_HASH_SHIFT) - 1);
  }

  /** KVM `kvm_mmu_find_shadow_page` / `kvm_mmu_get_shadow_page`: the page for (gfn, role), created on a miss. */
  getPage(gfn: number, role: number): ShadowPage {
    const bucket = this.hash[this.hashOf(gfn)]!;
    for (const sp of bucket) if (sp.gfn === gfn && sp.role === role) return sp;
    this.host.count(this.initiator, 'mmu_cache_miss');
    const frame = this.freeFrames.pop();
    if (frame === undefined || this.usedPages >= this.maxPages) {
      throw new ShadowMmuError('E_MMU_STATE', `no free shadow page for gfn ${hexa(gfn)} ${describeRole(role)}: pages were not reserved`);
    }
    const sp = new ShadowPage(frame, gfn, role);
    this.pages[frame] = sp;
    this.usedPages++;
    bucket.push(sp);
    this.active.add(sp);
    this.initSptes(sp);
    if (!sp.direct && sp.level > 1 && this.unsyncCount.has(gfn)) {
      // The guest reuses an unsync page table at an upper level: in all likelihood it stopped using it as a
      // leaf table, so zap those pages (KVM v6 `kvm_mmu_find_shadow_page` / `kvm_mmu_get_shadow_page`).
      for (const o of bucket) if (o.gfn === gfn && o.unsync) this.prepareZap(o);
    }
    if (!sp.direct) {
      // account_shadowed: the gfn becomes a write-protected guest page table.
      this.indirectShadowPages++;
      this.writeTrack.set(gfn, (this.writeTrack.get(gfn) ?? 0) + 1);
      this.writeProtectGfn(gfn);
    }
    return sp;
  }

  /**
   * A new page's sptes: all trap, except that a level-1 page of 8-byte gptes gets notrap wherever its gpte is
   * not present (KVM 2007 `FNAME(prefetch_page)`; upper levels stay trap, the audit's "no notrap spte at a
   * non-leaf level", and 4-byte-gpte pages too, because of the 2:1 quadrant mapping).
   */
  private initSptes(sp: ShadowPage): void {
    const pool = this.pool;
    pool.fillFrame(sp.frame, this.trapLo, this.trapHi);
    if (!this.notrapAllowed(sp)) return;
    const mem = this.memory;
    const base = sp.gfn * PAGE_SIZE;
    for (let i = 0; i < SPTES_PER_PAGE; i++) {
      if ((mem.read32(base + i * 8) & PT_PRESENT) === 0) pool.set(sp.base + i, this.notrapLo, this.notrapHi);
    }
  }

  /** Whether `sp` may hold notrap sptes: bypass on, a level-1 page of 8-byte gptes, in sync. */
  notrapAllowed(sp: ShadowPage): boolean {
    return this.bypassEncoding && sp.level === 1 && !sp.direct && (sp.role & ROLE_4BYTE_GPTE) === 0 && !sp.unsync;
  }

  /** KVM `rmap_write_protect`: clear W (and MMU-writable) in every spte that maps `gfn`. */
  private writeProtectGfn(gfn: number): void {
    const head = this.rmaps.head(gfn, 1, false);
    if (head === null) return;
    const pool = this.pool;
    for (const loc of head.toArray()) {
      const lo = pool.lo(loc);
      if ((lo & SPTE_W) !== 0) {
        pool.set(loc, (lo & ~(SPTE_W | SPTE_MMU_WRITABLE)) >>> 0, pool.hi(loc));
        this.pendingFlush = true;
      }
    }
  }

  /** The page a non-leaf spte points at. */
  pageAt(pa: number): ShadowPage {
    const f = this.pool.hpaToFrame(pa);
    const sp = f < 0 ? null : this.pages[f]!;
    if (sp === null || sp === undefined) throw new ShadowMmuError('E_MMU_STATE', `a shadow pte points at ${hexa(pa)}, which is no shadow page`);
    return sp;
  }

  /** The page a present non-leaf spte (`lo`, `hi`) points at: `pageAt(sptePa(lo, hi))` in integer arithmetic. */
  private childPage(lo: number, hi: number): ShadowPage {
    const f = ((hi & SPTE_HI_ADDR_MASK) - POOL_BASE_HI) * 0x100000 + (lo >>> 12);
    const sp = f >= 0 && f < this.pages.length ? this.pages[f] : null;
    return sp === null || sp === undefined ? this.pageAt(sptePa(lo, hi)) : sp; // pageAt names the bad spte
  }

  pageOfLoc(loc: number): ShadowPage {
    return this.pages[Math.floor(loc / SPTES_PER_PAGE)]!;
  }

  /** Links the child into a parent spte (KVM `link_shadow_page`). */
  private link(loc: number, child: ShadowPage): void {
    this.pool.set(loc, (child.hpaLo | SPTE_NONLEAF_BITS) >>> 0, child.hpaHi);
    child.parentPtes.add(loc);
  }

  /** KVM `mmu_page_zap_pte`: drops one spte of `sp` (a leaf and its rmap, or the link to a child). */
  private zapSpte(sp: ShadowPage, loc: number): void {
    const pool = this.pool;
    const lo = pool.lo(loc);
    const hi = pool.hi(loc);
    if (!this.isPresent(lo, hi)) {
      if (lo !== this.trapLo || hi !== this.trapHi) this.setTrap(loc); // a notrap spte: the gpte may change
      return;
    }
    if (sp.level === 1) {
      this.rmapRemove(Math.floor(sptePa(lo, hi) / PAGE_SIZE), loc);
    } else {
      const child = this.childPage(lo, hi);
      if (!child.parentPtes.remove(loc)) throw new ShadowMmuError('E_MMU_STATE', `parent_ptes of the page for gfn ${hexa(child.gfn)} lack spte ${loc}`);
    }
    this.setTrap(loc);
    this.pendingFlush = true;
  }

  private rmapAdd(gfn: number, loc: number): void {
    const head = this.rmaps.head(gfn, 1, true)!;
    head.add(loc);
    if (head.size > RMAP_RECYCLE_THRESHOLD) {
      // rmap_recycle: zap every spte of this rmap and flush.
      for (const l of head.toArray()) this.zapSpte(this.pageOfLoc(l), l);
    }
  }

  private rmapRemove(gfn: number, loc: number): void {
    const head = this.rmaps.head(gfn, 1, false);
    if (head === null || !head.remove(loc)) throw new ShadowMmuError('E_MMU_STATE', `no rmap for spte ${loc} (gfn ${hexa(gfn)})`);
  }

  /**
   * KVM `__kvm_mmu_prepare_zap_page`: unlink the children and the parents, undo the write protection, and
   * either queue the page for freeing or, when a vCPU uses it as a root, mark it invalid.
   */
  prepareZap(sp: ShadowPage): void {
    if (sp.zapped) return;
    sp.zapped = true;
    this.host.count(this.initiator, 'mmu_shadow_zapped');
    for (let i = 0; i < SPTES_PER_PAGE; i++) this.zapSpte(sp, sp.base + i);
    for (const loc of sp.parentPtes.toArray()) {
      this.setTrap(loc);
      sp.parentPtes.remove(loc);
      this.pendingFlush = true;
    }
    if (sp.unsync) this.clearUnsync(sp);
    if (!sp.direct) {
      this.indirectShadowPages--;
      const c = this.writeTrack.get(sp.gfn)! - 1;
      if (c === 0) this.writeTrack.delete(sp.gfn);
      else this.writeTrack.set(sp.gfn, c);
    }
    const bucket = this.hash[this.hashOf(sp.gfn)]!;
    bucket.splice(bucket.indexOf(sp), 1);
    this.active.delete(sp);
    if (sp.rootCount === 0) {
      this.invalidList.push(sp);
    } else {
      sp.role |= ROLE_INVALID;
      this.invalidRoots.add(sp);
      for (const st of this.states) {
        if (st === undefined) continue;
        if (st.root === sp || st.paeRoots.includes(sp) || st.prevRoots.some((p) => p.sp === sp)) st.needReload = true;
      }
    }
  }

  /** KVM `kvm_mmu_commit_zap_page`: flush the TLBs, then free the zapped pages. */
  private commitZap(): void {
    if (this.pendingFlush) this.remoteFlush();
    if (this.invalidList.length === 0) return;
    for (const sp of this.invalidList) {
      this.pool.clearFrame(sp.frame);
      this.pages[sp.frame] = null;
      this.freeFrames.push(sp.frame);
      this.usedPages--;
    }
    this.invalidList.length = 0;
  }

  /** KVM `kvm_flush_remote_tlbs`: every vCPU's TLB. Only when an spte lost rights or disappeared. */
  private remoteFlush(): void {
    this.pendingFlush = false;
    this.host.count(this.initiator, 'remote_tlb_flush');
    for (const v of this.host.vcpus) {
      v.tlb.flushAll(false);
      this.host.count(v.id, 'tlb_flush');
    }
  }

  /** The end of every operation: free what was zapped (after the flush), and reload obsolete roots. */
  private finish(): void {
    this.commitZap();
    this.processReloads();
    this.commitZap();
  }

  private processReloads(): void {
    for (const st of this.states) {
      if (st === undefined || !st.needReload) continue;
      const reload = st.currentRoots().some((sp) => sp.zapped);
      // Nothing is released before the new roots are known to fit (else the vCPU keeps its invalid roots).
      if (reload && this.availablePages < MAX_ROOTS) this.ensureRootSpace(st, this.rootsReleased(st, true, 0, true), false, 'the reloaded roots');
      st.needReload = false;
      // kvm_mmu_free_obsolete_roots, then kvm_mmu_load.
      for (let i = st.prevRoots.length - 1; i >= 0; i--) {
        if (st.prevRoots[i]!.sp.zapped) this.releaseRoot(st.prevRoots.splice(i, 1)[0]!.sp);
      }
      if (reload) {
        this.freeRoots(st, false);
        this.loadRoots(st);
      }
    }
  }

  private zapAllFourByte(): void {
    for (const sp of [...this.active]) if ((sp.role & ROLE_4BYTE_GPTE) !== 0) this.prepareZap(sp);
  }

  /** The valid indirect pages of `gfn` (KVM `for_each_gfn_valid_sp_with_gptes`), as a snapshot. */
  indirectPagesOf(gfn: number): ShadowPage[] {
    const out: ShadowPage[] = [];
    this.collectIndirectPages(gfn, out);
    return out;
  }

  /** `indirectPagesOf` into `out` from index 0 (entries past the returned count are left as they are). */
  private collectIndirectPages(gfn: number, out: (ShadowPage | null)[]): number {
    const bucket = this.hash[this.hashOf(gfn)]!;
    let n = 0;
    for (let i = 0; i < bucket.length; i++) {
      const sp = bucket[i]!;
      if (sp.gfn === gfn && !sp.direct && !sp.zapped) out[n++] = sp;
    }
    return n;
  }

  /** trackWrite's snapshot of pages (null while a call uses it). */
  private pageScratch: (ShadowPage | null)[] | null = [];

  // -------------------------------------------------------------------------------------------------
  // Roots

  private stateOf(vcpu: Vcpu): VcpuShadowState {
    const st = this.states[vcpu.id];
    if (st === undefined) throw new ShadowMmuError('E_MMU_STATE', `vCPU ${vcpu.id} was not attached to the shadow MMU`);
    return st;
  }

  /** The guest-state inputs of the root role, without level and quadrant (KVM's base role). */
  baseRole(vcpu: Vcpu): number {
    const g = vcpu.ctx;
    return rootRoleOf(0, g.mode === MODE_LEGACY32, 0, g.eferNxe, g.cr0Wp, g.cr4Smep, g.cr4Smap);
  }

  private signatureOf(vcpu: Vcpu): number {
    if (!vcpu.pagingEnabled) return SIG_NOPAGING;
    const g = vcpu.ctx;
    return this.baseRole(vcpu) * 16 + g.mode * 2 + (g.cr4Pse ? SIG_PSE : 0);
  }

  private pdptesChanged(st: VcpuShadowState): boolean {
    const g = st.vcpu.ctx;
    if (g.mode !== MODE_PAE) return false;
    for (let i = 0; i < 4; i++) if (g.pdpteLo[i] !== st.pdpteLo[i] || g.pdpteHi[i] !== st.pdpteHi[i]) return true;
    return false;
  }

  /** KVM `mmu_alloc_shadow_roots`: the roots for the guest's current mode, CR3 and PDPTEs. */
  private loadRoots(st: VcpuShadowState): void {
    const vcpu = st.vcpu;
    const g = vcpu.ctx;
    const ctx = st.ctx;
    // Reserve before any state changes (KVM mmu_topup_memory_caches, then make_mmu_pages_available in
    // mmu_alloc_shadow_roots): a page for each root that has none yet, so running out leaves the vCPU as it was.
    if (vcpu.pagingEnabled) this.reserveRoots(vcpu);
    st.signature = this.signatureOf(vcpu);
    ctx.pdpteLo.fill(0);
    ctx.pdpteHi.fill(0);
    if (!vcpu.pagingEnabled) {
      // No roots: the vCPU does not run with CR0.PG = 0 (real mode is not modelled).
      ctx.mode = MODE_PAE;
      return;
    }
    const base = this.baseRole(vcpu);
    if (g.mode === MODE_LONG4 || g.mode === MODE_LONG5) {
      const level = g.mode === MODE_LONG4 ? 4 : 5;
      const sp = this.getPage(Math.floor(g.cr3 / PAGE_SIZE), base | level);
      sp.rootCount++;
      st.root = sp;
      ctx.mode = g.mode;
      ctx.cr3 = sp.hpa;
      return;
    }
    ctx.mode = MODE_PAE;
    st.pdpteLo.set(g.pdpteLo);
    st.pdpteHi.set(g.pdpteHi);
    for (let i = 0; i < 4; i++) {
      const gfn = paeRootGfn(g, i);
      if (gfn < 0) {
        st.paeRoots[i] = null;
        continue;
      }
      const sp = this.getPage(gfn, paeRootRole(g, base, i));
      sp.rootCount++;
      st.paeRoots[i] = sp;
      ctx.pdpteLo[i] = (sp.hpaLo | SPTE_P) >>> 0;
      ctx.pdpteHi[i] = sp.hpaHi;
    }
  }

  /** Drops the vCPU's current roots (and, with `all`, the cached previous roots): KVM `kvm_mmu_free_roots`. */
  private freeRoots(st: VcpuShadowState, all: boolean): void {
    if (st.root !== null) this.releaseRoot(st.root);
    st.root = null;
    for (let i = 0; i < 4; i++) {
      const sp = st.paeRoots[i];
      if (sp !== null && sp !== undefined) this.releaseRoot(sp);
      st.paeRoots[i] = null;
    }
    if (all) {
      for (const p of st.prevRoots) this.releaseRoot(p.sp);
      st.prevRoots.length = 0;
    }
  }

  private releaseRoot(sp: ShadowPage): void {
    sp.rootCount--;
    if (sp.rootCount === 0 && this.invalidRoots.delete(sp)) this.invalidList.push(sp);
  }

  /**
   * A new CR3 (or new PDPTEs) with the same role (KVM `kvm_mmu_new_pgd`). 64-bit guests keep up to three
   * previous roots and switch back to one without rebuilding (`fast_pgd_switch`); PAE and 32-bit guests
   * get new roots.
   */
  private newPgd(st: VcpuShadowState): void {
    const g = st.vcpu.ctx;
    if (!st.vcpu.pagingEnabled) return;
    if ((g.mode === MODE_LONG4 || g.mode === MODE_LONG5) && st.root !== null) {
      const pgd = Math.floor(g.cr3 / PAGE_SIZE);
      const cur = st.root;
      if (cur.gfn === pgd && !cur.zapped) return;
      const i = st.prevRoots.findIndex((p) => p.pgd === pgd && p.sp.role === cur.role);
      // A miss loads a new root; the current one stays pinned as a previous root and the oldest of a full
      // cache is released.
      if (i < 0 && this.availablePages < MAX_ROOTS) {
        const from = st.prevRoots.length >= KVM_MMU_NUM_PREV_ROOTS ? KVM_MMU_NUM_PREV_ROOTS - 1 : st.prevRoots.length;
        this.ensureRootSpace(st, this.rootsReleased(st, false, from, false), false, 'a new root');
      }
      st.prevRoots.unshift({ pgd: cur.gfn, sp: cur });
      st.root = null;
      if (i >= 0) {
        const hit = st.prevRoots.splice(i + 1, 1)[0]!;
        st.root = hit.sp;
        st.ctx.cr3 = hit.sp.hpa;
      }
      while (st.prevRoots.length > KVM_MMU_NUM_PREV_ROOTS) this.releaseRoot(st.prevRoots.pop()!.sp);
      if (st.root === null) this.loadRoots(st);
      return;
    }
    if (this.availablePages < MAX_ROOTS) this.ensureRootSpace(st, this.rootsReleased(st, true, st.prevRoots.length, false), false, 'the new roots');
    this.freeRoots(st, false);
    this.loadRoots(st);
  }

  /** The roots the vCPU's guest state needs (as `loadRoots` builds them), into `rootGfn`/`rootRole`; returns how many. */
  private rootTargets(vcpu: Vcpu): number {
    if (!vcpu.pagingEnabled) return 0;
    const g = vcpu.ctx;
    const base = this.baseRole(vcpu);
    const cr3Gfn = Math.floor(g.cr3 / PAGE_SIZE);
    if (g.mode === MODE_LONG4 || g.mode === MODE_LONG5) {
      this.rootGfn[0] = cr3Gfn;
      this.rootRole[0] = base | (g.mode === MODE_LONG4 ? 4 : 5);
      return 1;
    }
    let n = 0;
    for (let i = 0; i < 4; i++) {
      const gfn = paeRootGfn(g, i);
      if (gfn < 0) continue;
      const role = paeRootRole(g, base, i);
      let dup = false;
      for (let j = 0; j < n; j++) if (this.rootGfn[j] === gfn && this.rootRole[j] === role) dup = true; // two PDPTEs, one PD: one page
      if (dup) continue;
      this.rootGfn[n] = gfn;
      this.rootRole[n++] = role;
    }
    return n;
  }

  private readonly rootGfn = new Float64Array(MAX_ROOTS);
  private readonly rootRole = new Int32Array(MAX_ROOTS);

  /** The page for (gfn, role), or null (KVM `kvm_mmu_find_shadow_page`, without creating one). */
  private findPage(gfn: number, role: number): ShadowPage | null {
    for (const sp of this.hash[this.hashOf(gfn)]!) if (sp.gfn === gfn && sp.role === role) return sp;
    return null;
  }

  /** How many roots the vCPU's guest state needs that have no shadow page yet. */
  private missingRoots(vcpu: Vcpu): number {
    const n = this.rootTargets(vcpu);
    let m = 0;
    for (let i = 0; i < n; i++) if (this.findPage(this.rootGfn[i]!, this.rootRole[i]!) === null) m++;
    return m;
  }

  /** Reserves a page for every missing root (reclaiming first when fewer than 5 are free); E_MMU_NOSPC otherwise. */
  private reserveRoots(vcpu: Vcpu): void {
    const what = vcpu.ctx.mode === MODE_LONG4 || vcpu.ctx.mode === MODE_LONG5 ? 'a root' : 'the PAE roots';
    this.reservePages(this.missingRoots(vcpu), what);
    // A reclaim may have zapped a page that was to be reused as a root: then that one is missing too.
    const need = this.missingRoots(vcpu);
    if (this.availablePages < need) this.noSpace(need, what);
  }

  /** The root slots of `st` that a reload releases: the current roots, and previous roots from index `prevFrom` (only zapped ones with `zappedOnly`). */
  private rootsReleased(st: VcpuShadowState, current: boolean, prevFrom: number, zappedOnly: boolean): ShadowPage[] {
    const out = current ? st.currentRoots() : [];
    for (let i = prevFrom; i < st.prevRoots.length; i++) {
      const sp = st.prevRoots[i]!.sp;
      if (!zappedOnly || sp.zapped) out.push(sp);
    }
    return out;
  }

  /**
   * The check before a vCPU's roots are released and reloaded (KVM tops up its caches before kvm_mmu_load):
   * E_MMU_NOSPC, with nothing changed, unless the roots its guest state needs fit after `releasing` is
   * released (and, with `zapFourByte`, the 4-byte-gpte pages are zapped) and every page that no root slot
   * holds then is reclaimed. Worst case on both sides: a target page that nothing holds may be reclaimed, so
   * it counts as missing, and as a page freed. When this passes, the release, the reclaim (which zaps up to
   * 25 free or every unheld page) and the load that follow cannot run out, so a failure never leaves a vCPU
   * without roots.
   */
  private ensureRootSpace(st: VcpuShadowState, releasing: readonly ShadowPage[], zapFourByte: boolean, what: string): void {
    const held = (sp: ShadowPage): boolean => {
      let n = sp.rootCount;
      for (const r of releasing) if (r === sp) n--;
      return n > 0;
    };
    const n = this.rootTargets(st.vcpu);
    let need = 0;
    for (let i = 0; i < n; i++) {
      const sp = this.findPage(this.rootGfn[i]!, this.rootRole[i]!);
      if (sp === null || !held(sp) || (zapFourByte && (sp.role & ROLE_4BYTE_GPTE) !== 0)) need++;
    }
    let free = this.availablePages + this.invalidList.length;
    if (free >= need) return;
    for (const sp of this.active) if (!held(sp)) free++;
    for (const sp of this.invalidRoots) if (!held(sp)) free++;
    if (free < need) this.noSpace(need, what);
  }

  private noSpace(need: number, what: string): never {
    throw new ShadowMmuError(
      'E_MMU_NOSPC',
      `the shadow MMU needs ${need} free pages for ${what}, but only ${this.availablePages} of n_max_mmu_pages=${this.maxPages} are free and ` +
        `the other ${this.usedPages} pages are roots in use (raise maxMmuPages)`,
    );
  }

  // -------------------------------------------------------------------------------------------------
  // The fault path

  /** The root page for `va` (the PAE root of VA bits 31:30, or the 64-bit root). */
  private topPage(st: VcpuShadowState, va: number): ShadowPage | null {
    return st.root ?? st.paeRoots[(va >>> 30) & 3] ?? null;
  }

  /** Resets the flood counts of the pages a walk of `va` uses (KVM `clear_sp_write_flooding_count`). */
  private clearFloodCounts(st: VcpuShadowState, va: number): void {
    let sp = this.topPage(st, va);
    while (sp !== null) {
      sp.writeFloodingCount = 0;
      if (sp.level === 1) return;
      const loc = sp.base + levelIndex(va, sp.level);
      const lo = this.pool.lo(loc);
      const hi = this.pool.hi(loc);
      if (!this.isPresent(lo, hi)) return;
      sp = this.childPage(lo, hi);
    }
  }

  /**
   * FNAME(fetch) (paging_tmpl.h): walk the shadow tables from the root, create each missing level (an
   * indirect page for each guest table, direct pages below a guest large page), then set the leaf.
   */
  private fetch(st: VcpuShadowState, va: number, r: WalkResult, gfn: number, slot: Memslot, pteAccess: number, write: boolean): PageFaultResolution {
    const g = st.vcpu.ctx;
    const nxe = g.eferNxe && g.mode !== MODE_LEGACY32;
    const guestLeaf = r.leafLevel;
    let sp = this.topPage(st, va);
    if (sp === null) throw new ShadowMmuError('E_MMU_STATE', `vCPU ${st.vcpu.id}: no shadow root for ${hexa(va)} although the guest walk succeeded`);
    const pool = this.pool;
    for (;;) {
      sp.writeFloodingCount = 0;
      const level = sp.level;
      const idx = levelIndex(va, level);
      const loc = sp.base + idx;
      if (level === 1)
        return this.setLeaf(
          st,
          sp,
          loc,
          gfn,
          slot,
          pteAccess,
          write,
          g.mode === MODE_LONG4 || g.mode === MODE_LONG5 ? r.entryHi[guestLeaf]! & SPTE_HI_PKEY_MASK : 0,
        );
      const direct = level - 1 < guestLeaf;
      let childGfn: number;
      let access: number;
      if (!direct) {
        childGfn = Math.floor(r.entryPa[level - 1]! / PAGE_SIZE);
        access = roleAccess(sp.role) & gpteAccess(r.entryLo[level]!, r.entryHi[level]!, nxe);
      } else {
        const span = 2 ** (9 * (level - 1));
        childGfn = Math.floor(gfn / span) * span;
        access = pteAccess;
      }
      const role = childRole(sp.role, idx, direct, access);
      const lo = pool.lo(loc);
      const hi = pool.hi(loc);
      if (this.isPresent(lo, hi)) {
        const child = this.childPage(lo, hi);
        if (child.gfn === childGfn && child.role === role) {
          sp = child;
          continue;
        }
        // validate_direct_spte: a direct page built for other rights (the guest pte became dirty, or an
        // alias with other rights): unlink it and link the right one.
        this.zapSpte(sp, loc);
      }
      const child = this.getPage(childGfn, role);
      // FNAME(fetch): "We must synchronize the pagetable before linking it because the guest doesn't need
      // to flush tlb when the gpte is changed from non-present to present."
      if (child.unsync) this.syncPage(st.vcpu, child);
      this.link(loc, child);
      sp = child;
    }
  }

  /** KVM `mmu_set_spte` / `make_spte`: the leaf spte, never more than guest rights AND the host mapping. */
  private setLeaf(
    st: VcpuShadowState,
    sp: ShadowPage,
    loc: number,
    gfn: number,
    slot: Memslot,
    pteAccess: number,
    write: boolean,
    pkey: number,
  ): PageFaultResolution {
    const vcpuId = st.vcpu.id;
    let wrprot = false;
    let lo = ((gfn % 0x100000) * PAGE_SIZE + (SPTE_P | SPTE_A)) >>> 0;
    let hi = Math.floor(gfn / 0x100000) | pkey;
    if (!slot.readonly) lo |= SPTE_HOST_WRITABLE;
    if ((pteAccess & ACC_WRITE_MASK) !== 0 && !slot.readonly) {
      // mmu_try_to_unsync_pages: a write-protected guest page table stays read-only unless its level-1
      // pages may go unsync.
      if (this.isWriteProtected(gfn) && !this.tryUnsync(st, gfn)) wrprot = true;
      else lo |= SPTE_W | SPTE_MMU_WRITABLE | SPTE_D;
    }
    if ((pteAccess & ACC_USER_MASK) !== 0) lo |= SPTE_U;
    if ((pteAccess & ACC_EXEC_MASK) === 0) hi |= SPTE_HI_NX;
    lo >>>= 0;
    hi >>>= 0;
    this.installLeaf(sp, loc, lo, hi);
    // FNAME(pte_prefetch) after the leaf of a level-1 page of a guest table, when a policy asks for it.
    if (!sp.direct && decidePrefetch(this.host, vcpuId, st.mmuEventSeq++, this.lastFaultVa, sp.gfn)) this.prefetch(st.vcpu, sp, loc - sp.base);
    // kvm_mmu_do_page_fault's statistics: pf_fixed for RET_PF_FIXED, pf_emulate for RET_PF_EMULATE.
    if (wrprot && write) {
      this.host.count(vcpuId, 'pf_emulate');
      return EMULATE;
    }
    this.host.count(vcpuId, 'pf_fixed');
    return RETRY;
  }

  private installLeaf(sp: ShadowPage, loc: number, lo: number, hi: number): void {
    const pool = this.pool;
    const oldLo = pool.lo(loc);
    const oldHi = pool.hi(loc);
    const gfn = Math.floor(sptePa(lo, hi) / PAGE_SIZE);
    if (this.isPresent(oldLo, oldHi)) {
      if (sptePa(oldLo, oldHi) !== sptePa(lo, hi)) {
        this.zapSpte(sp, loc); // another frame: drop the old mapping (and flush) first
      } else {
        if (spteNeedsFlush(oldLo, oldHi, lo, hi)) this.pendingFlush = true;
        pool.set(loc, lo, hi);
        return;
      }
    }
    pool.set(loc, lo, hi);
    this.rmapAdd(gfn, loc);
  }

  /**
   * FNAME(update_pte) (KVM 2007-2021): after the written spte was cleared, install the new gpte at once
   * when it is present and accessed with no reserved bits; access is the page's role access AND the gpte's.
   * A gpte written not present becomes notrap where the page may hold notrap sptes (KVM 2007: "if
   * (!offset_in_pte && !is_present_pte(gpte)) set_shadow_pte(spte, shadow_notrap_nonpresent_pte)"); a
   * present gpte with A=0 stays trap, so that the access that sets A exits.
   */
  private updatePte(vcpu: Vcpu, sp: ShadowPage, loc: number, gLo: number, gHi: number): void {
    if ((gLo & PT_PRESENT) === 0) {
      if (this.notrapAllowed(sp)) this.pool.set(loc, this.notrapLo, this.notrapHi);
      return;
    }
    if (!this.leafFromGpte(vcpu, sp, gLo, gHi)) return;
    this.installLeaf(sp, loc, this.leafLo, this.leafHi);
    this.host.count(vcpu.id, 'mmu_pte_updated');
  }

  /** Scratch result of `leafFromGpte`. */
  private leafLo = 0;
  private leafHi = 0;
  /** The linear address of the fault being handled (for MMU events). */
  private lastFaultVa = 0;

  /**
   * The leaf spte for gpte (`gLo`, `gHi`) in level-1 page `sp` (KVM `FNAME(prefetch_gpte)` / `sync_spte`),
   * into `leafLo`/`leafHi`; false when the gpte is invalid for that (not present, A=0, reserved bits: KVM
   * `FNAME(prefetch_invalid_gpte)`) or maps no memslot. Rights: the page's role access AND the gpte's; W only
   * when the gpte is dirty (`protect_clean_gpte`) and the target is not a write-protected guest page table.
   */
  private leafFromGpte(vcpu: Vcpu, sp: ShadowPage, gLo: number, gHi: number): boolean {
    const g = vcpu.ctx;
    if ((gLo & (PT_PRESENT | PT_ACCESSED)) !== (PT_PRESENT | PT_ACCESSED)) return false;
    const fourByte = (sp.role & ROLE_4BYTE_GPTE) !== 0;
    const nxe = g.eferNxe && !fourByte;
    if (!fourByte && gpteReserved(gHi, g.maxPhyAddr, nxe, g.mode === MODE_PAE)) return false;
    const gfn = fourByte ? gLo >>> 12 : (gLo >>> 12) + (gHi & 0xfffff) * 0x100000;
    const slot = this.memory.slotForGfn(gfn);
    if (slot === null) return false;
    let access = roleAccess(sp.role) & gpteAccess(gLo, fourByte ? 0 : gHi, nxe);
    if ((gLo & 0x40) === 0) access &= ~ACC_WRITE_MASK; // protect_clean_gpte
    let lo = ((gfn % 0x100000) * PAGE_SIZE + (SPTE_P | SPTE_A)) >>> 0;
    let hi = Math.floor(gfn / 0x100000) | (g.mode === MODE_LONG4 || g.mode === MODE_LONG5 ? gHi & SPTE_HI_PKEY_MASK : 0);
    if (!slot.readonly) lo |= SPTE_HOST_WRITABLE;
    if ((access & ACC_WRITE_MASK) !== 0 && !slot.readonly && !this.isWriteProtected(gfn)) lo |= SPTE_W | SPTE_MMU_WRITABLE | SPTE_D;
    if ((access & ACC_USER_MASK) !== 0) lo |= SPTE_U;
    if ((access & ACC_EXEC_MASK) === 0) hi |= SPTE_HI_NX;
    this.leafLo = lo >>> 0;
    this.leafHi = hi >>> 0;
    return true;
  }

  /** The guest-physical address of the gpte behind spte `i` of indirect level-1 page `sp` (KVM `FNAME(get_level1_sp_gpa)`). */
  gpteAddress(sp: ShadowPage, i: number): number {
    if ((sp.role & ROLE_4BYTE_GPTE) !== 0) return sp.gfn * PAGE_SIZE + ((roleQuadrant(sp.role) << 9) + i) * 4;
    return sp.gfn * PAGE_SIZE + i * 8;
  }

  private readGpte(sp: ShadowPage, i: number): void {
    const a = this.gpteAddress(sp, i);
    this.gpteLo = this.memory.read32(a);
    this.gpteHi = (sp.role & ROLE_4BYTE_GPTE) !== 0 ? 0 : this.memory.read32(a + 4);
  }

  private gpteLo = 0;
  private gpteHi = 0;

  /**
   * FNAME(pte_prefetch) (PTE_PREFETCH_NUM = 8): after the fault at spte `idx` of level-1 page `sp`, map the
   * other non-present sptes of its aligned group of 8 whose gptes are present and accessed; stop at the
   * first gpte that cannot be mapped. A prefetch never makes a page unsync.
   */
  private prefetch(vcpu: Vcpu, sp: ShadowPage, idx: number): void {
    const pool = this.pool;
    const first = idx & ~(PTE_PREFETCH_NUM - 1);
    for (let i = first; i < first + PTE_PREFETCH_NUM; i++) {
      if (i === idx) continue;
      const loc = sp.base + i;
      if (this.isPresent(pool.lo(loc), pool.hi(loc))) continue;
      this.readGpte(sp, i);
      if (!this.leafFromGpte(vcpu, sp, this.gpteLo, this.gpteHi)) break;
      this.installLeaf(sp, loc, this.leafLo, this.leafHi);
    }
  }

  // -------------------------------------------------------------------------------------------------
  // Unsync pages (KVM 4731d4c7a077 "out of sync shadow core"; kvm-mmu.md §A.8)

  /**
   * mmu_try_to_unsync_pages: a writable spte for `gfn` is allowed when every shadow page of the gfn is a
   * level-1 page and the policies let them go unsync; they are all marked unsync (`kvm_unsync_page`).
   */
  private tryUnsync(st: VcpuShadowState, gfn: number): boolean {
    if (this.hasUpperLevelPage(gfn)) return false;
    if (!decideUnsync(this.host, st.vcpu.id, st.mmuEventSeq++, gfn)) return false;
    for (const sp of this.indirectPagesOf(gfn)) if (!sp.unsync) this.markUnsync(st.vcpu.id, sp);
    return true;
  }

  private markUnsync(vcpuId: number, sp: ShadowPage): void {
    sp.unsync = true;
    this.unsyncPages.add(sp);
    this.unsyncCount.set(sp.gfn, (this.unsyncCount.get(sp.gfn) ?? 0) + 1);
    this.host.count(vcpuId, 'mmu_unsync');
    // mmu_convert_notrap: the guest may now make a gpte present without an exit, so no notrap may stay.
    if (this.bypassEncoding) {
      const pool = this.pool;
      for (let i = 0; i < SPTES_PER_PAGE; i++) {
        const loc = sp.base + i;
        if (this.isNotrap(pool.lo(loc), pool.hi(loc))) this.setTrap(loc);
      }
    }
  }

  private clearUnsync(sp: ShadowPage): void {
    sp.unsync = false;
    this.unsyncPages.delete(sp);
    const c = this.unsyncCount.get(sp.gfn)! - 1;
    if (c === 0) this.unsyncCount.delete(sp.gfn);
    else this.unsyncCount.set(sp.gfn, c);
  }

  /**
   * kvm_sync_page: write-protect the gfn again, then bring every present spte back in line with its gpte
   * (FNAME(sync_page)): an invalid gpte or another frame drops the spte, otherwise it is rebuilt with the
   * gpte's current rights (a flush when rights were lost).
   */
  syncPage(vcpu: Vcpu, sp: ShadowPage): void {
    this.clearUnsync(sp);
    if (this.isWriteProtected(sp.gfn)) this.writeProtectGfn(sp.gfn);
    const pool = this.pool;
    for (let i = 0; i < SPTES_PER_PAGE; i++) {
      const loc = sp.base + i;
      const lo = pool.lo(loc);
      const hi = pool.hi(loc);
      if (!this.isPresent(lo, hi)) continue;
      this.readGpte(sp, i);
      if (!this.leafFromGpte(vcpu, sp, this.gpteLo, this.gpteHi) || sptePa(lo, hi) !== sptePa(this.leafLo, this.leafHi)) this.zapSpte(sp, loc);
      else this.installLeaf(sp, loc, this.leafLo, this.leafHi);
    }
  }

  /** kvm_mmu_sync_roots: sync every unsync page reachable from the vCPU's current roots. */
  private syncRoots(st: VcpuShadowState): void {
    const roots = new Set(st.currentRoots());
    for (const sp of [...this.unsyncPages]) if (sp.unsync && this.reachable(sp, roots)) this.syncPage(st.vcpu, sp);
  }

  /** Whether a root of `roots` reaches `sp` (up the parent_ptes links). */
  private reachable(sp: ShadowPage, roots: Set<ShadowPage>): boolean {
    const seen = new Set<ShadowPage>();
    const stack = [sp];
    while (stack.length > 0) {
      const p = stack.pop()!;
      if (roots.has(p)) return true;
      if (seen.has(p)) continue;
      seen.add(p);
      for (const loc of p.parentPtes.toArray()) stack.push(this.pageOfLoc(loc));
    }
    return false;
  }

  /**
   * FNAME(invlpg): for the current root and every cached previous root, walk the shadow tables for `va`; at
   * an unsync level-1 page, drop the spte and map the gpte again if it is valid.
   */
  private invlpgSync(st: VcpuShadowState, va: number): void {
    const roots: (ShadowPage | null)[] = st.root !== null ? [st.root, ...st.prevRoots.map((p) => p.sp)] : [st.paeRoots[(va >>> 30) & 3] ?? null];
    const pool = this.pool;
    for (const root of roots) {
      let sp = root;
      while (sp !== null && !sp.zapped && sp.level > 1) {
        const loc = sp.base + levelIndex(va, sp.level);
        const lo = pool.lo(loc);
        const hi = pool.hi(loc);
        sp = this.isPresent(lo, hi) ? this.childPage(lo, hi) : null;
      }
      if (sp === null || !sp.unsync) continue;
      const i = levelIndex(va, 1);
      const loc = sp.base + i;
      this.zapSpte(sp, loc);
      this.readGpte(sp, i);
      if (this.leafFromGpte(st.vcpu, sp, this.gpteLo, this.gpteHi)) this.installLeaf(sp, loc, this.leafLo, this.leafHi);
    }
  }
}

const SIG_PSE = 1;
/** The most roots a vCPU's guest state needs: four PAE (or quadrant) roots. */
const MAX_ROOTS = 4;
/** The high half of POOL_BASE (a non-leaf spte's address bits 51:32 are at least this). */
const POOL_BASE_HI = POOL_BASE / 4294967296;
/** Bits 51:HOST_MAXPHYADDR of an spte's high half: reserved in every entry format under the host MAXPHYADDR. */
const HOST_RSVD_HI = ((0xfffff >>> (HOST_MAXPHYADDR - 32)) << (HOST_MAXPHYADDR - 32)) >>> 0;
const SIG_NOPAGING = -2;

/** The index of `va` in a table of `level` (9 bits per level above the 4 KiB offset). */
export function levelIndex(va: number, level: number): number {
  if (level === 1) return (va >>> 12) & 511;
  if (level === 2) return (va >>> 21) & 511;
  // The two 32-bit halves of the signed-canonical address (core DESIGN.md): `va - lo` is an exact multiple of
  // 2^32, so `hi` is exact and the shifts below are the bits of the two's-complement address.
  const lo = va >>> 0;
  const hi = ((va - lo) / 4294967296) | 0;
  if (level === 3) return ((lo >>> 30) | (hi << 2)) & 511;
  if (level === 4) return (hi >>> 7) & 511;
  return (hi >>> 16) & 511;
}

/** A guest entry's rights in ACC_* form (KVM `gpte_access`): W, U, and X unless XD with NXE. */
export function gpteAccess(lo: number, hi: number, nxe: boolean): number {
  return (lo & PT_WRITABLE ? ACC_WRITE_MASK : 0) | (lo & PT_USER ? ACC_USER_MASK : 0) | (nxe && (hi & PT_HI_XD) !== 0 ? 0 : ACC_EXEC_MASK);
}

/** Reserved bits of a 64-bit guest PTE's high half (SDM Vol. 3A Tables 4-11, 4-19; kvm-mmu.md §D.2). */
function gpteReserved(hi: number, maxPhyAddr: number, nxe: boolean, pae: boolean): boolean {
  const m = maxPhyAddr - 32;
  const addrRsvd = pae ? (0x7fffffff >>> m) << m : (0xfffff >>> m) << m;
  return (hi & addrRsvd) !== 0 || (!nxe && (hi & PT_HI_XD) !== 0);
}

function hexa(n: number): string {
  return n < 0 ? `-0x${(-n).toString(16)}` : `0x${n.toString(16)}`;
}
