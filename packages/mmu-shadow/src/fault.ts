import * as core from '@vmexit/core';
import { hexU64, type Memslot, type ExitResolution, type Vcpu, WalkResult } from '@vmexit/core';
import * as coreMmu from '@vmexit/core/mmu';
import * as decisions from './decisions.js';
import * as context from './context.js';
import { ShadowMmuError } from './errors.js';
import * as gpte from './gpte.js';
import type { ShadowPage } from './page.js';
import * as pageCache from './page-cache.js';
import * as roots from './roots.js';
import { type ShadowMmuState, type VcpuShadowState } from './state.js';
import * as unsync from './unsync.js';

// Module-local copies of the imported constants and helpers the fault path uses. V8 folds a module's own constants
// into its compiled code, but reads an imported binding through its module cell, with a check, on every use (core
// DESIGN.md, "Speed").
const { ACC_FETCH, ACC_USER, ACC_WRITE, MODE_LEGACY32, MODE_LONG4, MODE_PAE, pageNumber, PFERR_PRESENT, PFERR_RSVD, PT_DIRTY, PT_WRITABLE } = core;
const { WALK_OK, WALK_PAGE_FAULT, WALK_SIDE_EFFECTS, walk, EMULATE, PF_VECTOR, RESUME } = core;
const { ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK, childRole, GFNS_PER_ENTRY, makeLeafSpte, roleAccess, spanStart, sptePa } = coreMmu;
const { decidePrefetchEvent, decideTrackedWriteEvent } = decisions;
const { HOST_GFN_LIMIT } = context;
const { gpteAccess, leafFromGpte, leafPkey, levelIndex, pkeysApply, readGpte } = gpte;
const { hasUpperLevelPage, installLeaf, link, prepareZap, reservePages, zapSpte } = pageCache;
const { finish, processReloads, requireTopPage, topPage } = roots;
const { syncPage, tryUnsync } = unsync;

/**
 * The shadow page fault (KVM arch/x86/kvm/mmu/paging_tmpl.h `FNAME(page_fault)`, `FNAME(fetch)`,
 * `FNAME(pte_prefetch)`; mmu.c `mmu_set_spte`): the guest walk, then the shadow tables built down to the
 * leaf, which `makeLeafSpte` (core) builds.
 */

/** PTE_PREFETCH_NUM: the aligned group of sptes `FNAME(pte_prefetch)` fills around a fault. */
export const PTE_PREFETCH_NUM = 8;

/** KVM `FNAME(page_fault)`: what the shadow MMU does with a #PF that exited. */
export function pageFault(s: ShadowMmuState, vcpu: Vcpu, address: number, errorCode: number): ExitResolution {
  const st = s.stateOf(vcpu);
  s.initiator = vcpu.id;
  st.bump(s.host, 5 /* pf_taken */); // kvm_mmu_do_page_fault counts every fault it handles
  s.scratch.faultVa = address;
  processReloads(s);
  // The 2007 flood detector (KVM 86a5ba025d0a, FNAME(page_fault) "reset fork detector"): any fault that is not
  // an emulated page-table write resets the vCPU's count; the two page-table-write paths below restore it.
  const ptWriteCount = st.lastPtWriteCount;
  st.lastPtWriteCount = 0;
  const r = s.scratch.walk;
  // pf_guest is counted where the fault is injected (the VM's hooks, as KVM's kvm_inject_page_fault).
  if (!walkGuest(s, vcpu, address, errorCode, r)) return { kind: 'inject', vector: PF_VECTOR, errorCode: r.errorCode };
  // Nothing ran since the walk: FNAME(gpte_changed) would compare each gpte with itself, and is left out.
  return faultWalked(s, st, address, errorCode, r, ptWriteCount, false);
}

/**
 * RET_PF_RETRY from FNAME(fetch): a gpte the guest walk used changed before `mmu_lock` was taken (FNAME(gpte_changed));
 * nothing is mapped, and the guest re-executes the access (the vCPU resumes), which faults again. `kvm_mmu_do_page_fault`
 * counts only pf_taken for it (mmu_internal.h; kvm_mmu_page_fault in mmu.c since 6.8): no pf_fixed, pf_spurious, pf_emulate.
 */
export const RETRY: ExitResolution = Object.freeze({ kind: 'resume' });

/**
 * A slow page fault in KVM's two parts (FNAME(page_fault)), for threads that race (race.ts): `walk` is the guest walk
 * (FNAME(walk_addr)), which KVM runs before it takes mmu_lock, reading guest memory and setting A/D with a cmpxchg;
 * `locked` is the rest under mmu_lock, where FNAME(fetch) re-reads each gpte the walk used (FNAME(gpte_changed)),
 * since another vCPU may have stored to a guest page table in between (a table not yet shadowed is not
 * write-protected, and a write-protected one is written by the emulator). One per vCPU, reused; the walk is its
 * own, as other vCPUs fault between the two parts.
 */
export class SlowPageFault {
  /** RET_PF_RETRY outcomes (a gpte changed): no KVM stat counts them, `kvm_mmu_do_page_fault` only pf_taken. */
  retries = 0;
  private readonly r = new WalkResult();
  private address = 0;
  private errorCode = 0;

  constructor(
    private readonly s: ShadowMmuState,
    private readonly vcpu: Vcpu,
    /** false: FNAME(fetch) without FNAME(gpte_changed) (a deliberately broken MMU, for the race explorer's tests). */
    private readonly checkGptes = true,
  ) {}

  /** The lockless part of the fault on `address`: pf_taken, and the guest walk; the #PF to inject, or null (`locked` goes on). */
  walk(address: number, errorCode: number): ExitResolution | null {
    const s = this.s;
    s.initiator = this.vcpu.id;
    s.stateOf(this.vcpu).bump(s.host, 5 /* pf_taken */);
    this.address = address;
    this.errorCode = errorCode;
    return walkGuest(s, this.vcpu, address, errorCode, this.r) ? null : { kind: 'inject', vector: PF_VECTOR, errorCode: this.r.errorCode };
  }

  /** The rest under mmu_lock, given the walk: RETRY when a gpte it used changed, else as `pageFault`. */
  locked(): ExitResolution {
    const s = this.s;
    const st = s.stateOf(this.vcpu);
    s.initiator = this.vcpu.id;
    s.scratch.faultVa = this.address;
    processReloads(s);
    const ptWriteCount = st.lastPtWriteCount;
    st.lastPtWriteCount = 0;
    const res = faultWalked(s, st, this.address, this.errorCode, this.r, ptWriteCount, this.checkGptes);
    if (res === RETRY) this.retries++;
    return res;
  }
}

/**
 * make_mmu_pages_available + the topup of KVM's caches: reserve the pages the fetch may need (one per shadow level
 * below the root) before it changes anything. KVM FNAME(page_fault) does it only on the way to FNAME(fetch): after
 * the guest walk (a guest #PF is injected without it) and after page_fault_handle_page_track (an emulated
 * page-table write needs no page), so a fault that builds nothing never reclaims the oldest pages.
 */
function reserveFaultPages(s: ShadowMmuState, st: VcpuShadowState): void {
  reservePages(s, st.ctx.mode === MODE_PAE ? 1 : st.ctx.mode === MODE_LONG4 ? 3 : 4, 'a page fault');
}

/**
 * FNAME(walk_addr) (paging_tmpl.h), the guest walk of FNAME(page_fault), with RSVD (from our own sptes) stripped and
 * A/D set (FNAME(update_accessed_dirty_bits)), into `r`; false for a guest #PF (`r.errorCode`).
 */
function walkGuest(s: ShadowMmuState, vcpu: Vcpu, address: number, errorCode: number, r: WalkResult): boolean {
  const access = errorCode & (ACC_WRITE | ACC_USER | ACC_FETCH);
  // While a slot logs, A/D bits the walk sets mark their page table dirty (dirty-log.ts DirtyMarkingMemory).
  const log = s.dirtyLog;
  const ws = walk(vcpu.ctx, log !== null && log.loggingSlots > 0 ? s.dirtyMarkingMemory : vcpu.memory, address, access, WALK_SIDE_EFFECTS, r);
  if (ws === WALK_PAGE_FAULT) return false;
  if (ws !== WALK_OK)
    throw new ShadowMmuError('E_MMU_STATE', `vCPU ${vcpu.id}: the guest walk of ${hexU64(address)} ended with status ${ws} (expected a #PF or success)`);
  return true;
}

/**
 * FNAME(page_fault) after the guest walk `r` of `address`, under mmu_lock. With `checkGptes`, FNAME(fetch) re-reads
 * each gpte the walk used (FNAME(gpte_changed)) and returns RETRY when one changed: needed when other threads ran
 * since the walk (`SlowPageFault`).
 */
function faultWalked(
  s: ShadowMmuState,
  st: VcpuShadowState,
  address: number,
  errorCode: number,
  r: WalkResult,
  ptWriteCount: number,
  checkGptes: boolean,
): ExitResolution {
  const vcpu = st.vcpu;
  const access = errorCode & (ACC_WRITE | ACC_USER | ACC_FETCH);
  const gpa = r.pa;
  // An emulation of this access (RET_PF_EMULATE below) completes at this gpa instead of walking again.
  vcpu.noteGuestWalk(address, access, gpa);
  const gfn = pageNumber(gpa);
  const write = (access & ACC_WRITE) !== 0;
  const user = (access & ACC_USER) !== 0;
  const slot = s.memory.slotForGfn(gfn);
  // No memslot: MMIO, an exit to user space. KVM returns RET_PF_EMULATE and counts pf_emulate
  // (`kvm_handle_noslot_fault`). It also caches an MMIO spte for a gfn with no slot, which this model does not:
  // each such access faults in full. A gfn with no slot is never write-tracked (`kvm_gfn_is_write_tracked` is
  // false without a slot), so taking it before the page-track check below changes nothing.
  if (slot === null) return mmio(s, st, gpa);

  let writeProtected = write && s.isWriteProtected(gfn);
  if (writeProtected) {
    // The tracked-write decision (decisions.ts): by default unless a policy or an observer may see it.
    const seq = st.mmuEventSeq++;
    if (!st.decidedByDefault(s.host, 4, 'tracked-write') && decideTrackedWriteEvent(s.host, st, seq, gfn, address, errorCode) === true) {
      // A policy unprotects the gfn (KVM 2007: a user-mode write is a hint that the page is no longer a
      // page table, `mmu_unshadow`): zap its shadow pages, and map the page writable below.
      for (const sp of s.indirectPagesOf(gfn)) prepareZap(s, sp);
      writeProtected = s.isWriteProtected(gfn);
    }
  }
  // page_fault_handle_page_track: a write that hit a present spte (P=1 without RSVD: a trap spte is not
  // present) of a guest page table that an upper-level page write-tracks. A level-1-only gfn goes on to
  // the fetch, where it may go unsync (mmu_try_to_unsync_pages) or stay read-only (then emulated).
  if ((errorCode & (PFERR_PRESENT | PFERR_RSVD)) === PFERR_PRESENT && writeProtected && hasUpperLevelPage(s, gfn)) {
    if (!s.floodCountsUnread()) clearFloodCounts(s, st, address);
    st.bump(s.host, 0 /* pf_emulate */);
    st.lastPtWriteCount = ptWriteCount;
    finish(s);
    return EMULATE;
  }
  // kvm_faultin_pfn, after the page-track check (FNAME(page_fault)): a write to read-only RAM is MMIO
  // (`kvm_handle_error_pfn` for KVM_PFN_ERR_RO_FAULT: RET_PF_EMULATE, and the emulated store exits to user space).
  if (write && slot.readonly) return mmio(s, st, gpa);
  // RAM the host cannot map (HOST_GFN_LIMIT): an spte naming it would have reserved address bits set and fault
  // with RSVD forever. KVM emulates such a gfn rather than build an spte for it (mmu.c
  // `kvm_handle_noslot_fault`: "Do not create an MMIO SPTE for a gfn greater than host.MAXPHYADDR" ->
  // RET_PF_EMULATE); the emulator performs the access on guest RAM through the guest's tables.
  if (gfn >= HOST_GFN_LIMIT) return emulate(s, st);
  // Rights of the leaf (walk_addr_generic): the AND over all levels; a clean gpte maps read-only unless
  // this is a write, which has just set D (`protect_clean_gpte`).
  let pteAccess = (r.writable ? ACC_WRITE_MASK : 0) | (r.user ? ACC_USER_MASK : 0) | (r.executable ? ACC_EXEC_MASK : 0);
  if (!r.dirty) pteAccess &= ~ACC_WRITE_MASK;
  const g = vcpu.ctx;
  if (write && !user && !g.cr0Wp && r.user && pkeysApply(g) && pkruWriteDisabled(g.pkru, r.entryHi[r.leafLevel]!)) {
    // CR0.WP = 0 with protection keys: PKRU.WD of the page's key stops a supervisor write to a user-mode
    // address only when CR0.WP = 1 (SDM Vol. 3A §4.6.2), but the hardware runs the shadow with WP = 1, so any
    // user spte takes a PK fault (P|W|PK) on this store again and again, and a kernel-only spte would let
    // later supervisor reads escape PKRU.AD (WRPKRU sets it without an exit). No spte gives the guest's
    // rights: emulate the store. (KVM offers no PKU to a shadow-paging guest at all: cpuid.c
    // `kvm_set_cpu_caps`, "PKU is not yet implemented for shadow paging"; this model lets CR4.PKE through
    // and keeps the guest's view exact.)
    return emulate(s, st);
  }
  // CR0.WP = 0 (Documentation/virt/kvm/x86/mmu.rst "Emulating cr0.wp", FNAME(page_fault)): the hardware runs
  // with WP = 1, so a supervisor write to a read-only page gets a kernel-only writable spte; with SMEP it also loses X.
  if (write && !user && !g.cr0Wp && (pteAccess & ACC_WRITE_MASK) === 0) {
    // A user page made kernel-only would escape SMAP, and PKRU.AD (keys apply to user-mode addresses only),
    // for later supervisor reads (KVM lets the SMAP case happen; mmu.rst leaves it out). Emulating the store
    // keeps the guest's view exact. The pages such sptes are built in (SMAP off, or no keys) are never used
    // where SMAP or keys apply: smap_andnot_wp and ROLE_PKEYS_ANDNOT_WP (roots.ts) keep them apart.
    if (r.user && (g.cr4Smap || pkeysApply(g))) return emulate(s, st);
    pteAccess = (pteAccess | ACC_WRITE_MASK) & ~ACC_USER_MASK;
    if (g.cr4Smep) pteAccess &= ~ACC_EXEC_MASK;
  }
  reserveFaultPages(s, st);
  const res = fetch(s, st, address, r, gfn, slot, pteAccess, write, checkGptes);
  if (res === EMULATE) st.lastPtWriteCount = ptWriteCount; // a write to a write-protected page table
  finish(s);
  return res;
}

/** RET_PF_EMULATE of an access that is MMIO (no memslot, or a store to read-only RAM): pf_emulate, an exit to user space. */
function mmio(s: ShadowMmuState, st: VcpuShadowState, gpa: number): ExitResolution {
  st.bump(s.host, 0 /* pf_emulate */);
  finish(s);
  return { kind: 'userspace', reason: 'mmio', gpa };
}

/** RET_PF_EMULATE without an spte: counted as KVM counts it (pf_emulate), the MMU's work for the fault finished. */
function emulate(s: ShadowMmuState, st: VcpuShadowState): ExitResolution {
  st.bump(s.host, 0 /* pf_emulate */);
  finish(s);
  return EMULATE;
}

/** PKRU.WD (bit 2k + 1) of the key in bits 62:59 of a leaf (`hi` = its high half, bits 30:27). */
function pkruWriteDisabled(pkru: number, hi: number): boolean {
  const key = (hi >>> 27) & 0xf;
  return ((pkru >>> (2 * key + 1)) & 1) !== 0;
}

/** Resets the flood counts of the pages a walk of `va` uses (KVM `clear_sp_write_flooding_count`). */
function clearFloodCounts(s: ShadowMmuState, st: VcpuShadowState, va: number): void {
  let sp = topPage(st, va);
  while (sp !== null) {
    sp.writeFloodingCount = 0;
    if (sp.level === 1) return;
    const loc = sp.base + levelIndex(va, sp.level);
    const lo = s.pool.lo(loc);
    const hi = s.pool.hi(loc);
    if (!s.isPresent(lo, hi)) return;
    sp = s.childPage(lo, hi);
  }
}

/**
 * FNAME(fetch) (paging_tmpl.h): walk the shadow tables from the root, create each missing level (an
 * indirect page for each guest table, direct pages below a guest large page), then set the leaf. With
 * `checkGptes`, each gpte of the walk is read again where FNAME(fetch) does (FNAME(gpte_changed)): RETRY when one
 * changed since the walk.
 */
function fetch(
  s: ShadowMmuState,
  st: VcpuShadowState,
  va: number,
  r: WalkResult,
  gfn: number,
  slot: Memslot,
  pteAccess: number,
  write: boolean,
  checkGptes: boolean,
): ExitResolution {
  const g = st.vcpu.ctx;
  const nxe = g.eferNxe && g.mode !== MODE_LEGACY32;
  const guestLeaf = r.leafLevel;
  // FNAME(fetch): "Verify that the top-level gpte is still there." (its page, a root, is write-protected or
  // invalid from here on). top_level is the guest's paging level, PT32E_ROOT_LEVEL mapped to PT32_ROOT_LEVEL: a PAE
  // guest's PDPTEs are registers loaded with CR3 (SDM Vol. 3A §4.4.1), not memory, so its check is on the PDE.
  if (checkGptes && gpteChanged(s, g.mode, r, r.topLevel === 3 ? 2 : r.topLevel)) return RETRY;
  let sp = requireTopPage(st, va);
  const pool = s.pool;
  for (;;) {
    sp.writeFloodingCount = 0;
    const level = sp.level;
    const idx = levelIndex(va, level);
    const loc = sp.base + idx;
    if (level === 1) return setLeaf(s, st, sp, loc, gfn, slot, pteAccess, write, leafPkey(st.vcpu, r.entryHi[guestLeaf]!));
    const direct = level - 1 < guestLeaf;
    let childGfn: number;
    let access: number;
    if (!direct) {
      childGfn = pageNumber(r.entryPa[level - 1]!);
      access = roleAccess(sp.role) & gpteAccess(r.entryLo[level]!, r.entryHi[level]!, nxe);
    } else {
      const span = GFNS_PER_ENTRY[level]!;
      childGfn = spanStart(gfn, span);
      access = pteAccess;
    }
    const role = childRole(sp.role, idx, direct, access);
    const lo = pool.lo(loc);
    const hi = pool.hi(loc);
    if (s.isPresent(lo, hi)) {
      const child = s.childPage(lo, hi);
      if (child.gfn === childGfn && child.role === role) {
        // kvm_mmu_get_child_sp -> -EEXIST: nothing to link, but the gpte is checked all the same.
        if (checkGptes && !direct && gpteChanged(s, g.mode, r, level - 1)) return RETRY;
        sp = child;
        continue;
      }
      // validate_direct_spte: a direct page built for other rights (the guest pte became dirty, or an
      // alias with other rights): unlink it and link the right one.
      zapSpte(s, sp, loc);
    }
    const child = s.getPage(childGfn, role);
    // FNAME(fetch): "We must synchronize the pagetable before linking it because the guest doesn't need
    // to flush tlb when the gpte is changed from non-present to present."
    if (child.unsync) syncPage(s, st.vcpu, child);
    // FNAME(fetch), after kvm_mmu_get_child_sp (which write-protects the table's gfn) and before link_shadow_page:
    // "Verify that the gpte in the page we've just write protected is still there." The new page stays, unlinked.
    if (checkGptes && !direct && gpteChanged(s, g.mode, r, level - 1)) return RETRY;
    link(s, loc, child);
    sp = child;
  }
}

/**
 * KVM `FNAME(gpte_changed)`: the gpte of `level` that walk `r` used is no longer in guest memory (4-byte gptes in
 * 32-bit paging). For level 1 KVM reads the aligned group of PTE_PREFETCH_NUM gptes, kept for FNAME(pte_prefetch);
 * only the faulting one is compared, and `prefetch` reads the others itself, under the same mmu_lock. A gpa with no
 * memslot reads as 0 (kvm_vcpu_read_guest_atomic's failure, "changed"): never equal to the present gpte walked.
 */
function gpteChanged(s: ShadowMmuState, mode: number, r: WalkResult, level: number): boolean {
  const pa = r.entryPa[level]!;
  const m = s.memory;
  if (m.read32(pa) !== r.entryLo[level]) return true;
  return mode !== MODE_LEGACY32 && m.read32(pa + 4) !== r.entryHi[level];
}

/** KVM `mmu_set_spte`: the leaf spte (`makeLeafSpte`), never more than guest rights AND the host mapping. */
function setLeaf(
  s: ShadowMmuState,
  st: VcpuShadowState,
  sp: ShadowPage,
  loc: number,
  gfn: number,
  slot: Memslot,
  pteAccess: number,
  write: boolean,
  pkey: number,
): ExitResolution {
  let wrprot = false;
  let writable = false;
  if ((pteAccess & ACC_WRITE_MASK) !== 0 && !slot.readonly) {
    // mmu_try_to_unsync_pages: a write-protected guest page table stays read-only unless its level-1
    // pages may go unsync.
    if (s.isWriteProtected(gfn) && !tryUnsync(s, st, gfn)) wrprot = true;
    else writable = true;
  }
  const leaf = s.scratch.leaf;
  makeLeafSpte(leaf, gfn, pteAccess, !slot.readonly, writable, pkey);
  // mmu_set_spte: RET_PF_SPURIOUS when the spte already is this one (another vCPU fixed it first), unless the
  // write must be emulated (RET_PF_EMULATE overrides it); FNAME(fetch) then returns without the prefetch.
  const spurious = !installLeaf(s, sp, loc, leaf.lo, leaf.hi) && !(wrprot && write);
  // FNAME(pte_prefetch) after the leaf of a level-1 page, when a policy asks for it: the gptes' neighbours in a
  // page of a guest table, the neighbouring gfns in a direct page (__direct_pte_prefetch).
  if (!spurious) {
    const seq = st.mmuEventSeq++;
    if (!st.decidedByDefault(s.host, 2, 'prefetch') && decidePrefetchEvent(s.host, st, seq, s.scratch.faultVa, sp.gfn, sp.direct) === true) {
      if (sp.direct) directPrefetch(s, sp, loc - sp.base, pkey);
      else prefetch(s, st.vcpu, sp, loc - sp.base);
    }
  }
  // kvm_mmu_do_page_fault's statistics: pf_fixed for RET_PF_FIXED, pf_emulate for RET_PF_EMULATE, pf_spurious
  // for RET_PF_SPURIOUS.
  if (wrprot && write) {
    st.bump(s.host, 0 /* pf_emulate */);
    return EMULATE;
  }
  if (spurious) {
    s.host.count(st.vcpu.id, 'pf_spurious');
    return RESUME;
  }
  st.bump(s.host, 1 /* pf_fixed */);
  return RESUME;
}

/**
 * KVM `__direct_pte_prefetch` (FNAME(pte_prefetch) of a direct level-1 page, the one under a guest large page):
 * after the fault at spte `idx`, each run of non-present sptes in its aligned group of 8 (the faulting spte and
 * present ones end a run) is mapped with the page's role access, gfn `sp.gfn + i` for spte i
 * (`direct_pte_prefetch_many`). A run whose gfns are not all in one memslot that can be written (the pages
 * are taken with write access, `kvm_prefetch_pages` / `gfn_to_page_many_atomic`), or, when the access includes
 * write, in a slot that logs dirty pages (`gfn_to_memslot_dirty_bitmap`), stops the prefetch. As any prefetch,
 * it makes no page unsync: a write-protected guest page table is mapped read-only (`mmu_try_to_unsync_pages`
 * with `prefetch`). `pkey` is the guest large page's protection key.
 */
function directPrefetch(s: ShadowMmuState, sp: ShadowPage, idx: number, pkey: number): void {
  const pool = s.pool;
  const first = idx & ~(PTE_PREFETCH_NUM - 1);
  let start = -1;
  for (let i = first; i <= first + PTE_PREFETCH_NUM; i++) {
    const ends = i === first + PTE_PREFETCH_NUM || i === idx || s.isPresent(pool.lo(sp.base + i), pool.hi(sp.base + i));
    if (!ends) {
      if (start < 0) start = i;
    } else if (start >= 0) {
      if (!directPrefetchRun(s, sp, start, i, pkey)) return;
      start = -1;
    }
  }
}

/** KVM `direct_pte_prefetch_many` for sptes `start` to `end` - 1 of direct page `sp`: false when the prefetch stops. */
function directPrefetchRun(s: ShadowMmuState, sp: ShadowPage, start: number, end: number, pkey: number): boolean {
  const access = roleAccess(sp.role);
  const gfn = sp.gfn + start;
  const slot = s.memory.slotForGfn(gfn);
  if (slot === null || slot.readonly || gfn + (end - start) > slot.baseGfn + slot.pages || gfn + (end - start) > HOST_GFN_LIMIT) return false;
  const log = s.dirtyLog;
  if ((access & ACC_WRITE_MASK) !== 0 && log !== null && log.isLogging(slot)) return false;
  const leaf = s.scratch.leaf;
  for (let i = start; i < end; i++) {
    const writable = (access & ACC_WRITE_MASK) !== 0 && !s.isWriteProtected(gfn + i - start);
    makeLeafSpte(leaf, gfn + i - start, access, true, writable, pkey);
    installLeaf(s, sp, sp.base + i, leaf.lo, leaf.hi);
  }
  return true;
}

/**
 * FNAME(pte_prefetch) (PTE_PREFETCH_NUM = 8): after the fault at spte `idx` of level-1 page `sp`, map the
 * other non-present sptes of its aligned group of 8 whose gptes are present and accessed; stop at the
 * first gpte that cannot be mapped, which includes a gpte with write access (the role's, W and D) into a
 * memslot that logs dirty pages. A prefetch never makes a page unsync.
 */
function prefetch(s: ShadowMmuState, vcpu: Vcpu, sp: ShadowPage, idx: number): void {
  const pool = s.pool;
  const { gpte, leaf } = s.scratch;
  const log = s.dirtyLog;
  // KVM FNAME(prefetch_gpte) -> kvm_mmu_prefetch_sptes (formerly pte_prefetch_gfn_to_pfn, since the first
  // FNAME(pte_prefetch) of 2010): `gfn_to_memslot_dirty_bitmap(vcpu, gfn, pte_access & ACC_WRITE_MASK)` is NULL
  // for a logging slot, and the prefetch stops there. A writable prefetched spte would mark a page dirty
  // (make_spte) that the guest never wrote.
  const writeAccess = (roleAccess(sp.role) & ACC_WRITE_MASK) !== 0;
  const first = idx & ~(PTE_PREFETCH_NUM - 1);
  for (let i = first; i < first + PTE_PREFETCH_NUM; i++) {
    if (i === idx) continue;
    const loc = sp.base + i;
    if (s.isPresent(pool.lo(loc), pool.hi(loc))) continue;
    readGpte(s, sp, i, gpte);
    if (!leafFromGpte(s, vcpu, sp, gpte.lo, gpte.hi, leaf)) break;
    if (log !== null && log.loggingSlots > 0 && writeAccess && (gpte.lo & (PT_WRITABLE | PT_DIRTY)) === (PT_WRITABLE | PT_DIRTY)) {
      const slot = s.memory.slotForGfn(pageNumber(sptePa(leaf.lo, leaf.hi)));
      if (slot !== null && log.isLogging(slot)) break;
    }
    installLeaf(s, sp, loc, leaf.lo, leaf.hi);
  }
}
