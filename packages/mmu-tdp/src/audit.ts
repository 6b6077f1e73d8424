import { hexHiLo, hexU64 as hex, type Memslot } from '@vmexit/core';
import { makeLeafSpte, makeNonLeafSpte, roleDirect, roleLevel, SpteHalves, ACC_ALL } from '@vmexit/core/mmu';
import { TdpMmuError } from './errors.js';
import { isMmioSpte, isPresentSpte, MMIO_GEN_MASK, mmioSpteGeneration, mmioSpteGfn } from './mmio.js';
import type { TdpPage } from './page.js';
import type { TdpMmuState } from './state.js';
import { childOf, isLeaf, SPAN } from './zap.js';

/** What `auditTdpMmu` checks. */
export interface TdpAuditOptions {
  /** Re-read every spte of every page (default: only the pages whose sptes changed since the last audit). */
  readonly full?: boolean;
}

/**
 * `--audit` for the TDP MMU: the invariants of KVM's TDP MMU (tdp_mmu.c; the WARNs of handle_changed_spte
 * and the rules of Documentation/virt/kvm/x86/mmu.rst), checked after every exit. Throws TdpMmuError
 * E_MMU_AUDIT at the first violation, naming the spte, its page and the gfn.
 *
 * - Nothing is left pending: no zapped page waits to be freed, no zapped spte waits for its flush.
 * - The tables are a tree reachable from the root and nothing else: every page in use is the root or is
 *   linked by exactly the parent spte it records, of the level above, from a page in use; the page's gfn is
 *   the start of the range that spte maps; every vCPU's second stage (EPTP / nCR3) points at the root.
 * - Every non-leaf spte is `make_nonleaf_spte` of its child.
 * - Every present leaf maps its own gfn (host-physical addresses of guest RAM are guest-physical: so a
 *   present leaf never changes to another frame, whatever happened in between), its whole range lies in one
 *   memslot, with rights no wider than the slot's (no write to read-only RAM), no larger than the host
 *   backing allows; its bits are `make_spte`'s but for the accessed and dirty flags the hardware sets and a W
 *   that dirty logging cleared (MMU-writable kept).
 * - A non-present spte is zero or an MMIO spte: at 4 KiB, for the gfn of its position, which no memslot
 *   holds, with a generation not newer than the MMU's.
 * - The counts (pages in use, leaves per level, MMIO sptes) match the tables. Counted on a full audit; an
 *   incremental one re-reads only the pages whose sptes the MMU changed since the last audit.
 */
export function auditTdpMmu(s: TdpMmuState, options: TdpAuditOptions = {}): void {
  if (s.zapped.length > 0) fail(`${s.zapped.length} zapped pages were not freed at the end of the operation`);
  if (s.pendingFlush) fail('a zapped spte is still in the TLBs (no flush at the end of the operation)');
  const root = s.root;
  if (!s.active.has(root) || root.parentLoc !== -1 || root.level !== s.rootLevel || !roleDirect(root.role))
    fail(`the root (frame ${root.frame}) is not a direct level-${s.rootLevel} page in use`);
  for (const v of s.host.vcpus) {
    const stage = v.secondStage as { root?: number } | null;
    if (stage === null || stage.root !== root.hpa || v.activeCtx.nested !== v.secondStage) {
      fail(`vCPU ${v.id}: its second stage does not walk the root at ${hex(root.hpa)}`);
    }
  }
  if (s.usedPages !== s.active.size) fail(`usedPages ${s.usedPages} but ${s.active.size} pages in use`);
  // The tree: each page's link.
  for (const sp of s.active) {
    if (s.pages[sp.frame] !== sp) fail(`page of frame ${sp.frame} is not the pool's page of that frame`);
    if (sp.zapped) fail(`page of frame ${sp.frame} is zapped but still in use`);
    if (roleLevel(sp.role) < 1 || !roleDirect(sp.role)) fail(`page of frame ${sp.frame} has a role that is not direct`);
    if (sp === root) continue;
    const parent = s.pages[Math.floor(sp.parentLoc / 512)];
    if (parent === null || parent === undefined || !s.active.has(parent)) fail(`page of frame ${sp.frame} (level ${sp.level}) has no parent page in use`);
    if (parent.level !== sp.level + 1) fail(`page of frame ${sp.frame} (level ${sp.level}) is linked from a level-${parent.level} page`);
    const lo = s.pool.lo(sp.parentLoc);
    const hi = s.pool.hi(sp.parentLoc);
    if (!isPresentSpte(lo) || isLeaf(lo, parent.level) || childOf(s, lo, hi) !== sp)
      fail(`page of frame ${sp.frame}: its parent spte ${hexHiLo(hi, lo)} does not point at it`);
    const i = sp.parentLoc - parent.base;
    if (sp.gfn !== parent.gfn + i * SPAN[parent.level]!) fail(`page of frame ${sp.frame}: gfn ${hex(sp.gfn)} is not the start of its parent spte's range`);
  }
  const pages: Iterable<TdpPage> = options.full === true ? s.active : changedPages(s);
  const counts = [0, 0, 0, 0];
  let mmio = 0;
  const want = new SpteHalves();
  for (const sp of pages) {
    const level = sp.level;
    for (let i = 0; i < 512; i++) {
      const loc = sp.base + i;
      const lo = s.pool.lo(loc);
      const hi = s.pool.hi(loc);
      const gfn = sp.gfn + i * SPAN[level]!;
      const where = `spte ${hexHiLo(hi, lo)} (level ${level}, gfn ${hex(gfn)}, frame ${sp.frame} index ${i})`;
      if (isPresentSpte(lo)) {
        if (!isLeaf(lo, level)) {
          const child = childOf(s, lo, hi);
          if (child.parentLoc !== loc) fail(`${where}: its child page records another parent spte`);
          makeNonLeafSpte(want, child.hpa, s.format);
          if (want.lo !== lo || want.hi !== hi) fail(`${where}: a non-leaf spte that is not make_nonleaf_spte's ${hexHiLo(want.hi, want.lo)}`);
          continue;
        }
        if (level > s.maxLeafLevel) fail(`${where}: a level-${level} leaf, larger than the host backing allows (level ${s.maxLeafLevel})`);
        counts[level]!++;
        const slot = slotOfRange(s, gfn, SPAN[level]!);
        if (slot === null) fail(`${where}: a leaf whose range is not inside one memslot`);
        makeLeafSpte(want, gfn, ACC_ALL, !slot!.readonly, !slot!.readonly, 0, s.format, level);
        // The A/D flags are the hardware's (and the dirty log's under PML); W may be clear where dirty logging
        // write-protected the leaf, MMU-writable kept (kvm_tdp_mmu_wrprot_slot), for the fast page fault to restore.
        const hw = s.format.accessedLo | s.format.dirtyLo | (slot!.readonly ? 0 : s.format.writableLo);
        if ((want.lo | hw) !== (lo | hw) || want.hi !== hi) {
          fail(
            `${where}: not the spte of its gfn with the memslot's rights (${slot!.readonly ? 'read-only' : 'writable'}): expected ${hexHiLo(want.hi, want.lo)}`,
          );
        }
      } else if (isMmioSpte(lo, hi)) {
        mmio++;
        if (level !== 1) fail(`${where}: an MMIO spte above 4 KiB`);
        if (s.memory.slotForGfn(gfn) !== null) fail(`${where}: an MMIO spte for a gfn that a memslot holds`);
        if (mmioSpteGfn(lo, hi) !== gfn) fail(`${where}: an MMIO spte for gfn ${hex(mmioSpteGfn(lo, hi))} at the place of another`);
        if (s.mmioValue === null) fail(`${where}: an MMIO spte while MMIO caching is off`);
        if (mmioSpteGeneration(lo, hi) > (s.generation & MMIO_GEN_MASK))
          fail(`${where}: an MMIO spte of a generation newer than the MMU's ${s.generation & MMIO_GEN_MASK}`);
        if ((lo & 7) !== (s.mmioValue!.lo & 7) || (hi & s.mmioValue!.hi) !== s.mmioValue!.hi) fail(`${where}: not the format's MMIO value`);
      } else if (lo !== 0 || hi !== 0) fail(`${where}: neither present, MMIO nor zero`);
    }
  }
  s.changedFrames.clear();
  if (options.full === true) {
    for (let l = 1; l <= 3; l++) if (counts[l] !== s.leaves[l]) fail(`${counts[l]} level-${l} leaves in the tables, ${s.leaves[l]} counted`);
    if (mmio !== s.mmioSptes) fail(`${mmio} MMIO sptes in the tables, ${s.mmioSptes} counted`);
  }
}

function fail(what: string): never {
  throw new TdpMmuError('E_MMU_AUDIT', `TDP MMU audit: ${what}`);
}

function changedPages(s: TdpMmuState): TdpPage[] {
  const out: TdpPage[] = [];
  for (const f of s.changedFrames) {
    const sp = s.pages[f];
    if (sp !== null && sp !== undefined) out.push(sp);
  }
  return out;
}

/** The memslot that holds all of [gfn, gfn + n), or null. */
function slotOfRange(s: TdpMmuState, gfn: number, n: number): Memslot | null {
  const slot = s.memory.slotForGfn(gfn);
  if (slot === null || gfn + n > slot.baseGfn + slot.pages) return null;
  return slot;
}
