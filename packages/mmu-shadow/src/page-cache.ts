import * as core from '@vmexit/core';
import { hexU64 } from '@vmexit/core';
import * as coreMmu from '@vmexit/core/mmu';
import { allocPage, describeRole, freePage, unhashPage } from '@vmexit/core/mmu';
import { ShadowMmuError } from './errors.js';
import { makeShadowPage, type ShadowPage } from './page.js';
import { type ShadowMmuState } from './state.js';

// Module-local copies of the imported constants (and leaf helpers) the fault and write paths use. V8 folds a module's
// own constants into its compiled code, but reads an imported binding through its module cell, with a check, on
// every use (core DESIGN.md, "Speed").
const { PAGE_SIZE, pageNumber, PT_PRESENT } = core;
const { pageBucket, ROLE_4BYTE_GPTE, ROLE_INVALID, SPTE_MMU_WRITABLE, SPTE_NONLEAF_BITS, SPTE_W, sptePa, spteNeedsFlush, SPTES_PER_PAGE } = coreMmu;

/**
 * The shadow page cache (KVM arch/x86/kvm/mmu/mmu.c): getting a page for (gfn, role) and accounting its
 * gfn as a write-protected guest page table, linking, installing and zapping sptes with their rmaps and
 * parent_ptes, zapping and freeing pages (prepare, then commit after the flush), and the page budget with
 * its reclaim. The (gfn, role) hash and the frames are core's `PageCache`.
 */

/** KVM_MIN_ALLOC_MMU_PAGES: the smallest default page budget. */
export const KVM_MIN_ALLOC_MMU_PAGES = 64;
/** KVM_MIN_FREE_MMU_PAGES / KVM_REFILL_PAGES: reclaim when fewer than 5 pages are free, up to 25 (arch/x86/kvm/mmu/mmu.c). */
export const KVM_MIN_FREE_MMU_PAGES = 5;
export const KVM_REFILL_PAGES = 25;
/** RMAP_RECYCLE_THRESHOLD: an rmap longer than this is zapped whole. */
export const RMAP_RECYCLE_THRESHOLD = 1000;

/** The default page budget (KVM `kvm_mmu_calculate_default_mmu_pages`): 20 per mille of guest pages, at least 64. */
export function defaultMaxMmuPages(guestPages: number): number {
  return Math.max(Math.floor((guestPages * 20) / 1000), KVM_MIN_ALLOC_MMU_PAGES);
}

/** KVM `kvm_mmu_find_shadow_page` / `kvm_mmu_get_shadow_page`: the page for (gfn, role), created on a miss. */
export function getPage(s: ShadowMmuState, gfn: number, role: number): ShadowPage {
  const bucket = pageBucket(s, gfn);
  for (const sp of bucket) if (sp.gfn === gfn && sp.role === role) return sp;
  s.host.count(s.initiator, 'mmu_cache_miss');
  const sp = allocPage(s, gfn, role, makeShadowPage);
  if (sp === null) throw new ShadowMmuError('E_MMU_STATE', `no free shadow page for gfn ${hexU64(gfn)} ${describeRole(role)}: pages were not reserved`);
  initSptes(s, sp);
  if (!sp.direct && sp.level > 1 && s.unsyncCount.has(gfn)) {
    // The guest reuses an unsync page table at an upper level: in all likelihood it stopped using it as a
    // leaf table, so zap those pages (KVM v6 `kvm_mmu_find_shadow_page` / `kvm_mmu_get_shadow_page`).
    for (const o of bucket) if (o.gfn === gfn && o.unsync) prepareZap(s, o);
  }
  if (!sp.direct) {
    // account_shadowed: the gfn becomes a write-protected guest page table.
    s.indirectShadowPages++;
    s.trackVersion++;
    s.writeTrack.set(gfn, (s.writeTrack.get(gfn) ?? 0) + 1);
    if (sp.level > 1) s.upperTrack.set(gfn, (s.upperTrack.get(gfn) ?? 0) + 1);
    writeProtectGfn(s, gfn);
  }
  return sp;
}

/**
 * A new page's sptes: all trap, except that a level-1 page of 8-byte gptes gets notrap wherever its gpte is
 * not present (KVM 2007 `FNAME(prefetch_page)`; upper levels stay trap, the audit's "no notrap spte at a
 * non-leaf level", and 4-byte-gpte pages too, because of the 2:1 quadrant mapping).
 */
function initSptes(s: ShadowMmuState, sp: ShadowPage): void {
  const pool = s.pool;
  pool.fillFrame(sp.frame, s.trapLo, s.trapHi);
  if (!s.notrapAllowed(sp)) return;
  const mem = s.memory;
  const base = sp.gfn * PAGE_SIZE;
  for (let i = 0; i < SPTES_PER_PAGE; i++) {
    if ((mem.read32(base + i * 8) & PT_PRESENT) === 0) pool.set(sp.base + i, s.notrapLo, s.notrapHi);
  }
}

/** Whether some indirect page of `gfn` is above level 1 (KVM: the gfn is page-tracked, never unsync). */
export function hasUpperLevelPage(s: ShadowMmuState, gfn: number): boolean {
  return s.isUpperTracked(gfn);
}

/** KVM `rmap_write_protect`: clear W (and MMU-writable) in every spte that maps `gfn`. */
export function writeProtectGfn(s: ShadowMmuState, gfn: number): void {
  const head = s.rmaps.head(gfn, 1, false);
  if (head === null) return;
  const pool = s.pool;
  for (const loc of head.toArray()) {
    const lo = pool.lo(loc);
    // spte_write_protect(pt_protect = true): MMU-writable goes too, even when W is already clear (an spte
    // write-protected for dirty logging), or the fast page fault would make a guest page table writable.
    if ((lo & (SPTE_W | SPTE_MMU_WRITABLE)) !== 0) {
      pool.set(loc, (lo & ~(SPTE_W | SPTE_MMU_WRITABLE)) >>> 0, pool.hi(loc));
      if ((lo & SPTE_W) !== 0) s.pendingFlush = true;
    }
  }
}

/** Sets `loc` to the trap value (KVM writes trap wherever it clears an spte). */
export function setTrap(s: ShadowMmuState, loc: number): void {
  s.pool.set(loc, s.trapLo, s.trapHi);
}

/** Links the child into a parent spte (KVM `link_shadow_page`). */
export function link(s: ShadowMmuState, loc: number, child: ShadowPage): void {
  s.pool.set(loc, (child.hpaLo | SPTE_NONLEAF_BITS) >>> 0, child.hpaHi);
  child.parentPtes.add(loc);
}

/**
 * Installs leaf spte (`lo`, `hi`) at `loc` of `sp` (the spte half of KVM `mmu_set_spte`): another frame
 * drops the old mapping first; the same frame with fewer rights asks for a flush; a new mapping enters the rmap.
 * Returns false, changing nothing, when the spte already is (`lo`, `hi`).
 */
export function installLeaf(s: ShadowMmuState, sp: ShadowPage, loc: number, lo: number, hi: number): boolean {
  const pool = s.pool;
  const oldLo = pool.lo(loc);
  const oldHi = pool.hi(loc);
  const gfn = pageNumber(sptePa(lo, hi));
  markIfWritable(s, lo, gfn);
  // mmu_set_spte: "if (*sptep == spte) ret = RET_PF_SPURIOUS", nothing to update (make_spte has marked the page dirty).
  if (oldLo === lo && oldHi === hi) return false;
  if (s.isPresent(oldLo, oldHi)) {
    if (sptePa(oldLo, oldHi) !== sptePa(lo, hi)) {
      zapSpte(s, sp, loc); // another frame: drop the old mapping (and flush) first
    } else {
      if (spteNeedsFlush(oldLo, oldHi, lo, hi)) s.pendingFlush = true;
      pool.set(loc, lo, hi);
      return true;
    }
  }
  pool.set(loc, lo, hi);
  rmapAdd(s, gfn, loc);
  return true;
}

/** KVM `make_spte`: "if ((spte & PT_WRITABLE_MASK) && kvm_slot_dirty_track_enabled(slot)) mark_page_dirty_in_slot". */
function markIfWritable(s: ShadowMmuState, lo: number, gfn: number): void {
  if ((lo & SPTE_W) !== 0 && s.dirtyLog !== null) s.dirtyLog.markPageDirty(gfn, s.initiator); // the vCPU whose exit this is
}

/** KVM `mmu_page_zap_pte`: drops one spte of `sp` (a leaf and its rmap, or the link to a child). */
export function zapSpte(s: ShadowMmuState, sp: ShadowPage, loc: number): void {
  const pool = s.pool;
  const lo = pool.lo(loc);
  const hi = pool.hi(loc);
  if (!s.isPresent(lo, hi)) {
    if (lo !== s.trapLo || hi !== s.trapHi) setTrap(s, loc); // a notrap spte: the gpte may change
    return;
  }
  zapPresentSpte(s, sp, loc, lo, hi);
}

/** `zapSpte` of a present spte (`lo`, `hi`), out of line: the emulated pte write mostly meets non-present ones. */
function zapPresentSpte(s: ShadowMmuState, sp: ShadowPage, loc: number, lo: number, hi: number): void {
  if (sp.level === 1) {
    rmapRemove(s, pageNumber(sptePa(lo, hi)), loc);
  } else {
    const child = s.childPage(lo, hi);
    if (!child.parentPtes.remove(loc)) throw new ShadowMmuError('E_MMU_STATE', `parent_ptes of the page for gfn ${hexU64(child.gfn)} lack spte ${loc}`);
  }
  setTrap(s, loc);
  s.pendingFlush = true;
}

function rmapAdd(s: ShadowMmuState, gfn: number, loc: number): void {
  const head = s.rmaps.head(gfn, 1, true)!;
  head.add(loc);
  if (head.size > RMAP_RECYCLE_THRESHOLD) {
    // rmap_recycle: zap every spte of this rmap and flush.
    for (const l of head.toArray()) zapSpte(s, s.pageOfLoc(l), l);
  }
}

function rmapRemove(s: ShadowMmuState, gfn: number, loc: number): void {
  const head = s.rmaps.head(gfn, 1, false);
  if (head === null || !head.remove(loc)) throw new ShadowMmuError('E_MMU_STATE', `no rmap for spte ${loc} (gfn ${hexU64(gfn)})`);
}

/** The unsync bookkeeping of a page that is synced or zapped (the reverse of `markUnsync` in unsync.ts). */
export function clearUnsync(s: ShadowMmuState, sp: ShadowPage): void {
  sp.unsync = false;
  s.unsyncPages.delete(sp);
  s.trackVersion++;
  const c = s.unsyncCount.get(sp.gfn)! - 1;
  if (c === 0) s.unsyncCount.delete(sp.gfn);
  else s.unsyncCount.set(sp.gfn, c);
}

/**
 * KVM `__kvm_mmu_prepare_zap_page`: unlink the children and the parents, undo the write protection, and
 * either queue the page for freeing or, when a vCPU uses it as a root, mark it invalid.
 */
export function prepareZap(s: ShadowMmuState, sp: ShadowPage): void {
  if (sp.zapped) return;
  sp.zapped = true;
  s.host.count(s.initiator, 'mmu_shadow_zapped');
  for (let i = 0; i < SPTES_PER_PAGE; i++) zapSpte(s, sp, sp.base + i);
  for (const loc of sp.parentPtes.toArray()) {
    setTrap(s, loc);
    sp.parentPtes.remove(loc);
    s.pendingFlush = true;
  }
  if (sp.unsync) clearUnsync(s, sp);
  if (!sp.direct) {
    s.indirectShadowPages--;
    s.trackVersion++;
    const c = s.writeTrack.get(sp.gfn)! - 1;
    if (c === 0) s.writeTrack.delete(sp.gfn);
    else s.writeTrack.set(sp.gfn, c);
    if (sp.level > 1) {
      const u = s.upperTrack.get(sp.gfn)! - 1;
      if (u === 0) s.upperTrack.delete(sp.gfn);
      else s.upperTrack.set(sp.gfn, u);
    }
  }
  unhashPage(s, sp);
  if (sp.rootCount === 0) {
    s.invalidList.push(sp);
  } else {
    sp.role |= ROLE_INVALID;
    s.invalidRoots.add(sp);
    for (const st of s.states) {
      if (st === undefined) continue;
      if (st.root === sp || st.paeRoots.includes(sp) || st.prevRoots.some((p) => p.sp === sp)) st.needReload = true;
    }
  }
}

/** Zaps every page of 4-byte gptes (a CR4.PSE change: their PDEs mean something else now). */
export function zapAllFourByte(s: ShadowMmuState): void {
  for (const sp of [...s.active]) if ((sp.role & ROLE_4BYTE_GPTE) !== 0) prepareZap(s, sp);
}

/** KVM `kvm_mmu_commit_zap_page`: flush the TLBs, then free the zapped pages. */
export function commitZap(s: ShadowMmuState): void {
  if (s.pendingFlush || s.invalidList.length !== 0) commitPendingZap(s); // nearly always nothing to do: a few bytes to inline
}

function commitPendingZap(s: ShadowMmuState): void {
  if (s.pendingFlush) remoteFlush(s);
  if (s.invalidList.length === 0) return;
  for (const sp of s.invalidList) freePage(s, sp);
  s.invalidList.length = 0;
}

/** KVM `kvm_flush_remote_tlbs`: every vCPU's TLB. Only when an spte lost rights or disappeared. */
export function remoteFlush(s: ShadowMmuState): void {
  s.pendingFlush = false;
  s.host.count(s.initiator, 'remote_tlb_flush');
  for (const v of s.host.vcpus) {
    v.tlb.flushAll(false);
    s.host.count(v.id, 'tlb_flush');
  }
}

/**
 * KVM `make_mmu_pages_available` plus the reservation of `need` pages: reclaim the oldest pages when
 * fewer than KVM_MIN_FREE_MMU_PAGES are free (up to KVM_REFILL_PAGES), then fail cleanly, before any
 * state is changed, when `need` pages are still not free.
 */
export function reservePages(s: ShadowMmuState, need: number, what: string): void {
  // A page prepared for zapping is no longer in use: KVM takes it off n_used_mmu_pages then
  // (`__kvm_mmu_prepare_zap_page` -> `kvm_unaccount_mmu_page`), not when the zap is committed.
  const available = s.availablePages + s.invalidList.length;
  if (available < Math.max(KVM_MIN_FREE_MMU_PAGES, need)) zapOldest(s, Math.max(KVM_REFILL_PAGES, need) - available);
  // Pages zapped earlier in this operation (released invalid roots, a CR4.PSE zap) wait for the commit.
  if (s.availablePages < need && s.invalidList.length > 0) commitZap(s);
  if (s.availablePages < need) noSpace(s, need, what);
}

/** KVM `kvm_mmu_zap_oldest_mmu_pages` (v6): zap from the oldest end, skipping roots in use. */
export function zapOldest(s: ShadowMmuState, toZap: number): void {
  let zapped = 0;
  for (const sp of s.active) {
    if (zapped >= toZap) break;
    if (sp.rootCount > 0) continue;
    prepareZap(s, sp);
    zapped++;
  }
  if (zapped > 0) {
    s.host.count(s.initiator, 'mmu_recycled', zapped);
    commitZap(s);
  }
}

/** E_MMU_NOSPC: `need` pages for `what` do not fit the budget. */
export function noSpace(s: ShadowMmuState, need: number, what: string): never {
  throw new ShadowMmuError(
    'E_MMU_NOSPC',
    `the shadow MMU needs ${need} free pages for ${what}, but only ${s.availablePages} of n_max_mmu_pages=${s.maxPages} are free and ` +
      `the other ${s.usedPages} pages are roots in use (raise maxMmuPages)`,
  );
}
