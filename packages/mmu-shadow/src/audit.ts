import { PAGE_SIZE, PT_PRESENT, WALK_OK, WalkResult, walk, type PagingContext } from '@vmexit/core';
import { ShadowMmuError } from './errors.js';
import type { ShadowMmu, VcpuShadowState } from './mmu.js';
import type { ShadowPage } from './page.js';
import { SPTES_PER_PAGE } from './pool.js';
import { ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK, describeRole, ROLE_CR0_WP, roleAccess } from './role.js';
import { SPTE_HI_NX, SPTE_HOST_WRITABLE, SPTE_MMU_WRITABLE, SPTE_U, SPTE_W, sptePa } from './spte.js';

/**
 * `--audit`: the checks of KVM's mmu_audit.c (arch/x86/kvm/mmu/mmu_audit.c: audit_mappings,
 * audit_sptes_have_rmaps, audit_write_protection) and more, over the whole MMU. Throws a ShadowMmuError
 * (code E_MMU_AUDIT) naming the spte, the guest pte and the role at the first violation:
 *
 * 1. every present leaf spte reachable from a vCPU's roots maps the frame the guest tables give for its
 *    address, with no more rights than the guest pte (W only when dirty; U; X) and the host mapping;
 * 2. every present leaf spte has a memslot and is in the rmap of its gfn; every rmap entry is such an spte;
 * 3. parent links: each non-leaf spte is in its child's parent_ptes and each parent_ptes entry points back;
 * 4. no spte that maps a write-protected gfn (a shadowed guest page table) is writable;
 * 5. page accounting: pages in use = active + invalid roots, root counts equal the vCPUs' root slots, and
 *    no root in use is freed;
 * 6. non-present sptes are the trap or the notrap value; with the bypass encoding (KVM 2007 audit
 *    additions) no notrap spte sits at a non-leaf level, in a 4-byte-gpte or unsync page, or where the
 *    guest pte is present;
 * 7. unsync pages are indirect level-1 pages (mmu_audit.c "unsync sp at level != 1"), and the unsync
 *    bookkeeping agrees with them; their leaves are not compared with the guest tables (they may be stale
 *    until the guest flushes).
 */
export function auditShadowMmu(mmu: ShadowMmu): void {
  new Auditor(mmu).run();
}

/** An auditor the VM calls after every exit: `(vcpuId) => void`. */
export function createShadowAuditor(mmu: ShadowMmu): () => void {
  return () => auditShadowMmu(mmu);
}

class Auditor {
  private readonly r = new WalkResult();
  constructor(private readonly mmu: ShadowMmu) {}

  private fail(what: string, sp: ShadowPage | null, loc: number, extra = ''): never {
    let where = '';
    if (sp !== null) {
      const i = loc - sp.base;
      const lo = this.mmu.pool.lo(loc);
      const hi = this.mmu.pool.hi(loc);
      where = ` at spte ${i} = ${hex64(lo, hi)} of the shadow page for gfn 0x${sp.gfn.toString(16)} role ${describeRole(sp.role)}`;
    }
    throw new ShadowMmuError('E_MMU_AUDIT', `shadow MMU audit: ${what}${where}${extra}`);
  }

  run(): void {
    const mmu = this.mmu;
    const all: ShadowPage[] = [...mmu.active, ...mmu.invalidRoots];
    if (mmu.usedPages !== all.length) this.fail(`${mmu.usedPages} pages counted in use but ${mmu.active.size} active and ${mmu.invalidRoots.size} invalid roots`, null, 0);
    if (mmu.usedPages > mmu.maxPages) this.fail(`${mmu.usedPages} pages in use over n_max_mmu_pages=${mmu.maxPages}`, null, 0);
    const refs = new Map<ShadowPage, number>();
    for (const st of mmu.states) {
      if (st === undefined) continue;
      for (const sp of [...st.currentRoots(), ...st.prevRoots.map((p) => p.sp)]) {
        if (mmu.pages[sp.frame] !== sp) this.fail(`vCPU ${st.vcpu.id} uses a freed root`, null, 0, ` (gfn 0x${sp.gfn.toString(16)} role ${describeRole(sp.role)})`);
        refs.set(sp, (refs.get(sp) ?? 0) + 1);
      }
    }
    let leaves = 0;
    const unsyncByGfn = new Map<number, number>();
    const bypass = mmu.bypassEncoding;
    for (const sp of all) {
      if (mmu.pages[sp.frame] !== sp) this.fail('a page in use is not in its frame', sp, sp.base);
      if (sp.rootCount !== (refs.get(sp) ?? 0)) this.fail(`root_count ${sp.rootCount} but ${refs.get(sp) ?? 0} vCPU root slots use the page`, sp, sp.base);
      if (!sp.direct && !sp.zapped && !mmu.writeTrack.has(sp.gfn)) this.fail('a shadowed guest page table is not write-tracked', sp, sp.base);
      if (sp.unsync) {
        if (sp.level !== 1 || sp.direct) this.fail(`an unsync page at level ${sp.level}${sp.direct ? ' (direct)' : ''}: only indirect level-1 pages may be unsync`, sp, sp.base);
        if (!mmu.unsyncPages.has(sp)) this.fail('an unsync page missing from the unsync set', sp, sp.base);
        unsyncByGfn.set(sp.gfn, (unsyncByGfn.get(sp.gfn) ?? 0) + 1);
      }
      for (const loc of sp.parentPtes.toArray()) {
        const parent = mmu.pageOfLoc(loc);
        const lo = mmu.pool.lo(loc);
        if (parent === null || parent === undefined || !mmu.isPresent(lo, mmu.pool.hi(loc)) || sptePa(lo, mmu.pool.hi(loc)) !== sp.hpa) {
          this.fail(`parent_ptes holds spte ${loc}, which does not point at the page`, sp, sp.base);
        }
      }
      for (let i = 0; i < SPTES_PER_PAGE; i++) {
        const loc = sp.base + i;
        const lo = mmu.pool.lo(loc);
        const hi = mmu.pool.hi(loc);
        if (!mmu.isPresent(lo, hi)) {
          if (lo === mmu.trapLo && hi === mmu.trapHi) continue;
          if (!mmu.isNotrap(lo, hi)) this.fail('a non-present spte is neither the trap nor the notrap value', sp, loc);
          if (!bypass) continue;
          if (sp.level > 1) this.fail('a notrap spte at a non-leaf level (its faults would bypass the hypervisor)', sp, loc);
          if (!mmu.notrapAllowed(sp)) this.fail(`a notrap spte in a ${sp.unsync ? 'unsync' : sp.direct ? 'direct' : '4-byte-gpte'} page`, sp, loc);
          const ga = mmu.gpteAddress(sp, i);
          if ((mmu.memory.read32(ga) & PT_PRESENT) !== 0) {
            this.fail(`a notrap spte where the guest pte at gpa 0x${ga.toString(16)} is present (${hex64(mmu.memory.read32(ga), mmu.memory.read32(ga + 4))}): the guest's access would fault forever`, sp, loc);
          }
          continue;
        }
        const pa = sptePa(lo, hi);
        if (sp.level > 1) {
          const f = mmu.pool.hpaToFrame(pa);
          const child = f < 0 ? null : mmu.pages[f];
          if (child === null || child === undefined) this.fail('a non-leaf spte points at no shadow page', sp, loc);
          if (child.level !== sp.level - 1) this.fail(`a non-leaf spte points at a level-${child.level} page`, sp, loc);
          if (!child.parentPtes.has(loc)) this.fail("a non-leaf spte is missing from its child's parent_ptes", sp, loc);
          continue;
        }
        leaves++;
        const gfn = Math.floor(pa / PAGE_SIZE);
        const slot = mmu.memory.slotForGfn(gfn);
        if (slot === null) this.fail(`a leaf spte maps gfn 0x${gfn.toString(16)}, outside every memslot`, sp, loc);
        const head = mmu.rmaps.head(gfn, 1, false);
        if (head === null || !head.has(loc)) this.fail(`no rmap for the leaf spte (gfn 0x${gfn.toString(16)})`, sp, loc);
        if ((lo & SPTE_W) !== 0) {
          if (slot.readonly || (lo & SPTE_HOST_WRITABLE) === 0) this.fail('a writable spte maps read-only host memory', sp, loc);
          if ((lo & SPTE_MMU_WRITABLE) === 0) this.fail('W without MMU-writable', sp, loc);
          if (mmu.isWriteProtected(gfn)) this.fail(`a writable spte maps write-protected guest page table gfn 0x${gfn.toString(16)}`, sp, loc);
        }
        const acc = roleAccess(sp.role);
        if ((lo & SPTE_U) !== 0 && (acc & ACC_USER_MASK) === 0) this.fail('U beyond the page role access', sp, loc);
        if ((hi & SPTE_HI_NX) === 0 && (acc & ACC_EXEC_MASK) === 0) this.fail('X beyond the page role access', sp, loc);
        if ((lo & SPTE_W) !== 0 && (acc & ACC_WRITE_MASK) === 0 && (sp.role & ROLE_CR0_WP) !== 0) this.fail('W beyond the page role access', sp, loc);
      }
    }
    if (mmu.unsyncPages.size !== [...unsyncByGfn.values()].reduce((a, b) => a + b, 0)) this.fail(`${mmu.unsyncPages.size} pages in the unsync set but ${[...unsyncByGfn.values()].reduce((a, b) => a + b, 0)} unsync pages in use`, null, 0);
    for (const [gfn, n] of unsyncByGfn) if (mmu.unsyncCount.get(gfn) !== n) this.fail(`unsync count ${mmu.unsyncCount.get(gfn) ?? 0} for gfn 0x${gfn.toString(16)} but ${n} unsync pages`, null, 0);
    if (mmu.unsyncCount.size !== unsyncByGfn.size) this.fail(`unsync counts for ${mmu.unsyncCount.size} gfns but unsync pages for ${unsyncByGfn.size}`, null, 0);
    let rmapEntries = 0;
    for (const e of mmu.rmaps.entries()) {
      for (const loc of e.list.toArray()) {
        rmapEntries++;
        const sp = mmu.pageOfLoc(loc);
        const lo = mmu.pool.lo(loc);
        if (sp === null || sp === undefined || sp.level !== e.level || !mmu.isPresent(lo, mmu.pool.hi(loc))) {
          this.fail(`the level-${e.level} rmap of slot ${e.slot.id} index ${e.index} holds spte ${loc}, which is not a present leaf`, null, 0);
        }
        const gfn = Math.floor(sptePa(lo, mmu.pool.hi(loc)) / PAGE_SIZE);
        if (gfn - e.slot.baseGfn !== e.index) this.fail(`an rmap entry for gfn 0x${(e.slot.baseGfn + e.index).toString(16)} maps gfn 0x${gfn.toString(16)}`, sp, loc);
      }
    }
    if (rmapEntries !== leaves) this.fail(`${rmapEntries} rmap entries for ${leaves} present leaf sptes`, null, 0);
    for (const st of mmu.states) if (st !== undefined) this.auditMappings(st);
  }

  /** audit_mappings: each reachable leaf against the guest's own translation of its address. */
  private auditMappings(st: VcpuShadowState): void {
    const vcpu = st.vcpu;
    if (!vcpu.pagingEnabled) return;
    const g = vcpu.ctx;
    // An inspection walk that reports every present translation: no SMAP or keys (rights are checked here).
    const ctx: PagingContext = { ...g, cr4Smap: false, cr4Pke: false, pdpteLo: g.pdpteLo, pdpteHi: g.pdpteHi };
    if (st.root !== null) {
      const top = st.root.level;
      const span = 2 ** (12 + 9 * top);
      this.walkShadow(st, ctx, st.root, 0, (va) => (va >= span / 2 ? va - span : va));
    } else {
      for (let i = 0; i < 4; i++) {
        const sp = st.paeRoots[i];
        if (sp !== null && sp !== undefined) this.walkShadow(st, ctx, sp, i * 2 ** 30, (va) => va);
      }
    }
  }

  private walkShadow(st: VcpuShadowState, ctx: PagingContext, sp: ShadowPage, vaBase: number, canon: (va: number) => number): void {
    const mmu = this.mmu;
    const shift = 12 + 9 * (sp.level - 1);
    for (let i = 0; i < SPTES_PER_PAGE; i++) {
      const loc = sp.base + i;
      const lo = mmu.pool.lo(loc);
      const hi = mmu.pool.hi(loc);
      if (!mmu.isPresent(lo, hi)) continue;
      const va = vaBase + i * 2 ** shift;
      if (sp.level > 1) {
        this.walkShadow(st, ctx, mmu.pageAt(sptePa(lo, hi)), va, canon);
        continue;
      }
      if (sp.unsync) continue; // may be stale until the guest's next flush of this address
      const cva = canon(va);
      const r = this.r;
      const status = walk(ctx, st.vcpu.memory, cva, 0, 0, r);
      if (status !== WALK_OK) this.fail(`vCPU ${st.vcpu.id}: va 0x${cva.toString(16)} has a present leaf spte but the guest tables do not map it (walk status ${status}, error code ${r.errorCode})`, sp, loc);
      const gpte = ` (guest pte ${hex64(r.entryLo[r.leafLevel]!, r.entryHi[r.leafLevel]!)} at level ${r.leafLevel})`;
      if (Math.floor(r.pa / PAGE_SIZE) !== Math.floor(sptePa(lo, hi) / PAGE_SIZE)) {
        this.fail(`vCPU ${st.vcpu.id}: va 0x${cva.toString(16)} maps gpa 0x${r.pa.toString(16)} in the guest tables but another frame in the shadow`, sp, loc, gpte);
      }
      if ((lo & SPTE_W) !== 0 && !(r.dirty && (r.writable || (!ctx.cr0Wp && (lo & SPTE_U) === 0)))) {
        this.fail(`vCPU ${st.vcpu.id}: va 0x${cva.toString(16)} is writable in the shadow but not writable and dirty in the guest`, sp, loc, gpte);
      }
      if ((lo & SPTE_U) !== 0 && !r.user) this.fail(`vCPU ${st.vcpu.id}: va 0x${cva.toString(16)} is user in the shadow but supervisor in the guest`, sp, loc, gpte);
      if ((hi & SPTE_HI_NX) === 0 && !r.executable) this.fail(`vCPU ${st.vcpu.id}: va 0x${cva.toString(16)} is executable in the shadow but not in the guest`, sp, loc, gpte);
    }
  }
}

function hex64(lo: number, hi: number): string {
  return `0x${(hi >>> 0).toString(16).padStart(8, '0')}${(lo >>> 0).toString(16).padStart(8, '0')}`;
}
