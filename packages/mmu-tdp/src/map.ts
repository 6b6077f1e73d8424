import { type Memslot } from '@vmexit/core';
import { ACC_ALL, allocPage, childRole, growPageCache, makeNonLeafSpte, SPTE_LARGE, sptePa } from '@vmexit/core/mmu';
import { TdpMmuError } from './errors.js';
import { isMmioSpte, isPresentSpte, makeMmioSpte } from './mmio.js';
import { TdpPage } from './page.js';
import type { TdpMmuState } from './state.js';
import { addLeaf, childOf, dropLeaf, isLeaf, SPAN, spteIndex } from './zap.js';

/**
 * KVM `tdp_mmu_alloc_sp` + `tdp_mmu_init_child_sp`: a new page below spte `parentLoc` mapping the range
 * that starts at `gfn`. The TDP MMU has no page budget (KVM counts its pages, `tdp_mmu_pages`, but never
 * reclaims them), so the pool grows when it is full.
 */
export function newPage(s: TdpMmuState, gfn: number, role: number, parentLoc: number): TdpPage {
  const make = (frame: number, g: number, r: number): TdpPage => new TdpPage(frame, g, r, s.pool.hpaOf(frame));
  let sp = allocPage(s, gfn, role, make);
  if (sp === null) {
    const n = Math.min(s.maxPages * 2, s.maxPoolFrames);
    if (n <= s.maxPages) throw new TdpMmuError('E_MMU_STATE', `the TDP tables need more than the ${s.maxPages} frames of their host-physical window`);
    growPageCache(s, n);
    s.maxPages = n;
    sp = allocPage(s, gfn, role, make)!;
  }
  sp.parentLoc = parentLoc;
  s.host.count(s.initiator, 'tdp_mmu_pages');
  return sp;
}

/** KVM `tdp_mmu_link_sp`: points spte `loc` at `child` (`make_nonleaf_spte`). */
export function linkPage(s: TdpMmuState, loc: number, child: TdpPage): void {
  makeNonLeafSpte(s.scratch, child.hpa, s.format);
  s.setSpte(loc, s.scratch.lo, s.scratch.hi);
}

/**
 * The largest leaf level for `gfn` (KVM `kvm_mmu_hugepage_adjust` / `kvm_mmu_max_mapping_level`): the
 * largest level the host backing allows (`hostPages`) whose aligned range lies wholly in `slot`, so that
 * one leaf never maps a gfn outside the memslot or with other rights.
 */
export function mappingLevel(s: TdpMmuState, gfn: number, slot: Memslot): number {
  // kvm_mmu_hugepage_adjust: "if (kvm_slot_dirty_track_enabled(slot)) return;" a logged slot is mapped at 4 KiB.
  if (s.dirtyLog !== null && s.dirtyLog.loggingSlots > 0 && s.dirtyLog.isLogging(slot)) return 1;
  for (let level = s.maxLeafLevel; level > 1; level--) {
    const span = SPAN[level]!;
    const base = Math.floor(gfn / span) * span;
    if (base >= slot.baseGfn && base + span <= slot.baseGfn + slot.pages) return level;
  }
  return 1;
}

/**
 * KVM `tdp_mmu_split_huge_page`: the huge leaf at `loc` (in `parent`, of `level`) becomes a page table of
 * 512 leaves of the next level down with the same bits (`make_huge_page_split_spte`: the frame advanced by
 * the child's span, the page-size bit cleared at 4 KiB). Every translation stays the same, so no flush.
 */
export function splitHuge(s: TdpMmuState, parent: TdpPage, loc: number, level: number): TdpPage {
  const pool = s.pool;
  const lo = pool.lo(loc);
  const hi = pool.hi(loc);
  const base = Math.floor(sptePa(lo, hi) / 4096);
  const child = newPage(s, base, childRole(parent.role, loc - parent.base, true, ACC_ALL), loc);
  const childLevel = level - 1;
  const span = SPAN[childLevel]!;
  const attrLo = childLevel === 1 ? lo & 0xfff & ~SPTE_LARGE : lo & 0xfff;
  const attrHi = hi & ~0xfffff;
  for (let i = 0; i < 512; i++) {
    const gfn = base + i * span;
    s.setSpte(child.base + i, ((gfn % 0x100000) * 4096 + attrLo) >>> 0, (Math.floor(gfn / 0x100000) | attrHi) >>> 0);
  }
  linkPage(s, loc, child);
  dropLeaf(s, level);
  addLeaf(s, childLevel, 512);
  s.host.count(s.initiator, 'split_huge_pages');
  return child;
}

/**
 * KVM `make_mmio_spte` through `kvm_tdp_mmu_map` (`tdp_mmu_map_handle_target_level`, "pf_mmio_spte_created"):
 * a 4 KiB MMIO spte for `gfn`, which no memslot holds, under the current generation.
 */
export function mapMmio(s: TdpMmuState, gfn: number): void {
  const pool = s.pool;
  let sp = s.root;
  for (let level = s.rootLevel; ; level--) {
    const idx = spteIndex(gfn, level);
    const loc = sp.base + idx;
    const lo = pool.lo(loc);
    const hi = pool.hi(loc);
    if (level === 1) {
      if (isPresentSpte(lo)) throw new Error(`gfn ${gfn} has no memslot but a present spte`);
      if (!isMmioSpte(lo, hi)) s.mmioSptes++;
      makeMmioSpte(s.scratch, s.mmioValue!, gfn, s.generation);
      s.setSpte(loc, s.scratch.lo, s.scratch.hi);
      return;
    }
    if (isPresentSpte(lo)) {
      sp = childOf(s, lo, hi);
      continue;
    }
    if (isMmioSpte(lo, hi)) s.mmioSptes--;
    const child = newPage(s, Math.floor(gfn / SPAN[level]!) * SPAN[level]!, childRole(sp.role, idx, true, ACC_ALL), loc);
    linkPage(s, loc, child);
    sp = child;
  }
}

/** The level-1 spte location of `gfn`, or -1 when the walk from the root stops above level 1 (KVM `kvm_tdp_mmu_get_walk`). */
export function leafLoc(s: TdpMmuState, gfn: number): number {
  const pool = s.pool;
  let sp = s.root;
  for (let level = s.rootLevel; ; level--) {
    const loc = sp.base + spteIndex(gfn, level);
    if (level === 1) return loc;
    const lo = pool.lo(loc);
    if (!isPresentSpte(lo) || isLeaf(lo, level)) return -1;
    sp = childOf(s, lo, pool.hi(loc));
  }
}

/** Splits every huge leaf that maps a gfn in [start, end) down to 4 KiB (KVM `kvm_tdp_mmu_try_split_huge_pages`). */
export function splitHugePages(s: TdpMmuState, start: number, end: number, sp: TdpPage = s.root): void {
  const pool = s.pool;
  const level = sp.level;
  const span = SPAN[level]!;
  for (let i = 0; i < 512; i++) {
    const base = sp.gfn + i * span;
    if (base >= end || base + span <= start || level === 1) continue;
    const loc = sp.base + i;
    const lo = pool.lo(loc);
    if (!isPresentSpte(lo)) continue;
    const child = isLeaf(lo, level) ? splitHuge(s, sp, loc, level) : childOf(s, lo, pool.hi(loc));
    splitHugePages(s, start, end, child);
  }
}
