import { hexHiLo } from '@vmexit/core';
import { freePage, GFNS_PER_ENTRY, SPTE_LARGE, sptePa, unhashPage } from '@vmexit/core/mmu';
import { TdpMmuError } from './errors.js';
import { isMmioSpte, isPresentSpte, MMIO_GEN_MASK } from './mmio.js';
import type { TdpPage } from './page.js';
import { PAGES_STAT, type TdpMmuState } from './state.js';

/** Guest pages one spte of `level` spans (KVM `KVM_PAGES_PER_HPAGE`): 1, 512, 512^2, ... */
export const SPAN = GFNS_PER_ENTRY;

/** The index of `gfn`'s spte in a page of `level` (KVM `SPTE_INDEX`). */
export function spteIndex(gfn: number, level: number): number {
  return Math.floor(gfn / SPAN[level]!) % 512;
}

/** Whether the present spte `lo` at `level` is a leaf (KVM `is_last_spte`). */
export function isLeaf(lo: number, level: number): boolean {
  return level === 1 || (lo & SPTE_LARGE) !== 0;
}

/** The page a present non-leaf spte points at (KVM `spte_to_child_sp`). */
export function childOf(s: TdpMmuState, lo: number, hi: number): TdpPage {
  const frame = s.pool.hpaToFrame(sptePa(lo, hi));
  const sp = frame < 0 ? null : s.pages[frame];
  if (sp === null || sp === undefined) throw new TdpMmuError('E_MMU_STATE', `spte ${hexHiLo(hi, lo)} points at no TDP page`);
  return sp;
}

/** A leaf spte of `level` disappears (KVM `kvm_update_page_stats(kvm, level, -1)` via handle_changed_spte). */
export function dropLeaf(s: TdpMmuState, level: number): void {
  s.leaves[level]!--;
  s.host.count(s.initiator, PAGES_STAT[level]!, -1);
}

/** A leaf spte of `level` appears. */
export function addLeaf(s: TdpMmuState, level: number, n = 1): void {
  s.leaves[level]! += n;
  s.host.count(s.initiator, PAGES_STAT[level]!, n);
}

/**
 * KVM `handle_removed_pt` for the page `sp` that was just unlinked: every spte below it is gone (leaves
 * counted down), the pages are freed after the flush (`finish`), each counted in `mmu_shadow_zapped`.
 */
export function removeSubtree(s: TdpMmuState, sp: TdpPage): void {
  const pool = s.pool;
  const level = sp.level;
  for (let i = 0; i < 512; i++) {
    const loc = sp.base + i;
    const lo = pool.lo(loc);
    const hi = pool.hi(loc);
    if (isPresentSpte(lo)) {
      if (isLeaf(lo, level)) dropLeaf(s, level);
      else removeSubtree(s, childOf(s, lo, hi));
    } else if (isMmioSpte(lo, hi)) s.mmioSptes--;
  }
  sp.zapped = true;
  sp.parentLoc = -1;
  s.zapped.push(sp);
  s.pendingFlush = true;
}

/**
 * KVM `tdp_mmu_zap_leafs` over the root: every present leaf spte that maps a gfn in [start, end) is cleared
 * (a huge leaf that overlaps the range as a whole); page tables stay. MMIO sptes are not leaves here: they
 * are invalidated by the memslot generation. Returns whether anything was zapped (a flush is pending).
 */
export function zapLeafs(s: TdpMmuState, start: number, end: number): boolean {
  return visitLeafs(s, s.root, start, end, zapLeaf, 0, 0);
}

/** zapLeafs' visitor: the leaf spte at `loc` is cleared. */
function zapLeaf(s: TdpMmuState, loc: number, _lo: number, level: number): boolean {
  s.setSpte(loc, 0, 0);
  dropLeaf(s, level);
  s.pendingFlush = true;
  return true;
}

/**
 * What visitLeafs does to a present leaf spte: `lo` is its low half at `loc` in the pool, `level` its level,
 * `a` and `b` the arguments visitLeafs was given (numbers, so that a visitor is a plain function and a walk
 * allocates nothing). Returns whether it changed the spte.
 */
export type LeafVisitor = (s: TdpMmuState, loc: number, lo: number, level: number, a: number, b: number) => boolean;

/**
 * Calls `visit` on every present leaf spte below `sp` that maps a gfn in [start, end) (a huge leaf that
 * overlaps the range as a whole), in the order of the gfns, descending into the non-leaf sptes that overlap
 * it (KVM `for_each_tdp_pte_min_level` over [start, end)). Returns whether any visit changed its spte.
 */
export function visitLeafs(s: TdpMmuState, sp: TdpPage, start: number, end: number, visit: LeafVisitor, a: number, b: number): boolean {
  const pool = s.pool;
  const level = sp.level;
  const span = SPAN[level]!;
  let changed = false;
  for (let i = 0; i < 512; i++) {
    const base = sp.gfn + i * span;
    if (base >= end || base + span <= start) continue;
    const loc = sp.base + i;
    const lo = pool.lo(loc);
    if (!isPresentSpte(lo)) continue;
    if (isLeaf(lo, level)) {
      if (visit(s, loc, lo, level, a, b)) changed = true;
    } else if (visitLeafs(s, childOf(s, lo, pool.hi(loc)), start, end, visit, a, b)) changed = true;
  }
  return changed;
}

/** KVM `kvm_tdp_mmu_zap_all`: every page below the root is unlinked and freed, the root emptied. */
export function zapAll(s: TdpMmuState): void {
  const pool = s.pool;
  const root = s.root;
  for (let i = 0; i < 512; i++) {
    const loc = root.base + i;
    const lo = pool.lo(loc);
    const hi = pool.hi(loc);
    if (isPresentSpte(lo)) {
      if (isLeaf(lo, root.level)) dropLeaf(s, root.level);
      else removeSubtree(s, childOf(s, lo, hi));
      s.pendingFlush = true;
    } else if (isMmioSpte(lo, hi)) s.mmioSptes--;
    s.setSpte(loc, 0, 0);
  }
}

/** Clears every MMIO spte (after the generation wrapped: KVM zaps everything then, `kvm_mmu_zap_all_fast`). */
export function zapMmioSptes(s: TdpMmuState, sp: TdpPage = s.root): void {
  const pool = s.pool;
  for (let i = 0; i < 512; i++) {
    const loc = sp.base + i;
    const lo = pool.lo(loc);
    const hi = pool.hi(loc);
    if (isPresentSpte(lo)) {
      if (!isLeaf(lo, sp.level)) zapMmioSptes(s, childOf(s, lo, hi));
    } else if (isMmioSpte(lo, hi)) {
      s.setSpte(loc, 0, 0);
      s.mmioSptes--;
    }
  }
}

/**
 * A memslot changed (KVM `kvm_arch_flush_shadow_memslot` + the new memslot generation): zap the leaves of
 * its gfn range and flush, and make every MMIO spte stale (`kvm_mmu_invalidate_mmio_sptes`). When the 17
 * generation bits an MMIO spte keeps wrap to 0, the stale sptes could pass for current ones: zap them all.
 */
export function memslotChanged(s: TdpMmuState, baseGfn: number, pages: number): void {
  zapLeafs(s, baseGfn, baseGfn + pages);
  s.generation++;
  if ((s.generation & MMIO_GEN_MASK) === 0) zapMmioSptes(s);
}

/**
 * The end of an MMU operation: the remote TLB flush when an spte was zapped (KVM `kvm_flush_remote_tlbs`:
 * every vCPU invalidates its combined mappings, VMX INVEPT / SVM TLB_CONTROL), then the freed pages.
 */
export function finish(s: TdpMmuState): void {
  if (s.pendingFlush) {
    s.pendingFlush = false;
    s.host.count(s.initiator, 'remote_tlb_flush');
    for (const v of s.host.vcpus) {
      v.invalidateCombinedMappings();
      s.host.count(v.id, 'tlb_flush');
    }
  }
  if (s.zapped.length === 0) return;
  for (const sp of s.zapped) {
    unhashPage(s, sp);
    freePage(s, sp);
    s.host.count(s.initiator, 'mmu_shadow_zapped');
    s.host.count(s.initiator, 'tdp_mmu_pages', -1);
  }
  s.zapped.length = 0;
}
