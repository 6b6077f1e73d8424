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
  type PageFaultResolution,
  type Vcpu,
} from '@vmexit/core';
import { auditShadowMmu } from './audit.js';
import { ShadowPagingContext } from './context.js';
import { ShadowMmuError } from './errors.js';
import { ShadowPage } from './page.js';
import { ShadowMemory, ShadowPool, SPTES_PER_PAGE } from './pool.js';
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
  rootRole,
} from './role.js';
import {
  SPTE_A,
  SPTE_D,
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
import { decideFlood, decidePteWrite, detectWriteMisaligned, writtenSptes } from './write-decision.js';

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
export class ShadowMmu implements Mmu {
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
    this.processReloads();
    // make_mmu_pages_available + the topup of KVM's caches: reserve the pages the fetch may need before
    // any state changes (one per shadow level below the root).
    this.reservePages(st.ctx.mode === MODE_PAE ? 1 : st.ctx.mode === MODE_LONG4 ? 3 : 4, 'a page fault');
    // FNAME(page_fault) (paging_tmpl.h): the guest walk, with RSVD (from our own sptes) stripped and A/D set.
    const access = errorCode & (ACC_WRITE | ACC_USER | ACC_FETCH);
    const r = this.walkResult;
    const ws = walk(vcpu.ctx, vcpu.memory, address, access, WALK_SIDE_EFFECTS, r);
    if (ws === WALK_PAGE_FAULT) {
      this.host.count(vcpu.id, 'pf_guest');
      return { kind: 'inject', vector: 14, errorCode: r.errorCode, cr2: address };
    }
    if (ws !== WALK_OK) throw new ShadowMmuError('E_MMU_STATE', `vCPU ${vcpu.id}: the guest walk of ${hexa(address)} ended with status ${ws} (expected a #PF or success)`);
    const gpa = r.pa;
    const gfn = Math.floor(gpa / PAGE_SIZE);
    const write = (access & ACC_WRITE) !== 0;
    const user = (access & ACC_USER) !== 0;
    const slot = this.memory.slotForGfn(gfn);
    // No memslot (or a write to read-only RAM): MMIO, an exit to user space (KVM `kvm_handle_noslot_fault`).
    if (slot === null || (write && slot.readonly)) return { kind: 'mmio', gpa };
    // page_fault_handle_page_track: a write that hit a present spte of a write-protected guest page table.
    if ((errorCode & PFERR_PRESENT) !== 0 && write && this.writeTrack.has(gfn)) {
      this.clearFloodCounts(st, address);
      this.host.count(vcpu.id, 'pf_emulate');
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
        return EMULATE;
      }
      pteAccess = (pteAccess | ACC_WRITE_MASK) & ~ACC_USER_MASK;
      if (g.cr4Smep) pteAccess &= ~ACC_EXEC_MASK;
    }
    const res = this.fetch(st, address, r, gfn, slot, pteAccess, write);
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
    const targets = this.indirectPagesOf(gfn);
    const baseRole = this.baseRole(vcpu);
    for (const sp of targets) {
      if (sp.zapped) continue;
      const level = sp.level;
      const fourByte = (sp.role & ROLE_4BYTE_GPTE) !== 0;
      const misaligned = detectWriteMisaligned(gpa, bytes, fourByte ? 4 : 8);
      let flooded = false;
      if (level > 1) {
        sp.writeFloodingCount++;
        flooded = decideFlood(this.host, vcpu.id, st.mmuEventSeq++, gfn, sp.writeFloodingCount);
      }
      const decision = flooded ? 'zap-page' : decidePteWrite(this.host, vcpu.id, st.mmuEventSeq++, gpa, bytes, oldLo, oldHi, newLo, newHi, level, misaligned);
      if (decision === 'zap-page') {
        this.prepareZap(sp);
        this.host.count(vcpu.id, 'mmu_flooded');
        continue;
      }
      const w = writtenSptes(gpa, fourByte, level, roleQuadrant(sp.role));
      if (w < 0) continue; // another quadrant's alias
      const first = w >>> 2;
      const n = w & 3;
      for (let k = 0; k < n; k++) {
        const loc = sp.base + first + k;
        this.zapSpte(sp, loc);
        if ((gLo !== 0 || gHi !== 0) && level !== 1) this.host.count(vcpu.id, 'mmu_pde_zapped');
        if (decision === 'update-spte' && level === 1 && bytes >= (fourByte ? 4 : 8) && (sp.role & ROLE_BASE_MASK) === (baseRole & ROLE_BASE_MASK)) {
          this.updatePte(vcpu, sp, loc, gLo, gHi);
        }
      }
    }
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
      if (sig >= 0 && st.signature >= 0 && ((sig ^ st.signature) & SIG_PSE) !== 0) this.zapAllFourByte();
      this.freeRoots(st, true);
      this.loadRoots(st);
    } else if (cr === 3 || this.pdptesChanged(st)) {
      this.newPgd(st);
    }
    this.finish();
  }

  invlpg(vcpu: Vcpu, va: number, exited: boolean): void {
    void va;
    // kvm_mmu_invlpg: with every shadow page synced (no unsync pages) there is nothing to re-sync; the
    // architectural TLB invalidation was done by the vCPU. Counted when it exited.
    if (exited) this.host.count(vcpu.id, 'invlpg');
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
    if (this.availablePages < need) {
      throw new ShadowMmuError(
        'E_MMU_NOSPC',
        `the shadow MMU needs ${need} free pages for ${what}, but only ${this.availablePages} of n_max_mmu_pages=${this.maxPages} are free and ` +
          `the other ${this.usedPages} pages are roots in use (raise maxMmuPages)`,
      );
    }
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
    if (!sp.direct) {
      // account_shadowed: the gfn becomes a write-protected guest page table.
      this.indirectShadowPages++;
      this.writeTrack.set(gfn, (this.writeTrack.get(gfn) ?? 0) + 1);
      this.writeProtectGfn(gfn);
    }
    return sp;
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
    if ((lo & SPTE_P) === 0) return;
    const hi = pool.hi(loc);
    if (sp.level === 1) {
      this.rmapRemove(Math.floor(sptePa(lo, hi) / PAGE_SIZE), loc);
    } else {
      const child = this.pageAt(sptePa(lo, hi));
      if (!child.parentPtes.remove(loc)) throw new ShadowMmuError('E_MMU_STATE', `parent_ptes of the page for gfn ${hexa(child.gfn)} lack spte ${loc}`);
    }
    pool.set(loc, 0, 0);
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
      this.pool.set(loc, 0, 0);
      sp.parentPtes.remove(loc);
      this.pendingFlush = true;
    }
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
      st.needReload = false;
      // kvm_mmu_free_obsolete_roots, then kvm_mmu_load.
      for (let i = st.prevRoots.length - 1; i >= 0; i--) {
        if (st.prevRoots[i]!.sp.zapped) this.releaseRoot(st.prevRoots.splice(i, 1)[0]!.sp);
      }
      if (st.currentRoots().some((sp) => sp.zapped)) {
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
    for (const sp of this.hash[this.hashOf(gfn)]!) if (sp.gfn === gfn && !sp.direct && !sp.zapped) out.push(sp);
    return out;
  }

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
    return rootRole({ level: 0, fourByteGpte: g.mode === MODE_LEGACY32, quadrant: 0, eferNx: g.eferNxe, cr0Wp: g.cr0Wp, smep: g.cr4Smep, smap: g.cr4Smap });
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
      this.reservePages(1, 'a root');
      const level = g.mode === MODE_LONG4 ? 4 : 5;
      const sp = this.getPage(Math.floor(g.cr3 / PAGE_SIZE), base | level);
      sp.rootCount++;
      st.root = sp;
      ctx.mode = g.mode;
      ctx.cr3 = sp.hpa;
      return;
    }
    this.reservePages(4, 'the PAE roots');
    ctx.mode = MODE_PAE;
    st.pdpteLo.set(g.pdpteLo);
    st.pdpteHi.set(g.pdpteHi);
    for (let i = 0; i < 4; i++) {
      let gfn: number;
      let role: number;
      if (g.mode === MODE_LEGACY32) {
        // Four roots for the one guest PD, quadrant i = VA bits 31:30.
        gfn = Math.floor(g.cr3 / PAGE_SIZE);
        role = base | 2 | (i << 5);
      } else {
        const lo = g.pdpteLo[i]!;
        if ((lo & PT_PRESENT) === 0) {
          st.paeRoots[i] = null;
          continue;
        }
        gfn = (lo >>> 12) + (g.pdpteHi[i]! & 0xfffff) * 0x100000;
        role = base | 2;
      }
      const sp = this.getPage(gfn, role);
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
    this.freeRoots(st, false);
    this.loadRoots(st);
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
      if ((lo & SPTE_P) === 0) return;
      sp = this.pageAt(sptePa(lo, this.pool.hi(loc)));
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
      if (level === 1) return this.setLeaf(st, sp, loc, gfn, slot, pteAccess, write, g.mode === MODE_LONG4 || g.mode === MODE_LONG5 ? r.entryHi[guestLeaf]! & SPTE_HI_PKEY_MASK : 0);
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
      if ((lo & SPTE_P) !== 0) {
        const child = this.pageAt(sptePa(lo, pool.hi(loc)));
        if (child.gfn === childGfn && child.role === role) {
          sp = child;
          continue;
        }
        // validate_direct_spte: a direct page built for other rights (the guest pte became dirty, or an
        // alias with other rights): unlink it and link the right one.
        this.zapSpte(sp, loc);
      }
      const child = this.getPage(childGfn, role);
      this.link(loc, child);
      sp = child;
    }
  }

  /** KVM `mmu_set_spte` / `make_spte`: the leaf spte, never more than guest rights AND the host mapping. */
  private setLeaf(st: VcpuShadowState, sp: ShadowPage, loc: number, gfn: number, slot: Memslot, pteAccess: number, write: boolean, pkey: number): PageFaultResolution {
    const vcpuId = st.vcpu.id;
    let wrprot = false;
    let lo = ((gfn % 0x100000) * PAGE_SIZE + (SPTE_P | SPTE_A)) >>> 0;
    let hi = Math.floor(gfn / 0x100000) | pkey;
    if (!slot.readonly) lo |= SPTE_HOST_WRITABLE;
    if ((pteAccess & ACC_WRITE_MASK) !== 0 && !slot.readonly) {
      // mmu_try_to_unsync_pages: a shadowed guest page table is never writable (no unsync pages here).
      if (this.writeTrack.has(gfn)) wrprot = true;
      else lo |= SPTE_W | SPTE_MMU_WRITABLE | SPTE_D;
    }
    if ((pteAccess & ACC_USER_MASK) !== 0) lo |= SPTE_U;
    if ((pteAccess & ACC_EXEC_MASK) === 0) hi |= SPTE_HI_NX;
    lo >>>= 0;
    hi >>>= 0;
    this.installLeaf(sp, loc, lo, hi);
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
    if ((oldLo & SPTE_P) !== 0) {
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
   */
  private updatePte(vcpu: Vcpu, sp: ShadowPage, loc: number, gLo: number, gHi: number): void {
    const g = vcpu.ctx;
    if ((gLo & (PT_PRESENT | PT_ACCESSED)) !== (PT_PRESENT | PT_ACCESSED)) return;
    const fourByte = (sp.role & ROLE_4BYTE_GPTE) !== 0;
    const nxe = g.eferNxe && !fourByte;
    if (!fourByte && gpteReserved(gHi, g.maxPhyAddr, nxe, g.mode === MODE_PAE)) return;
    const gfn = fourByte ? gLo >>> 12 : (gLo >>> 12) + (gHi & 0xfffff) * 0x100000;
    const slot = this.memory.slotForGfn(gfn);
    if (slot === null) return;
    let access = roleAccess(sp.role) & gpteAccess(gLo, fourByte ? 0 : gHi, nxe);
    if ((gLo & 0x40) === 0) access &= ~ACC_WRITE_MASK; // protect_clean_gpte
    let lo = ((gfn % 0x100000) * PAGE_SIZE + (SPTE_P | SPTE_A)) >>> 0;
    let hi = Math.floor(gfn / 0x100000) | (g.mode === MODE_LONG4 || g.mode === MODE_LONG5 ? gHi & SPTE_HI_PKEY_MASK : 0);
    if (!slot.readonly) lo |= SPTE_HOST_WRITABLE;
    if ((access & ACC_WRITE_MASK) !== 0 && !slot.readonly && !this.writeTrack.has(gfn)) lo |= SPTE_W | SPTE_MMU_WRITABLE | SPTE_D;
    if ((access & ACC_USER_MASK) !== 0) lo |= SPTE_U;
    if ((access & ACC_EXEC_MASK) === 0) hi |= SPTE_HI_NX;
    this.installLeaf(sp, loc, lo >>> 0, hi >>> 0);
    this.host.count(vcpu.id, 'mmu_pte_updated');
  }
}

const SIG_PSE = 1;
const SIG_NOPAGING = -2;

/** The index of `va` in a table of `level` (9 bits per level above the 4 KiB offset). */
export function levelIndex(va: number, level: number): number {
  if (level === 1) return (va >>> 12) & 511;
  if (level === 2) return (va >>> 21) & 511;
  return Math.floor(va / 2 ** (12 + 9 * (level - 1))) & 511;
}

/** A guest entry's rights in ACC_* form (KVM `gpte_access`): W, U, and X unless XD with NXE. */
export function gpteAccess(lo: number, hi: number, nxe: boolean): number {
  return (lo & PT_WRITABLE ? ACC_WRITE_MASK : 0) | (lo & PT_USER ? ACC_USER_MASK : 0) | (nxe && (hi & PT_HI_XD) !== 0 ? 0 : ACC_EXEC_MASK);
}

/** Reserved bits of a 64-bit guest PTE's high half (SDM Vol. 3A Tables 4-11, 4-19; kvm-mmu.md §D.2). */
function gpteReserved(hi: number, maxPhyAddr: number, nxe: boolean, pae: boolean): boolean {
  const m = maxPhyAddr - 32;
  const addrRsvd = pae ? ((0x7fffffff >>> m) << m) : ((0xfffff >>> m) << m);
  return (hi & addrRsvd) !== 0 || (!nxe && (hi & PT_HI_XD) !== 0);
}


function hexa(n: number): string {
  return n < 0 ? `-0x${(-n).toString(16)}` : `0x${n.toString(16)}`;
}
