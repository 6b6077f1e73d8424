import * as core from '@vmexit/core';
import { type PagingContext, type Vcpu } from '@vmexit/core';
import * as coreMmu from '@vmexit/core/mmu';
import { ShadowMmuError } from './errors.js';
import { pkeysApply } from './gpte.js';
import type { ShadowPage } from './page.js';
import { commitZap, noSpace, reservePages, zapAllFourByte } from './page-cache.js';
import { MAX_ROOTS, type ShadowMmuState, type VcpuShadowState } from './state.js';
import { syncRoots } from './unsync.js';

// Module-local copies of the imported constants and helpers the exit path uses. V8 folds a module's own constants into
// its compiled code, but reads an imported binding through its module cell, with a check, on every use (core
// DESIGN.md, "Speed").
const { hexU64, MODE_LEGACY32, MODE_LONG4, MODE_LONG5, MODE_PAE, pageNumber, PT_PRESENT } = core;
const { findPage, ROLE_4BYTE_GPTE, rootRoleOf, SPTE_P } = coreMmu;

/**
 * Roots (KVM arch/x86/kvm/mmu/mmu.c: `kvm_mmu_load`, `mmu_alloc_shadow_roots`, `kvm_mmu_free_roots`,
 * `kvm_mmu_new_pgd`, `kvm_mmu_reset_context`): the root pages each vCPU's guest state needs, reserved before
 * any state changes, the cache of previous roots, and the reload of roots that were zapped. `finish` ends
 * every MMU operation.
 */

/** KVM_MMU_NUM_PREV_ROOTS: cached roots of earlier CR3 values (64-bit guests only). */
export const KVM_MMU_NUM_PREV_ROOTS = 3;

/** The signature bit of CR4.PSE (it changes what a 32-bit guest's PDE means without changing the role). */
const SIG_CR4_PSE = 1;
/** The signature of a vCPU with CR0.PG = 0 (no roots). */
const SIG_NOPAGING = -2;

/**
 * pkeys_andnot_wp (bit 19, the first of the bits KVM's `kvm_mmu_page_role` leaves unused): protection keys
 * apply (CR4.PKE in 4/5-level paging, `pkeysApply`) and CR0.WP = 0. The CR0.WP = 0 fault path builds
 * kernel-only writable sptes for supervisor writes to read-only user pages only where keys do not apply (with
 * keys, PKRU.AD must go on stopping supervisor reads of the page, and a kernel-only spte escapes it, SDM
 * Vol. 3A §4.6.2); this bit keeps the pages that hold such sptes from being used where keys apply, as
 * `smap_andnot_wp` does for SMAP (Documentation/virt/kvm/x86/mmu.rst "Emulating cr0.wp"). KVM has no such bit:
 * it offers no PKU to a shadow-paging guest (cpuid.c `kvm_set_cpu_caps`, "PKU is not yet implemented for
 * shadow paging").
 */
export const ROLE_PKEYS_ANDNOT_WP = 1 << 19;

/** The guest-state inputs of the root role, without level and quadrant (KVM's base role). */
export function baseRole(vcpu: Vcpu): number {
  const g = vcpu.ctx;
  const role = rootRoleOf(0, g.mode === MODE_LEGACY32, 0, g.eferNxe, g.cr0Wp, g.cr4Smep, g.cr4Smap);
  return !g.cr0Wp && pkeysApply(g) ? role | ROLE_PKEYS_ANDNOT_WP : role;
}

function signatureOf(vcpu: Vcpu): number {
  if (!vcpu.pagingEnabled) return SIG_NOPAGING;
  const g = vcpu.ctx;
  return baseRole(vcpu) * 16 + g.mode * 2 + (g.cr4Pse ? SIG_CR4_PSE : 0);
}

/**
 * The guest page directory behind PAE root slot `i` (SDM Vol. 3A §4.4.1: PDPTE register i; -1 when it is not
 * present), or, for a 32-bit guest, its one page directory, shadowed once per quadrant (KVM `role.quadrant`).
 */
function paeRootGfn(g: PagingContext, i: number): number {
  if (g.mode === MODE_LEGACY32) return pageNumber(g.cr3);
  const lo = g.pdpteLo[i]!;
  if ((lo & PT_PRESENT) === 0) return -1;
  return (lo >>> 12) + (g.pdpteHi[i]! & 0xfffff) * 0x100000;
}

/** The role of PAE root slot `i`: a level-2 page; a 32-bit guest's slot i is quadrant i (VA bits 31:30). */
function paeRootRole(g: PagingContext, base: number, i: number): number {
  return base | 2 | (g.mode === MODE_LEGACY32 ? i << 5 : 0);
}

/** The root page for `va` (the PAE root of VA bits 31:30, or the 64-bit root). */
export function topPage(st: VcpuShadowState, va: number): ShadowPage | null {
  return st.root ?? st.paeRoots[(va >>> 30) & 3] ?? null;
}

/** The end of every operation: free what was zapped (after the flush), and reload obsolete roots. */
export function finish(s: ShadowMmuState): void {
  commitZap(s);
  processReloads(s);
  commitZap(s);
}

/** KVM_REQ_MMU_FREE_OBSOLETE_ROOTS for every vCPU that has one pending: drop zapped roots, load new ones. */
export function processReloads(s: ShadowMmuState): void {
  // Nearly always none is pending: that check in a few bytes (inlined into every operation's end), the work out of line.
  const states = s.states;
  for (let i = 0; i < states.length; i++) {
    const st = states[i];
    if (st !== undefined && st.needReload) {
      reloadPending(s);
      return;
    }
  }
}

function reloadPending(s: ShadowMmuState): void {
  for (const st of s.states) {
    if (st === undefined || !st.needReload) continue;
    const reload = st.currentRoots().some((sp) => sp.zapped);
    // Nothing is released before the new roots are known to fit (else the vCPU keeps its invalid roots).
    if (reload && s.availablePages < MAX_ROOTS) ensureRootSpace(s, st, rootsReleased(st, true, 0, true), false, 'the reloaded roots');
    st.needReload = false;
    // kvm_mmu_free_obsolete_roots, then kvm_mmu_load.
    for (let i = st.prevRoots.length - 1; i >= 0; i--) {
      if (st.prevRoots[i]!.sp.zapped) releaseRoot(s, st.prevRoots.splice(i, 1)[0]!.sp);
    }
    if (reload) {
      freeRoots(s, st, false);
      loadRoots(s, st);
    }
  }
}

/**
 * A CR (or EFER) write the vCPU applied: new roots for a new mode or role (`kvm_mmu_reset_context`), a new
 * CR3 or new PDPTEs (`kvm_mmu_new_pgd`), and the guest TLB flush that syncs unsync pages (`kvm_mmu_sync_roots`).
 */
export function crWrite(s: ShadowMmuState, vcpu: Vcpu, cr: number, exited: boolean): void {
  const st = s.stateOf(vcpu);
  s.initiator = vcpu.id;
  st.ctx.syncFromGuest();
  const sig = signatureOf(vcpu);
  if (sig !== st.signature) {
    // kvm_mmu_reset_context: a new mode or role. CR4.PSE changes what a 32-bit guest's PDE means without
    // changing the role, so pages of 4-byte gptes built under the old PSE are zapped.
    const zapFourByte = sig >= 0 && st.signature >= 0 && ((sig ^ st.signature) & SIG_CR4_PSE) !== 0;
    if (s.availablePages < MAX_ROOTS) ensureRootSpace(s, st, rootsReleased(st, true, 0, false), zapFourByte, 'the roots of the new mode');
    if (zapFourByte) zapAllFourByte(s);
    freeRoots(s, st, true);
    loadRoots(s, st);
  } else if (cr === 3 || pdptesChanged(st)) {
    newPgd(s, st);
  }
  // A guest TLB flush (KVM_REQ_MMU_SYNC / KVM_REQ_TLB_FLUSH_GUEST -> kvm_mmu_sync_roots): sync the unsync
  // pages the vCPU's roots reach. The vCPU flushed its TLB for this CR write (a CR3 write with the PCID
  // no-flush bit does not, and then the sync is merely early: always allowed).
  if (s.unsyncPages.size > 0) {
    if (!exited)
      throw new ShadowMmuError(
        'E_MMU_STATE',
        `vCPU ${vcpu.id}: a write of CR${cr === 0xc0000080 ? ' EFER' : cr} did not exit while ${s.unsyncPages.size} shadow pages are unsync: unsync pages need CR3-load exiting`,
      );
    syncRoots(s, st);
  }
  finish(s);
}

function pdptesChanged(st: VcpuShadowState): boolean {
  const g = st.vcpu.ctx;
  if (g.mode !== MODE_PAE) return false;
  for (let i = 0; i < 4; i++) if (g.pdpteLo[i] !== st.pdpteLo[i] || g.pdpteHi[i] !== st.pdpteHi[i]) return true;
  return false;
}

/** KVM `mmu_alloc_shadow_roots`: the roots for the guest's current mode, CR3 and PDPTEs. */
export function loadRoots(s: ShadowMmuState, st: VcpuShadowState): void {
  const vcpu = st.vcpu;
  const g = vcpu.ctx;
  const ctx = st.ctx;
  // Reserve before any state changes (KVM mmu_topup_memory_caches, then make_mmu_pages_available in
  // mmu_alloc_shadow_roots): a page for each root that has none yet, so running out leaves the vCPU as it was.
  if (vcpu.pagingEnabled) reserveRoots(s, vcpu);
  st.signature = signatureOf(vcpu);
  ctx.pdpteLo.fill(0);
  ctx.pdpteHi.fill(0);
  if (!vcpu.pagingEnabled) {
    // No roots: the vCPU does not run with CR0.PG = 0 (real mode is not modelled).
    ctx.mode = MODE_PAE;
    return;
  }
  const base = baseRole(vcpu);
  if (g.mode === MODE_LONG4 || g.mode === MODE_LONG5) {
    const level = g.mode === MODE_LONG4 ? 4 : 5;
    const sp = s.getPage(pageNumber(g.cr3), base | level);
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
    const sp = s.getPage(gfn, paeRootRole(g, base, i));
    sp.rootCount++;
    st.paeRoots[i] = sp;
    ctx.pdpteLo[i] = (sp.hpaLo | SPTE_P) >>> 0;
    ctx.pdpteHi[i] = sp.hpaHi;
  }
}

/** Drops the vCPU's current roots (and, with `all`, the cached previous roots): KVM `kvm_mmu_free_roots`. */
function freeRoots(s: ShadowMmuState, st: VcpuShadowState, all: boolean): void {
  if (st.root !== null) releaseRoot(s, st.root);
  st.root = null;
  for (let i = 0; i < 4; i++) {
    const sp = st.paeRoots[i];
    if (sp !== null && sp !== undefined) releaseRoot(s, sp);
    st.paeRoots[i] = null;
  }
  if (all) {
    for (const p of st.prevRoots) releaseRoot(s, p.sp);
    st.prevRoots.length = 0;
  }
}

function releaseRoot(s: ShadowMmuState, sp: ShadowPage): void {
  sp.rootCount--;
  if (sp.rootCount === 0 && s.invalidRoots.delete(sp)) s.invalidList.push(sp);
}

/**
 * A new CR3 (or new PDPTEs) with the same role (KVM `kvm_mmu_new_pgd`). 64-bit guests keep up to three
 * previous roots and switch back to one without rebuilding (`fast_pgd_switch`); PAE and 32-bit guests
 * get new roots.
 */
function newPgd(s: ShadowMmuState, st: VcpuShadowState): void {
  const g = st.vcpu.ctx;
  if (!st.vcpu.pagingEnabled) return;
  if ((g.mode === MODE_LONG4 || g.mode === MODE_LONG5) && st.root !== null) {
    const pgd = pageNumber(g.cr3);
    const cur = st.root;
    if (cur.gfn === pgd && !cur.zapped) return;
    const i = st.prevRoots.findIndex((p) => p.pgd === pgd && p.sp.role === cur.role);
    // A miss loads a new root; the current one stays pinned as a previous root and the oldest of a full
    // cache is released.
    if (i < 0 && s.availablePages < MAX_ROOTS) {
      const from = st.prevRoots.length >= KVM_MMU_NUM_PREV_ROOTS ? KVM_MMU_NUM_PREV_ROOTS - 1 : st.prevRoots.length;
      ensureRootSpace(s, st, rootsReleased(st, false, from, false), false, 'a new root');
    }
    st.prevRoots.unshift({ pgd: cur.gfn, sp: cur });
    st.root = null;
    if (i >= 0) {
      const hit = st.prevRoots.splice(i + 1, 1)[0]!;
      st.root = hit.sp;
      st.ctx.cr3 = hit.sp.hpa;
    }
    while (st.prevRoots.length > KVM_MMU_NUM_PREV_ROOTS) releaseRoot(s, st.prevRoots.pop()!.sp);
    if (st.root === null) loadRoots(s, st);
    return;
  }
  if (s.availablePages < MAX_ROOTS) ensureRootSpace(s, st, rootsReleased(st, true, st.prevRoots.length, false), false, 'the new roots');
  freeRoots(s, st, false);
  loadRoots(s, st);
}

/** The roots the vCPU's guest state needs (as `loadRoots` builds them), into `scratch.rootGfn`/`rootRole`; returns how many. */
function rootTargets(s: ShadowMmuState, vcpu: Vcpu): number {
  if (!vcpu.pagingEnabled) return 0;
  const { rootGfn, rootRole } = s.scratch;
  const g = vcpu.ctx;
  const base = baseRole(vcpu);
  const cr3Gfn = pageNumber(g.cr3);
  if (g.mode === MODE_LONG4 || g.mode === MODE_LONG5) {
    rootGfn[0] = cr3Gfn;
    rootRole[0] = base | (g.mode === MODE_LONG4 ? 4 : 5);
    return 1;
  }
  let n = 0;
  for (let i = 0; i < 4; i++) {
    const gfn = paeRootGfn(g, i);
    if (gfn < 0) continue;
    const role = paeRootRole(g, base, i);
    let dup = false;
    for (let j = 0; j < n; j++) if (rootGfn[j] === gfn && rootRole[j] === role) dup = true; // two PDPTEs, one PD: one page
    if (dup) continue;
    rootGfn[n] = gfn;
    rootRole[n++] = role;
  }
  return n;
}

/** How many roots the vCPU's guest state needs that have no shadow page yet. */
function missingRoots(s: ShadowMmuState, vcpu: Vcpu): number {
  const n = rootTargets(s, vcpu);
  const { rootGfn, rootRole } = s.scratch;
  let m = 0;
  for (let i = 0; i < n; i++) if (findPage(s, rootGfn[i]!, rootRole[i]!) === null) m++;
  return m;
}

/** Reserves a page for every missing root (reclaiming first when fewer than 5 are free); E_MMU_NOSPC otherwise. */
function reserveRoots(s: ShadowMmuState, vcpu: Vcpu): void {
  const what = vcpu.ctx.mode === MODE_LONG4 || vcpu.ctx.mode === MODE_LONG5 ? 'a root' : 'the PAE roots';
  reservePages(s, missingRoots(s, vcpu), what);
  // A reclaim may have zapped a page that was to be reused as a root: then that one is missing too.
  const need = missingRoots(s, vcpu);
  if (s.availablePages < need) noSpace(s, need, what);
}

/** The root slots of `st` that a reload releases: the current roots, and previous roots from index `prevFrom` (only zapped ones with `zappedOnly`). */
function rootsReleased(st: VcpuShadowState, current: boolean, prevFrom: number, zappedOnly: boolean): ShadowPage[] {
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
function ensureRootSpace(s: ShadowMmuState, st: VcpuShadowState, releasing: readonly ShadowPage[], zapFourByte: boolean, what: string): void {
  const held = (sp: ShadowPage): boolean => {
    let n = sp.rootCount;
    for (const r of releasing) if (r === sp) n--;
    return n > 0;
  };
  const n = rootTargets(s, st.vcpu);
  const { rootGfn, rootRole } = s.scratch;
  let need = 0;
  for (let i = 0; i < n; i++) {
    const sp = findPage(s, rootGfn[i]!, rootRole[i]!);
    if (sp === null || !held(sp) || (zapFourByte && (sp.role & ROLE_4BYTE_GPTE) !== 0)) need++;
  }
  let free = s.availablePages + s.invalidList.length;
  if (free >= need) return;
  for (const sp of s.active) if (!held(sp)) free++;
  for (const sp of s.invalidRoots) if (!held(sp)) free++;
  if (free < need) noSpace(s, need, what);
}

/** Throws when no root covers `va` although the guest walk succeeded (an MMU bug, never a guest's doing). */
export function requireTopPage(st: VcpuShadowState, va: number): ShadowPage {
  const sp = topPage(st, va);
  if (sp === null) throw new ShadowMmuError('E_MMU_STATE', `vCPU ${st.vcpu.id}: no shadow root for ${hexU64(va)} although the guest walk succeeded`);
  return sp;
}
