import { PAGE_SIZE, type Memslot } from '@vmexit/core';
import { SPTE_HI_ADDR_MASK, SPTE_LARGE } from '@vmexit/core/mmu';
import { mappingLevel, splitHugePages } from './map.js';
import { isPresentSpte } from './mmio.js';
import type { TdpPage } from './page.js';
import type { TdpMmuState } from './state.js';
import { addLeaf, childOf, finish, isLeaf, removeSubtree, SPAN, visitLeafs } from './zap.js';

/**
 * Dirty logging on the TDP MMU (KVM arch/x86/kvm/mmu/tdp_mmu.c): the write protection of a logged slot's
 * leaf sptes (`kvm_tdp_mmu_wrprot_slot`, `wrprot_gfn_range`), which clears W and keeps the MMU-writable
 * software bit so that the fast page fault (fast-fault.ts) may set W again without `mmu_lock`; the
 * re-protection of harvested pages (`kvm_tdp_mmu_clear_dirty_pt_masked`); under PML the dirty flag is cleared
 * instead of W (`clear_dirty_gfn_range` with A/D bits, `kvm_mmu_slot_leaf_clear_dirty`): the CPU then logs the
 * next write in its PML buffer without an exit. Marking pages dirty happens where a writable leaf is installed
 * (map-fault.ts `TdpMapFault`, as `make_spte` calls `mark_page_dirty_in_slot`), in the fast path, for every emulated
 * store (mmu.ts `trackWrite`), and when a vCPU's PML buffer is flushed (mmu.ts `flushPml`).
 */

/**
 * Clears `clear` in the low half of every present leaf spte of level >= `minLevel` mapping a gfn in
 * [start, end) (KVM `wrprot_gfn_range` with `PT_WRITABLE_MASK`, `clear_dirty_gfn_range` with
 * `shadow_dirty_mask`), by a plain store under `mmu_lock` held for write (a visitLeafs walk from the root).
 * Returns whether an spte changed.
 */
function clearLeafBits(s: TdpMmuState, start: number, end: number, clear: number, minLevel: number): boolean {
  return visitLeafs(s, s.root, start, end, clearBits, clear, minLevel);
}

/** clearLeafBits' visitor. */
function clearBits(s: TdpMmuState, loc: number, lo: number, level: number, clear: number, minLevel: number): boolean {
  if (level < minLevel || (lo & clear) === 0) return false;
  s.setSpte(loc, (lo & ~clear) >>> 0, s.pool.hi(loc));
  return true;
}

/**
 * KVM `kvm_mmu_slot_apply_flags` when KVM_MEM_LOG_DIRTY_PAGES goes on: eager page splitting first
 * (`kvm_mmu_slot_try_split_huge_pages`, so that the log has 4 KiB granularity and no huge mapping is left to
 * drop at the first write), then `kvm_mmu_slot_remove_write_access(PG_LEVEL_4K)` -> `kvm_tdp_mmu_wrprot_slot`:
 * W cleared in every leaf of the slot, MMU-writable kept. Under PML (`cpuDirtyLog`): `kvm_mmu_slot_leaf_clear_dirty`
 * clears the D flags of the 4 KiB leaves instead, and the huge ones are write-protected (`PG_LEVEL_2M`).
 * Returns whether an spte changed (the caller flushes).
 */
export function slotRemoveWriteAccess(s: TdpMmuState, slot: Memslot): boolean {
  const start = slot.baseGfn;
  const end = slot.baseGfn + slot.pages;
  splitHugePages(s, start, end);
  if (s.cpuDirtyLog) {
    const d = clearLeafBits(s, start, end, s.format.dirtyLo, 1);
    const w = clearLeafBits(s, start, end, s.format.writableLo, 2);
    return d || w;
  }
  return clearLeafBits(s, start, end, s.format.writableLo, 1);
}

/**
 * KVM `kvm_arch_mmu_enable_log_dirty_pt_masked` -> `kvm_tdp_mmu_clear_dirty_pt_masked(wrprot = !PML)`: for each
 * bit i of `mask`, the 4 KiB leaf of gfn `slot.baseGfn + offset + i` loses W (or, under PML, D).
 *
 * A huge leaf over a logged gfn is there only with KVM_DIRTY_LOG_INITIALLY_SET: enabling the log then neither
 * split nor protected anything (`kvm_mmu_slot_apply_flags` returns early), and the huge leaves stay until the
 * first clear. KVM splits them first ("If the slot was assumed to be 'initially all dirty', write-protect huge
 * pages to ensure they are split to 4KiB on the first write": `kvm_mmu_try_split_huge_pages` over the mask's
 * first to last gfn, with eager page splitting, which never fails here), and `clear_dirty_pt_masked` itself
 * skips leaves above 4 KiB. So only the named 4 KiB pages lose W or D: write-protecting the whole huge leaf
 * would make the other 511 pages of a 2 MiB leaf exit on their next store, and under PML clearing its one D
 * flag would log only the first store to any of its pages, losing the others.
 */
export function writeProtectMasked(s: TdpMmuState, slot: Memslot, offset: number, mask: number): boolean {
  const m0 = mask >>> 0;
  if (m0 === 0) return false;
  const clear = s.cpuDirtyLog ? s.format.dirtyLo : s.format.writableLo;
  const base = slot.baseGfn + offset;
  splitHugePages(s, base + 31 - Math.clz32(m0 & -m0), base + 32 - Math.clz32(m0));
  let changed = false;
  let m = m0;
  while (m !== 0) {
    const b = 31 - Math.clz32(m & -m);
    const gfn = base + b;
    if (clearLeafBits(s, gfn, gfn + 1, clear, 1)) changed = true;
    m = (m & (m - 1)) >>> 0;
  }
  return changed;
}

/**
 * KVM `kvm_mmu_recover_huge_pages` -> `kvm_tdp_mmu_recover_huge_pages` (`recover_huge_pages_range`, v6.13; older
 * kernels zap the same tables, `kvm_mmu_zap_collapsible_sptes`), when KVM_MEM_LOG_DIRTY_PAGES is cleared on `slot`
 * (`kvm_mmu_slot_apply_flags`): from the root down, each present non-leaf spte of level 2 MiB or 1 GiB whose gfn
 * lies in the slot and whose range the host backing and the slot allow to map huge (`kvm_mmu_max_mapping_level`,
 * here `mappingLevel`, the slot no longer logging) becomes one huge leaf made from the first present leaf below
 * it (`tdp_mmu_make_huge_spte` -> `make_huge_spte`: that leaf's bits with the page-size bit, the address aligned
 * down), so a first leaf write-protected for logging gives a write-protected huge leaf (MMU-writable kept: the
 * next write fixes it once for the whole range). The tables below are freed after one flush. A table with no
 * present leaf stays. Returns whether a table was replaced.
 */
export function recoverHugePages(s: TdpMmuState, slot: Memslot): boolean {
  const prev = s.initiator;
  s.initiator = 0; // the host's ioctl: counted on vCPU 0, as flushForLog does
  const changed = recoverIn(s, s.root, slot);
  finish(s); // "if (flush) kvm_flush_remote_tlbs_memslot(kvm, slot)", then the freed tables
  s.initiator = prev;
  return changed;
}

/** recoverHugePages below `sp`: `for_each_tdp_pte_min_level(iter, kvm, root, PG_LEVEL_2M, start, end)`, pre-order. */
function recoverIn(s: TdpMmuState, sp: TdpPage, slot: Memslot): boolean {
  const level = sp.level;
  if (level < 2) return false;
  const pool = s.pool;
  const span = SPAN[level]!;
  const start = slot.baseGfn;
  const end = slot.baseGfn + slot.pages;
  let changed = false;
  for (let i = 0; i < 512; i++) {
    const gfn = sp.gfn + i * span;
    if (gfn >= end || gfn + span <= start) continue;
    const loc = sp.base + i;
    const lo = pool.lo(loc);
    if (!isPresentSpte(lo) || isLeaf(lo, level)) continue; // "Don't zap leaf SPTEs"
    const child = childOf(s, lo, pool.hi(loc));
    // level > KVM_MAX_HUGEPAGE_LEVEL (1 GiB), or iter.gfn outside the slot, or max_mapping_level < iter.level: step down.
    if (level <= 3 && gfn >= start && mappingLevel(s, gfn, slot) >= level && makeHugeFromFirstLeaf(s, child, gfn)) {
      removeSubtree(s, child);
      s.setSpte(loc, s.scratch.lo, s.scratch.hi);
      addLeaf(s, level);
      changed = true;
      continue;
    }
    if (recoverIn(s, child, slot)) changed = true;
  }
  return changed;
}

/**
 * `tdp_mmu_make_huge_spte`: the first present leaf below `sp` (in gfn order) made a huge leaf at `sp`'s parent
 * level mapping from `gfn` (`make_huge_spte`: "small_spte | PT_PAGE_SIZE_MASK", the address bits below the huge
 * page cleared), into `s.scratch`. False when no leaf is present (-ENOENT: the table stays).
 */
function makeHugeFromFirstLeaf(s: TdpMmuState, sp: TdpPage, gfn: number): boolean {
  const pool = s.pool;
  for (let i = 0; i < 512; i++) {
    const loc = sp.base + i;
    const lo = pool.lo(loc);
    if (!isPresentSpte(lo)) continue;
    const hi = pool.hi(loc);
    if (!isLeaf(lo, sp.level)) {
      if (makeHugeFromFirstLeaf(s, childOf(s, lo, hi), gfn)) return true;
      continue;
    }
    s.scratch.lo = ((gfn % 0x100000) * PAGE_SIZE + ((lo & 0xfff) | SPTE_LARGE)) >>> 0;
    s.scratch.hi = (Math.floor(gfn / 0x100000) | (hi & ~SPTE_HI_ADDR_MASK)) >>> 0;
    return true;
  }
  return false;
}

/** KVM `kvm_flush_remote_tlbs_memslot`: every vCPU's combined mappings, counted on `initiator` (the host's ioctls on vCPU 0). */
export function flushForLog(s: TdpMmuState, initiator: number): void {
  const prev = s.initiator;
  s.initiator = initiator < 0 ? 0 : initiator;
  s.pendingFlush = true;
  finish(s);
  s.initiator = prev;
}

/** KVM `kvm_vcpu_mark_page_dirty` of the page at `gpa`, on behalf of vCPU `vcpu`. */
export function markGpaDirty(s: TdpMmuState, gpa: number, vcpu: number): void {
  if (s.dirtyLog !== null) s.dirtyLog.markPageDirty(Math.floor(gpa / PAGE_SIZE), vcpu);
}
