import {
  hexU64,
  PAGE_SIZE,
  WalkResult,
  type DirtyLog,
  type GuestMemory,
  type MmuEventKind,
  type MmuHost,
  type PhysicalMemory,
  type StatCell,
  type Vcpu,
} from '@vmexit/core';
import * as coreMmu from '@vmexit/core/mmu';
import { createPageCache, pageOfLoc, roleQuadrant, SpteHalves, sptePa, SptePoolMemory, type PageCache, type SptePool, MmuLock, Rmaps } from '@vmexit/core/mmu';
import { ShadowPagingContext } from './context.js';
import { ShadowMmuError } from './errors.js';
import type { ShadowPage } from './page.js';
import { ScratchEvents } from './scratch-events.js';

// Module-local copies of the imported constants and helpers this module's hot queries use. V8 folds a module's own
// constants into its compiled code, but reads an imported binding through its module cell, with a check, on every use
// (core DESIGN.md, "Speed").
const { pageBucket, POOL_BASE, ROLE_4BYTE_GPTE, ROLE_EFER_NX, SPTE_HI_ADDR_MASK, SPTE_P } = coreMmu;

/** The most roots a vCPU's guest state needs: four PAE (or quadrant) roots. */
export const MAX_ROOTS = 4;
/** The high half of POOL_BASE (a non-leaf spte's address bits 51:32 are at least this). */
// An int32: a division leaves a double (a heap number), which made `childPage` float arithmetic.
const POOL_BASE_HI = (POOL_BASE / 4294967296) | 0;

/**
 * The counters an exit adds to on the MMU's hot paths (a fault, an emulated pte write), by index: a vCPU keeps
 * their cells (`VcpuShadowState.bump`) instead of looking each up by name per exit.
 */
export const HOT_COUNTERS = ['pf_emulate', 'pf_fixed', 'mmu_pte_write', 'mmu_pte_updated', 'mmu_pde_zapped', 'pf_taken'] as const;
/** Indexes into HOT_COUNTERS (literals at the call sites, with the name in a comment: see `bump`). */
export type HotCounter = 0 | 1 | 2 | 3 | 4 | 5;
// `bump` keeps one field per counter (cell0..cell5): a seventh counter needs a field, and this line makes the
// compiler say so.
const _HOT_COUNTER_FIELDS: 6 = HOT_COUNTERS.length;

/** The MMU event kinds by index (decisions.ts passes the index with the kind: see `VcpuShadowState.decidedByDefault`). */
export type MmuEventIndex = 0 | 1 | 2 | 3 | 4;

/** Per-vCPU state: the roots and the shadow paging context the hardware walks (KVM `struct kvm_mmu` of a vCPU). */
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
  /** The MMU events this vCPU refills while nothing outside the pipeline can keep one (decisions.ts). */
  readonly events = new ScratchEvents();

  /**
   * The cells of HOT_COUNTERS for this vCPU, each taken at its first add (null until then): one field per counter,
   * so that `bump` with a literal index compiles to one field's load (an array would add its own checks).
   */
  private cell0: StatCell | null = null;
  private cell1: StatCell | null = null;
  private cell2: StatCell | null = null;
  private cell3: StatCell | null = null;
  private cell4: StatCell | null = null;
  private cell5: StatCell | null = null;

  constructor(readonly vcpu: Vcpu) {
    this.ctx = new ShadowPagingContext(vcpu.ctx);
  }

  /**
   * Per MMU event kind (by index: 0 pte-write, 1 flood, 2 prefetch, 3 unsync, 4 tracked-write): 1 when the host
   * decides every such event by default (`MmuHost.decidesByDefault`, asked once), 0 when it does not, -1 not
   * asked yet.
   */
  private readonly byDefault = new Int8Array(5).fill(-1);
  /**
   * Per kind, the cell of its `mmu_events.<kind>` counter once the kind is known to be decided by default for good
   * and its first event was counted (null until then, and for good when the kind is not): the hot path of
   * `decidedByDefault`, one field per kind.
   */
  private default0: StatCell | null = null;
  private default1: StatCell | null = null;
  private default2: StatCell | null = null;
  private default3: StatCell | null = null;
  private default4: StatCell | null = null;

  /**
   * `MmuHost.decideByDefault` for this vCPU: true (and the event counted) when nothing could see an event of
   * `kind`, whose index is `i`. Asks the host once per kind when it can say so for good (`decidesByDefault`
   * with `counter`), and then counts the events itself: no call into the host per event.
   */
  decidedByDefault(host: MmuHost, i: MmuEventIndex, kind: MmuEventKind): boolean {
    // The hot case in a few bytes (V8 inlines it into the exit paths, where `i` is a literal and the choice of field
    // folds away); the rest out of line. `=== true`: a boolean the caller's compiled code knows as one, not whatever
    // an out-of-line call may return (which V8 would test with the full ToBoolean sequence at every use).
    const c = i === 0 ? this.default0 : i === 1 ? this.default1 : i === 2 ? this.default2 : i === 3 ? this.default3 : this.default4;
    if (c !== null) {
      c.n++;
      return true;
    }
    return this.decidedByDefaultSlow(host, i, kind) === true;
  }

  /** `decidedByDefault` before the kind's cell was taken, or for a kind not decided by default. */
  private decidedByDefaultSlow(host: MmuHost, i: MmuEventIndex, kind: MmuEventKind): boolean {
    let d = this.byDefault[i]!;
    if (d === -1) {
      if (host.decidesByDefault === undefined || host.counter === undefined)
        return host.decideByDefault !== undefined && host.decideByDefault(this.vcpu.id, kind);
      d = this.byDefault[i] = host.decidesByDefault(this.vcpu.id, kind) ? 1 : 0;
    }
    if (d === 0) return false;
    // The first event of `kind` decided by default: its counter's cell, taken now.
    const c = host.counter!(this.vcpu.id, `mmu_events.${kind}`);
    c.n++;
    if (i === 0) this.default0 = c;
    else if (i === 1) this.default1 = c;
    else if (i === 2) this.default2 = c;
    else if (i === 3) this.default3 = c;
    else this.default4 = c;
    return true;
  }

  /**
   * Whether every event of `kind` (index `i`) on this vCPU is decided by default for good (`MmuHost.decidesByDefault`,
   * asked once), without counting an event: what the MMU may use to skip state that only such events read.
   */
  alwaysDefault(host: MmuHost, i: MmuEventIndex, kind: MmuEventKind): boolean {
    if (this.byDefault[i] === -1 && host.decidesByDefault !== undefined && host.counter !== undefined)
      this.byDefault[i] = host.decidesByDefault(this.vcpu.id, kind) ? 1 : 0;
    return this.byDefault[i] === 1;
  }

  /**
   * Adds 1 to this vCPU's counter HOT_COUNTERS[i] (`MmuHost.count`): through its cell (`MmuHost.counter`)
   * after the first add, or by name when the host keeps no cells.
   */
  bump(host: MmuHost, i: HotCounter): void {
    const c = i === 0 ? this.cell0 : i === 1 ? this.cell1 : i === 2 ? this.cell2 : i === 3 ? this.cell3 : i === 4 ? this.cell4 : this.cell5;
    if (c !== null) c.n++;
    else this.bumpFirst(host, i);
  }

  /** `bump` before the counter's cell was taken. */
  private bumpFirst(host: MmuHost, i: HotCounter): void {
    const name = HOT_COUNTERS[i];
    if (host.counter === undefined) {
      host.count(this.vcpu.id, name);
      return;
    }
    const c = host.counter(this.vcpu.id, name);
    c.n++;
    if (i === 0) this.cell0 = c;
    else if (i === 1) this.cell1 = c;
    else if (i === 2) this.cell2 = c;
    else if (i === 3) this.cell3 = c;
    else if (i === 4) this.cell4 = c;
    else this.cell5 = c;
  }

  /** Every root slot's page (current roots only). */
  currentRoots(): ShadowPage[] {
    const out: ShadowPage[] = [];
    if (this.root !== null) out.push(this.root);
    for (const p of this.paeRoots) if (p !== null) out.push(p);
    return out;
  }
}

/**
 * The per-call out-values of the MMU's mechanisms, in one declared place: each is written by the callee
 * named and read by its caller right after, never across an exit. Values a function returns through them
 * are passed to it explicitly (`out`), so no function reads a scratch value that another one left behind.
 */
export class ShadowScratch {
  /** The leaf spte `makeLeafSpte` / `leafFromGpte` built. */
  readonly leaf = new SpteHalves();
  /** The gpte `readGpte` read. */
  readonly gpte = new SpteHalves();
  /** The linear address of the fault being handled (the prefetch event names it). */
  faultVa = 0;
  /** The guest walk of the fault being handled. */
  readonly walk = new WalkResult();
  /** The roots a vCPU's guest state needs, as `rootTargets` lists them (gfn, role). */
  readonly rootGfn = new Float64Array(MAX_ROOTS);
  readonly rootRole = new Int32Array(MAX_ROOTS);
  /** trackWrite's snapshot of the written gfn's pages, while `pagesBusy` is false (a nested call takes a fresh array). */
  readonly pages: (ShadowPage | null)[] = [];
  /**
   * A trackWrite call uses `pages`. A flag rather than taking the array out (null) and putting it back: storing the
   * array is a write of a heap object, which calls V8's write barrier while a major GC marks.
   */
  pagesBusy = false;
}

/**
 * The shadow MMU's data (KVM keeps it in `struct kvm_arch` and `struct kvm_mmu_page`): the page cache core
 * defines, with the shadow MMU's own bookkeeping next to it. The mechanisms are functions over this state, one
 * file per mechanism (page-cache.ts, roots.ts, fault.ts, pte-write.ts, unsync.ts); the queries below are the
 * few that every one of them (and the audit) asks.
 */
export abstract class ShadowMmuState implements PageCache<ShadowPage> {
  host!: MmuHost;
  memory!: GuestMemory;
  pool!: SptePool;
  /** What the hardware walks: the pool above POOL_BASE, guest RAM below. */
  shadowMemory!: SptePoolMemory;
  rmaps!: Rmaps;
  maxPages = 0;
  usedPages = 0;
  pages: (ShadowPage | null)[] = [];
  readonly active = new Set<ShadowPage>();
  readonly hash: ShadowPage[][] = [];
  readonly freeFrames: number[] = [];
  nextFrame = 0;
  /** Zapped roots that some vCPU still uses (role.invalid), freed when their root count drops to 0. */
  readonly invalidRoots = new Set<ShadowPage>();
  /** Zapped pages waiting for the TLB flush before their frames are freed (KVM's `invalid_list`). */
  readonly invalidList: ShadowPage[] = [];
  /** Indirect (gpte-backed) pages per gfn: a gfn with a count is a write-protected guest page table. */
  readonly writeTrack = new Map<number, number>();
  /**
   * Indirect pages above level 1 per gfn: KVM's write-track count of the gfn (`account_shadowed` adds a non-leaf
   * page with `__kvm_write_track_add_gfn`; `page_fault_handle_page_track` reads it), kept so that the fault path
   * asks it in one lookup instead of scanning the gfn's hash bucket.
   */
  readonly upperTrack = new Map<number, number>();
  indirectShadowPages = 0;
  readonly states: VcpuShadowState[] = [];
  /** The level-1 pages that are out of sync, and how many there are per gfn. */
  readonly unsyncPages = new Set<ShadowPage>();
  readonly unsyncCount = new Map<number, number>();
  /** An spte lost rights or disappeared: flush every TLB before the zapped pages are freed. */
  pendingFlush = false;
  /** The vCPU whose operation runs now (counters of MMU-wide work go to it). */
  initiator = 0;
  /**
   * The non-present spte encodings (KVM `kvm_mmu_set_nonpresent_ptes(trap, notrap)`): `trap` faults with
   * P=1|RSVD (so it exits even when P=0 faults bypass the hypervisor), `notrap` with P=0. Both 0 by default.
   */
  trapLo = 0;
  trapHi = 0;
  notrapLo = 0;
  notrapHi = 0;
  readonly scratch = new ShadowScratch();
  /** KVM `mmu_lock` (a spinlock for the shadow MMU): every operation but the fast page fault runs under it. */
  readonly mmuLock = new MmuLock();
  /** The VM's dirty log, when attached (`attachDirtyLog`): writable leaves in a logged slot mark their page dirty. */
  dirtyLog: DirtyLog | null = null;
  /**
   * vCPUs inside `walk_shadow_page_lockless_begin/end` (KVM sets vcpu->mode = READING_SHADOW_PAGE_TABLES with
   * interrupts off, so the remote flush that precedes freeing a zapped page waits for them): a zapped page is
   * not freed while this is nonzero (the race scenarios' zapper waits; a sequential run never sees it nonzero).
   */
  locklessWalkers = 0;
  /** Guest memory whose writes mark pages dirty: what the guest walk writes A/D bits through while a slot logs. */
  dirtyMarkingMemory!: PhysicalMemory;

  /**
   * Whether no flood event will ever be seen (each vCPU's decided by default for good, fixed when the VM was
   * composed): then the pages' write-flooding counts are read by nothing, and the fault path does not reset
   * them (KVM `clear_sp_write_flooding_count`). -1: not known yet (asked at the first write-tracked
   * emulation; asked again after a vCPU is attached).
   */
  protected floodCountsRead = -1;

  /** See `floodCountsRead`. */
  floodCountsUnread(): boolean {
    const r = this.floodCountsRead;
    return r < 0 ? this.askFloodCountsRead() : r === 0;
  }

  private askFloodCountsRead(): boolean {
    let read = false;
    for (const st of this.states) if (st !== undefined && !st.alwaysDefault(this.host, 1, 'flood')) read = true;
    this.floodCountsRead = read ? 1 : 0;
    return !read;
  }

  /**
   * The page for (gfn, role), created on a miss: page-cache.ts `getPage`, called by every mechanism through
   * this method, so that a subclass (a test, a tool) may observe each lookup.
   */
  abstract getPage(gfn: number, role: number): ShadowPage;

  /** Sets up the page cache and the rmaps for `host`'s guest memory with a budget of `maxPages`. */
  protected initState(host: MmuHost, memory: GuestMemory, maxPages: number): void {
    this.host = host;
    this.memory = memory;
    const c = createPageCache<ShadowPage>(maxPages);
    this.pool = c.pool;
    this.maxPages = maxPages;
    this.pages = c.pages;
    this.hash.push(...c.hash);
    this.nextFrame = c.nextFrame;
    this.shadowMemory = new SptePoolMemory(this.pool, memory);
    this.rmaps = new Rmaps(memory);
    // Replaced when a dirty log is attached (only read while a slot logs): set here so that every MMU has the one shape.
    this.dirtyMarkingMemory = memory;
  }

  /** Free pages (KVM `kvm_mmu_available_pages`). */
  get availablePages(): number {
    return this.maxPages - this.usedPages;
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

  /**
   * Whether `gfn` is a write-protected guest page table: shadowed by an indirect page that is not unsync
   * (KVM: write-tracked by an upper-level page, or rmap-write-protected for a synced level-1 page).
   */
  isWriteProtected(gfn: number): boolean {
    if (gfn !== this.trackMemoGfn || this.trackMemoVersion !== this.trackVersion) this.memoTrack(gfn);
    return this.trackMemoWp;
  }

  /** Whether some indirect page of `gfn` is above level 1 (`upperTrack` has it), through the same memo as `isWriteProtected`. */
  isUpperTracked(gfn: number): boolean {
    if (gfn !== this.trackMemoGfn || this.trackMemoVersion !== this.trackVersion) this.memoTrack(gfn);
    const u = this.trackMemoUpper;
    return u === 0 ? false : u === 1 ? true : this.memoUpper(gfn) === true; // a boolean compiled code knows as one (decidedByDefault)
  }

  /**
   * Bumped by every change to `writeTrack`, `upperTrack` or `unsyncCount` (page-cache.ts, unsync.ts): the one-gfn
   * memo of `isWriteProtected` and `isUpperTracked` holds while it is unchanged. An exit asks both of the gfn it
   * writes up to four times (the fault handler, `mmu_set_spte`, `mmu_try_to_unsync_pages`), and a run of emulated
   * writes asks of one gfn again and again: one Map lookup each instead of one per question.
   */
  trackVersion = 0;
  private trackMemoGfn = -1;
  private trackMemoVersion = -1;
  private trackMemoWp = false;
  /** `upperTrack.has(trackMemoGfn)`: 1 or 0, -1 not looked up yet. */
  private trackMemoUpper = -1;

  /** `isWriteProtected` from the maps themselves, past the memo (the auditor: it checks the maps as they are). */
  writeProtectedInMaps(gfn: number): boolean {
    return this.protectedBy(this.writeTrack.get(gfn), gfn);
  }

  /** Whether `gfn`, shadowed by `t` indirect pages (`writeTrack`), is write-protected: not all of them unsync. */
  private protectedBy(t: number | undefined, gfn: number): boolean {
    return t !== undefined && (this.unsyncCount.size === 0 || t > (this.unsyncCount.get(gfn) ?? 0));
  }

  /** The auditor's check of the memo: -1 when it is stale or says what the maps say, else its gfn. */
  trackMemoDisagreement(): number {
    if (this.trackMemoVersion !== this.trackVersion || this.trackMemoGfn < 0) return -1;
    const gfn = this.trackMemoGfn;
    if (this.trackMemoWp !== this.writeProtectedInMaps(gfn)) return gfn;
    if (this.trackMemoUpper !== -1 && (this.trackMemoUpper === 1) !== this.upperTrack.has(gfn)) return gfn;
    return -1;
  }

  private memoTrack(gfn: number): void {
    const t = this.writeTrack.get(gfn);
    this.trackMemoWp = this.protectedBy(t, gfn);
    this.trackMemoUpper = t === undefined ? 0 : -1; // no indirect page at all: none above level 1 either
    this.trackMemoGfn = gfn;
    this.trackMemoVersion = this.trackVersion;
  }

  private memoUpper(gfn: number): boolean {
    const u = this.upperTrack.has(gfn);
    this.trackMemoUpper = u ? 1 : 0;
    return u;
  }

  /**
   * Whether `sp` may hold notrap sptes: bypass on, a level-1 page of 8-byte gptes, in sync, for EFER.NXE = 1. A
   * notrap fault reaches the guest with the hardware's error code, computed under the NXE = 1 the shadow runs
   * with: for a guest with NXE = 0 a fetch would carry an I/D bit the native CPU sets only with SMEP (SDM Vol. 3A
   * §4.7). KVM's 2007 bypass_guest_pf let that through (vmx.c `update_transition_efer`: "NX is emulated").
   */
  notrapAllowed(sp: ShadowPage): boolean {
    return this.bypassEncoding && sp.level === 1 && !sp.direct && (sp.role & (ROLE_4BYTE_GPTE | ROLE_EFER_NX)) === ROLE_EFER_NX && !sp.unsync;
  }

  /** The page a non-leaf spte points at. */
  pageAt(pa: number): ShadowPage {
    const f = this.pool.hpaToFrame(pa);
    const sp = f < 0 ? null : this.pages[f]!;
    if (sp === null || sp === undefined) throw new ShadowMmuError('E_MMU_STATE', `a shadow pte points at ${hexU64(pa)}, which is no shadow page`);
    return sp;
  }

  /** The page a present non-leaf spte (`lo`, `hi`) points at: `pageAt(sptePa(lo, hi))` in integer arithmetic. */
  childPage(lo: number, hi: number): ShadowPage {
    const f = ((hi & SPTE_HI_ADDR_MASK) - POOL_BASE_HI) * 0x100000 + (lo >>> 12);
    const sp = f >= 0 && f < this.pages.length ? this.pages[f] : null;
    return sp === null || sp === undefined ? this.pageAt(sptePa(lo, hi)) : sp; // pageAt names the bad spte
  }

  /** The page that holds spte location `loc`. */
  pageOfLoc(loc: number): ShadowPage {
    return pageOfLoc(this, loc);
  }

  /** The guest-physical address of the gpte behind spte `i` of indirect level-1 page `sp` (KVM `FNAME(get_level1_sp_gpa)`). */
  gpteAddress(sp: ShadowPage, i: number): number {
    if ((sp.role & ROLE_4BYTE_GPTE) !== 0) return sp.gfn * PAGE_SIZE + ((roleQuadrant(sp.role) << 9) + i) * 4;
    return sp.gfn * PAGE_SIZE + i * 8;
  }

  /** The valid indirect pages of `gfn` (KVM `for_each_gfn_valid_sp_with_gptes`), as a snapshot. */
  indirectPagesOf(gfn: number): ShadowPage[] {
    const out: ShadowPage[] = [];
    collectIndirectPages(this, gfn, out);
    return out;
  }

  /** The state of an attached vCPU. */
  stateOf(vcpu: Vcpu): VcpuShadowState {
    const st = this.states[vcpu.id];
    return st !== undefined ? st : notAttached(vcpu);
  }
}

/** E_MMU_STATE: `vcpu` was not attached (out of line, so that `stateOf` stays small enough to inline). */
function notAttached(vcpu: Vcpu): never {
  throw new ShadowMmuError('E_MMU_STATE', `vCPU ${vcpu.id} was not attached to the shadow MMU`);
}

/** `indirectPagesOf` into `out` from index 0 (entries past the returned count are left as they are). */
export function collectIndirectPages(s: ShadowMmuState, gfn: number, out: (ShadowPage | null)[]): number {
  const bucket = pageBucket(s, gfn);
  let n = 0;
  for (let i = 0; i < bucket.length; i++) {
    const sp = bucket[i]!;
    if (sp.gfn === gfn && !sp.direct && !sp.zapped) out[n++] = sp;
  }
  return n;
}
