import { PT_PRESENT, type Vcpu } from '@vmexit/core';
import * as coreMmu from '@vmexit/core/mmu';
import * as decisions from './decisions.js';
import * as gpte from './gpte.js';
import type { ShadowPage } from './page.js';
import * as pageCache from './page-cache.js';
import type { ShadowMmuState, VcpuShadowState } from './state.js';

// Module-local copies of the imported constants and helpers the exit path uses. V8 folds a module's own constants into
// its compiled code, but reads an imported binding through its module cell, with a check, on every use (core
// DESIGN.md, "Speed").
const { decideUnsync } = decisions;
const { clearUnsync, hasUpperLevelPage, installLeaf, setTrap, writeProtectGfn, zapSpte } = pageCache;
const { leafFromGpte, levelIndex, readGpte } = gpte;
const { sptePa, SPTES_PER_PAGE } = coreMmu;

/**
 * Unsync pages (KVM 4731d4c7a077 "KVM: MMU: out of sync shadow core"; arch/x86/kvm/mmu/mmu.c
 * `mmu_try_to_unsync_pages`, `kvm_sync_page`, `kvm_mmu_sync_roots`; paging_tmpl.h `FNAME(sync_spte)`,
 * `FNAME(invlpg)`): a level-1 guest table may stay writable, its sptes stale until the guest flushes its TLB.
 */

/**
 * mmu_try_to_unsync_pages: a writable spte for `gfn` is allowed when every shadow page of the gfn is a
 * level-1 page and the policies let them go unsync; they are all marked unsync (`kvm_unsync_page`).
 */
export function tryUnsync(s: ShadowMmuState, st: VcpuShadowState, gfn: number): boolean {
  if (hasUpperLevelPage(s, gfn)) return false;
  if (decideUnsync(s.host, st, st.mmuEventSeq++, gfn) !== true) return false; // a boolean compiled code knows as one
  for (const sp of s.indirectPagesOf(gfn)) if (!sp.unsync) markUnsync(s, st.vcpu.id, sp);
  return true;
}

function markUnsync(s: ShadowMmuState, vcpuId: number, sp: ShadowPage): void {
  sp.unsync = true;
  s.unsyncPages.add(sp);
  s.trackVersion++;
  s.unsyncCount.set(sp.gfn, (s.unsyncCount.get(sp.gfn) ?? 0) + 1);
  s.host.count(vcpuId, 'mmu_unsync');
  // mmu_convert_notrap: the guest may now make a gpte present without an exit, so no notrap may stay.
  if (s.bypassEncoding) {
    const pool = s.pool;
    for (let i = 0; i < SPTES_PER_PAGE; i++) {
      const loc = sp.base + i;
      if (s.isNotrap(pool.lo(loc), pool.hi(loc))) setTrap(s, loc);
    }
  }
}

/**
 * kvm_sync_page: write-protect the gfn again, then bring every present spte back in line with its gpte
 * (FNAME(sync_spte)): an invalid gpte or another frame drops the spte, otherwise it is rebuilt with the
 * gpte's current rights (a flush when rights were lost). A dropped spte whose gpte is not present becomes
 * notrap where the now synced page may hold notrap sptes (KVM 4731d4c7a077 FNAME(sync_page), with the bypass
 * encoding: "if (is_present_pte(gpte)) nonpresent = shadow_trap_nonpresent_pte; else nonpresent =
 * shadow_notrap_nonpresent_pte"), so that the guest's own fault on it bypasses the hypervisor again.
 */
export function syncPage(s: ShadowMmuState, vcpu: Vcpu, sp: ShadowPage): void {
  clearUnsync(s, sp);
  if (s.isWriteProtected(sp.gfn)) writeProtectGfn(s, sp.gfn);
  const pool = s.pool;
  const { gpte, leaf } = s.scratch;
  for (let i = 0; i < SPTES_PER_PAGE; i++) {
    const loc = sp.base + i;
    const lo = pool.lo(loc);
    const hi = pool.hi(loc);
    if (!s.isPresent(lo, hi)) continue;
    readGpte(s, sp, i, gpte);
    if (!leafFromGpte(s, vcpu, sp, gpte.lo, gpte.hi, leaf) || sptePa(lo, hi) !== sptePa(leaf.lo, leaf.hi)) {
      zapSpte(s, sp, loc);
      if ((gpte.lo & PT_PRESENT) === 0 && s.notrapAllowed(sp)) pool.set(loc, s.notrapLo, s.notrapHi);
    } else installLeaf(s, sp, loc, leaf.lo, leaf.hi);
  }
}

/** kvm_mmu_sync_roots: sync every unsync page reachable from the vCPU's current roots. */
export function syncRoots(s: ShadowMmuState, st: VcpuShadowState): void {
  const roots = new Set(st.currentRoots());
  for (const sp of [...s.unsyncPages]) if (sp.unsync && reachable(s, sp, roots)) syncPage(s, st.vcpu, sp);
}

/** Whether a root of `roots` reaches `sp` (up the parent_ptes links). */
function reachable(s: ShadowMmuState, sp: ShadowPage, roots: Set<ShadowPage>): boolean {
  const seen = new Set<ShadowPage>();
  const stack = [sp];
  while (stack.length > 0) {
    const p = stack.pop()!;
    if (roots.has(p)) return true;
    if (seen.has(p)) continue;
    seen.add(p);
    for (const loc of p.parentPtes.toArray()) stack.push(s.pageOfLoc(loc));
  }
  return false;
}

/**
 * FNAME(invlpg): for the current root and every cached previous root, walk the shadow tables for `va`; at
 * an unsync level-1 page, drop the spte and map the gpte again if it is valid.
 */
export function invlpgSync(s: ShadowMmuState, st: VcpuShadowState, va: number): void {
  const roots: (ShadowPage | null)[] = st.root !== null ? [st.root, ...st.prevRoots.map((p) => p.sp)] : [st.paeRoots[(va >>> 30) & 3] ?? null];
  const pool = s.pool;
  const { gpte, leaf } = s.scratch;
  for (const root of roots) {
    let sp = root;
    while (sp !== null && !sp.zapped && sp.level > 1) {
      const loc = sp.base + levelIndex(va, sp.level);
      const lo = pool.lo(loc);
      const hi = pool.hi(loc);
      sp = s.isPresent(lo, hi) ? s.childPage(lo, hi) : null;
    }
    if (sp === null || !sp.unsync) continue;
    const i = levelIndex(va, 1);
    const loc = sp.base + i;
    zapSpte(s, sp, loc);
    readGpte(s, sp, i, gpte);
    if (leafFromGpte(s, st.vcpu, sp, gpte.lo, gpte.hi, leaf)) installLeaf(s, sp, loc, leaf.lo, leaf.hi);
  }
}
