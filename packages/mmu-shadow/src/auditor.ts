import { Buffer } from 'node:buffer';
import { MODE_LEGACY32, PAGE_SIZE, PT_PRESENT, WALK_OK, WalkResult, walk, type GuestMemory, type PagingContext } from '@vmexit/core';
import {
  ACC_EXEC_MASK,
  ACC_USER_MASK,
  ACC_WRITE_MASK,
  describeRole,
  ROLE_4BYTE_GPTE,
  ROLE_CR0_WP,
  roleAccess,
  roleLevel,
  roleQuadrant,
  SPTE_HI_NX,
  SPTE_HOST_WRITABLE,
  SPTE_MMU_WRITABLE,
  SPTE_U,
  SPTE_W,
  sptePa,
  SPTES_PER_PAGE,
  type Rmaps,
  type SpteList,
  type SptePool,
} from '@vmexit/core/mmu';
import { ShadowMmuError } from './errors.js';
import { gfnCountMismatch } from './audit-counts.js';
import type { ShadowPage } from './page.js';
import type { ShadowMmuState, VcpuShadowState } from './state.js';

const EMPTY: readonly number[] = [];

/** What one vCPU's leaves were verified against: a copy of its paging context, and a record per (leaf page, address). */
interface VcpuRecord {
  ctxKeys: string[];
  ctxValues: unknown[];
  leaves: Map<ShadowPage, LeafRecord[]>;
}

/**
 * One leaf page as one vCPU sees it at one address (`vaBase`, before canonicalisation): the guest walks of its
 * 512 addresses read the same entries above the leaf table (`upper`, gpas of 4-byte words), and, when the
 * guest maps them with 4 KiB pages, spte i's gpte at `leaf0 + i * gpteSize`.
 */
interface LeafRecord {
  vaBase: number;
  /** The page was unsync (nothing compared with the guest) when last verified. */
  unsync: boolean;
  hasDeps: boolean;
  upper: number[];
  leaf0: number;
  gpteSize: number;
}

/**
 * The auditor of one MMU: the record of what it verified, and the checks (see `auditShadowMmu` in audit.ts for
 * the list and for how the incremental record works).
 */
export class Auditor {
  private readonly r = new WalkResult();
  private readonly memory: GuestMemory;
  private readonly rmaps: Rmaps;
  private readonly pool: SptePool;
  private readonly trapLo: number;
  private readonly trapHi: number;
  private readonly notrapLo: number;
  private readonly notrapHi: number;
  private first = true;
  private serial = 0;

  // The record, per pool frame: the page verified there, its role and unsync state then, and its sptes then.
  private snapBuf = Buffer.alloc(0);
  private snap = new Uint32Array(0);
  /** A Buffer view of the pool's words (recreated when the pool grows), for native page compares. */
  private poolBuf: Buffer<ArrayBufferLike> = Buffer.alloc(0);
  private poolWords: Uint32Array | null = null;
  /** A Buffer over guest memory's backing buffer (re-made when the buffer grows, see `ram`). */
  private ramBuf: Buffer<ArrayBufferLike>;
  private framePage: (ShadowPage | null)[] = [];
  private frameRole = new Int32Array(0);
  private frameUnsync = new Uint8Array(0);
  /** Present leaf / present non-leaf sptes of the frame as verified. */
  private frameLeaves = new Int32Array(0);
  private frameLinks = new Int32Array(0);
  /** Audit serial at which the frame held a page in use (this run's stamp = live). */
  private frameLive = new Int32Array(0);
  private liveFrames: number[] = [];
  /** Stamps over spte locations, for "each entry once" checks. */
  private locStamp = new Int32Array(0);
  private stamp = 0;

  /** The rmaps as verified: each head's entries, and their total. */
  private readonly rmapSeen = new Map<SpteList, number[]>();
  private rmapTotal = 0;
  /** The gfns that were write-protected. */
  private protectedGfns = new Set<number>();
  /** Guest pages as verified (4 KiB copies), by gfn. */
  private readonly guestSnap = new Map<number, GuestCopy>();
  /** Per frame of a non-leaf page: the indices of its present sptes (null: to be found again). */
  private links: (number[] | null)[] = [];
  private readonly vcpus = new Map<VcpuShadowState, VcpuRecord>();

  // Per run.
  private all: ShadowPage[] = [];
  private newFrames = new Set<number>();
  private changedIdx = new Map<number, number[]>();
  private changedWords = new Set<number>();
  private changedByGfn = new Map<number, number[]>();
  private usedGfns = new Set<number>();

  constructor(
    private readonly mmu: ShadowMmuState,
    private readonly keep: boolean,
  ) {
    this.memory = mmu.memory;
    this.rmaps = mmu.rmaps;
    this.pool = mmu.pool;
    this.ramBuf = Buffer.from(this.memory.buffer, 0, this.memory.buffer.byteLength);
    this.trapLo = mmu.trapLo;
    this.trapHi = mmu.trapHi;
    this.notrapLo = mmu.notrapLo;
    this.notrapHi = mmu.notrapHi;
  }

  /** The record still describes this MMU's structures (the same memory, rmaps, pool and non-present encodings). */
  sameMachine(): boolean {
    const m = this.mmu;
    return (
      m.memory === this.memory &&
      m.rmaps === this.rmaps &&
      m.pool === this.pool &&
      m.trapLo === this.trapLo &&
      m.trapHi === this.trapHi &&
      m.notrapLo === this.notrapLo &&
      m.notrapHi === this.notrapHi
    );
  }

  /**
   * Throws the report: what is wrong, and for a violation at spte `loc` of page `sp`, the spte, the page's role
   * and the guest pte behind the spte (`gpte` when the caller walked the guest tables, else found here).
   */
  private fail(what: string, sp: ShadowPage | null, loc: number, extra = '', gpte: string | null = null): never {
    let where = '';
    if (sp !== null) {
      const i = loc - sp.base;
      const lo = this.pool.lo(loc);
      const hi = this.pool.hi(loc);
      where = ` at spte ${i} = ${hex64(lo, hi)} of the shadow page for gfn 0x${sp.gfn.toString(16)} role ${describeRole(sp.role)}${gpte ?? this.guestPteOf(sp, i)}`;
    }
    throw new ShadowMmuError('E_MMU_AUDIT', `shadow MMU audit: ${what}${where}${extra}`);
  }

  /**
   * The guest pte behind spte `i` of `sp`, for a report: an indirect page's gpte is at a fixed gpa of the guest
   * table it shadows (KVM FNAME(get_level1_sp_gpa), with the quadrant of 4-byte gptes: a level-1 page is half
   * a guest PT, spte i is gpte 512q + i; a level-2 page is a quarter of a guest PD, spte i is PDE 256q + i/2).
   * A direct page has no guest table behind it: its address is found up the parent_ptes to a vCPU's root,
   * and the guest walk of that address gives the large-page entry it shadows.
   */
  private guestPteOf(sp: ShadowPage, i: number): string {
    const m = this.memory;
    if (!sp.direct) {
      const four = (sp.role & ROLE_4BYTE_GPTE) !== 0;
      const q = roleQuadrant(sp.role);
      const a = !four ? sp.gfn * PAGE_SIZE + i * 8 : sp.gfn * PAGE_SIZE + (sp.level === 1 ? (q << 9) + i : (q << 8) + (i >>> 1)) * 4;
      if (m.readOffset(a) < 0) return ` (guest pte at gpa 0x${a.toString(16)}, outside every memslot)`;
      return ` (guest pte ${hex64(m.read32(a), four ? 0 : m.read32(a + 4))} at level ${sp.level}, gpa 0x${a.toString(16)})`;
    }
    // Up the parent_ptes (the first parent of each page) to a page with none: a root.
    let va = i * 2 ** (12 + 9 * (sp.level - 1));
    let p = sp;
    for (let guard = 0; p.parentPtes.size > 0 && guard < 5; guard++) {
      const ploc = p.parentPtes.toArray()[0]!;
      const parent = this.mmu.pageOfLoc(ploc);
      if (parent === null || parent === undefined) break;
      va += (ploc - parent.base) * 2 ** (12 + 9 * (parent.level - 1));
      p = parent;
    }
    for (const st of this.mmu.states) {
      if (st === undefined) continue;
      let addr: number;
      if (st.root === p) {
        const span = 2 ** (12 + 9 * p.level);
        addr = va >= span / 2 ? va - span : va;
      } else {
        const k = st.paeRoots.indexOf(p);
        if (k < 0) continue;
        addr = k * 2 ** 30 + va;
      }
      const g = st.vcpu.ctx;
      const ctx: PagingContext = { ...g, cr4Smap: false, cr4Pke: false, pdpteLo: g.pdpteLo, pdpteHi: g.pdpteHi };
      const r = this.r;
      const status = walk(ctx, st.vcpu.memory, addr, 0, 0, r);
      if (status !== WALK_OK)
        return ` (no guest pte: vCPU ${st.vcpu.id}'s guest walk of va 0x${addr.toString(16)} fails, status ${status}, error code ${r.errorCode})`;
      const l = r.leafLevel;
      return ` (guest pte ${hex64(r.entryLo[l]!, r.entryHi[l]!)} at level ${l}, gpa 0x${r.entryPa[l]!.toString(16)}, by vCPU ${st.vcpu.id}'s guest walk of va 0x${addr.toString(16)})`;
    }
    return ' (guest pte unknown: the direct page is reachable from no current root)';
  }

  /** The page in use that holds spte `loc`, or null. */
  private livePageOf(loc: number): ShadowPage | null {
    const sp = this.mmu.pageOfLoc(loc);
    return sp === null || sp === undefined || this.frameLive[sp.frame] !== this.serial ? null : sp;
  }

  run(): void {
    const mmu = this.mmu;
    this.serial++;
    this.ensureCapacity();
    this.all = [...mmu.active, ...mmu.invalidRoots];
    this.newFrames = new Set();
    this.changedIdx = new Map();
    this.changedWords = new Set();
    this.changedByGfn = new Map();
    this.usedGfns = new Set();
    // First (every check below reads the maps): isWriteProtected's one-gfn memo (state.ts) says what the maps say.
    const memo = mmu.trackMemoDisagreement();
    if (memo >= 0) this.fail(`the write-track memo of gfn 0x${memo.toString(16)} disagrees with the write-track maps`, null, -1);
    this.auditPages();
    this.auditSptes();
    this.auditGuestPages();
    this.auditRmaps();
    this.auditWriteProtection();
    for (const st of mmu.states) if (st !== undefined) this.auditMappings(st);
    for (const st of this.vcpus.keys()) if (mmu.states[st.vcpu.id] !== st) this.vcpus.delete(st);
    for (const gfn of this.guestSnap.keys()) if (!this.usedGfns.has(gfn)) this.guestSnap.delete(gfn);
    this.first = false;
  }

  private ensureCapacity(): void {
    const cap = this.pool.frames;
    if (this.frameRole.length >= cap) return;
    const grow = <T extends Int32Array | Uint8Array | Uint32Array>(old: T, n: number, make: (n: number) => T): T => {
      const a = make(n);
      a.set(old);
      return a;
    };
    const snapBuf = Buffer.alloc(cap * SPTES_PER_PAGE * 8);
    snapBuf.set(this.snapBuf);
    this.snapBuf = snapBuf;
    this.snap = new Uint32Array(snapBuf.buffer, snapBuf.byteOffset, cap * SPTES_PER_PAGE * 2);
    this.frameRole = grow(this.frameRole, cap, (n) => new Int32Array(n));
    this.frameUnsync = grow(this.frameUnsync, cap, (n) => new Uint8Array(n));
    this.frameLeaves = grow(this.frameLeaves, cap, (n) => new Int32Array(n));
    this.frameLinks = grow(this.frameLinks, cap, (n) => new Int32Array(n));
    this.frameLive = grow(this.frameLive, cap, (n) => new Int32Array(n));
    this.locStamp = grow(this.locStamp, cap * SPTES_PER_PAGE, (n) => new Int32Array(n));
    while (this.framePage.length < cap) {
      this.framePage.push(null);
      this.links.push(null);
    }
  }

  private nextStamp(): number {
    if (this.stamp === 0x7fffffff) {
      this.locStamp.fill(0);
      this.stamp = 0;
    }
    return ++this.stamp;
  }

  /** Accounting, roots, the per-page rules, parent_ptes and the unsync bookkeeping: O(pages), every time. */
  private auditPages(): void {
    const mmu = this.mmu;
    const all = this.all;
    if (mmu.usedPages !== all.length)
      this.fail(`${mmu.usedPages} pages counted in use but ${mmu.active.size} active and ${mmu.invalidRoots.size} invalid roots`, null, 0);
    if (mmu.usedPages > mmu.maxPages) this.fail(`${mmu.usedPages} pages in use over n_max_mmu_pages=${mmu.maxPages}`, null, 0);
    const refs = new Map<ShadowPage, number>();
    for (const st of mmu.states) {
      if (st === undefined) continue;
      for (const sp of [...st.currentRoots(), ...st.prevRoots.map((p) => p.sp)]) {
        if (mmu.pages[sp.frame] !== sp)
          this.fail(`vCPU ${st.vcpu.id} uses a freed root`, null, 0, ` (gfn 0x${sp.gfn.toString(16)} role ${describeRole(sp.role)})`);
        refs.set(sp, (refs.get(sp) ?? 0) + 1);
      }
    }
    let unsync = 0;
    for (const sp of all) {
      if (mmu.pages[sp.frame] !== sp) this.fail('a page in use is not in its frame', sp, sp.base);
      this.frameLive[sp.frame] = this.serial;
      if (sp.rootCount !== (refs.get(sp) ?? 0)) this.fail(`root_count ${sp.rootCount} but ${refs.get(sp) ?? 0} vCPU root slots use the page`, sp, sp.base);
      if (!sp.direct) {
        if (!sp.zapped && !mmu.writeTrack.has(sp.gfn)) this.fail('a shadowed guest page table is not write-tracked', sp, sp.base);
        if (mmu.notrapAllowed(sp)) this.track(sp.gfn); // its notrap sptes promise non-present gptes
      }
      if (sp.unsync) {
        if (sp.level !== 1 || sp.direct)
          this.fail(`an unsync page at level ${sp.level}${sp.direct ? ' (direct)' : ''}: only indirect level-1 pages may be unsync`, sp, sp.base);
        if (!mmu.unsyncPages.has(sp)) this.fail('an unsync page missing from the unsync set', sp, sp.base);
        unsync++;
      }
    }
    if (mmu.unsyncPages.size !== unsync) this.fail(`${mmu.unsyncPages.size} pages in the unsync set but ${unsync} unsync pages in use`, null, 0);
    // The counts per gfn: unsync pages, and the write-track count (KVM's gfn_write_track: indirect pages above level 1).
    const counts =
      gfnCountMismatch(mmu.unsyncCount, all, (sp) => sp.unsync, 'unsync count', 'unsync pages') ??
      gfnCountMismatch(mmu.upperTrack, all, (sp) => !sp.direct && !sp.zapped && sp.level > 1, 'write-track count', 'indirect pages above level 1');
    if (counts !== null) this.fail(counts, null, 0);
    // parent_ptes: every entry is a present spte, once, in a page in use one level up, that points here. With as many
    // entries as present non-leaf sptes (checked after the sptes), every non-leaf spte is in its child's parent_ptes.
    const pool = this.pool;
    const s = this.nextStamp();
    for (const sp of all) {
      for (const loc of sp.parentPtes.toArray()) {
        const parent = mmu.pageOfLoc(loc);
        const lo = pool.lo(loc);
        const hi = pool.hi(loc);
        if (parent === null || parent === undefined || this.frameLive[parent.frame] !== this.serial || !mmu.isPresent(lo, hi) || sptePa(lo, hi) !== sp.hpa) {
          this.fail(`parent_ptes holds spte ${loc}, which does not point at the page`, sp, sp.base);
        }
        if (parent.level !== sp.level + 1) this.fail(`parent_ptes holds spte ${loc} of a level-${parent.level} page`, sp, sp.base);
        if (this.locStamp[loc] === s) this.fail(`parent_ptes holds spte ${loc} twice`, sp, sp.base);
        this.locStamp[loc] = s;
      }
    }
  }

  /**
   * The per-spte rules, for every spte that differs from the record (or all of a page new in its frame, or
   * whose role or unsync state changed), and the rmaps of leaves that disappeared.
   */
  private auditSptes(): void {
    const mmu = this.mmu;
    const w = this.pool.words;
    if (this.poolWords !== w) {
      this.poolWords = w;
      this.poolBuf = Buffer.from(w.buffer, w.byteOffset, w.byteLength);
    }
    const snap = this.snap;
    const lost: number[] = []; // pairs (loc, gfn): leaves of the record that are gone or moved
    let links = 0;
    let leaves = 0;
    for (const sp of this.all) {
      const f = sp.frame;
      const old = this.framePage[f]!;
      const base = f * SPTES_PER_PAGE * 2;
      if (old !== sp || this.frameRole[f] !== sp.role || this.frameUnsync[f] !== (sp.unsync ? 1 : 0)) {
        if (old !== null && roleLevel(this.frameRole[f]!) === 1) {
          for (let i = 0; i < SPTES_PER_PAGE; i++) {
            const lo = snap[base + i * 2]!;
            const hi = snap[base + i * 2 + 1]!;
            if (mmu.isPresent(lo, hi)) lost.push(sp.base + i, Math.floor(sptePa(lo, hi) / PAGE_SIZE));
          }
        }
        this.newFrames.add(f);
        this.links[f] = null;
        let nl = 0;
        let nn = 0;
        for (let i = 0; i < SPTES_PER_PAGE; i++) {
          const k = this.checkSpte(sp, i);
          if (k === KIND_LEAF) nl++;
          else if (k === KIND_LINK) nn++;
        }
        snap.set(w.subarray(base, base + SPTES_PER_PAGE * 2), base);
        this.framePage[f] = sp;
        this.frameRole[f] = sp.role;
        this.frameUnsync[f] = sp.unsync ? 1 : 0;
        this.frameLeaves[f] = nl;
        this.frameLinks[f] = nn;
      } else if (this.poolBuf.compare(this.snapBuf, base * 4, (base + SPTES_PER_PAGE * 2) * 4, base * 4, (base + SPTES_PER_PAGE * 2) * 4) !== 0) {
        let changed: number[] | null = null;
        if (sp.level > 1) this.links[f] = null;
        for (let j = base, end = base + SPTES_PER_PAGE * 2; j < end; j += 2) {
          if (w[j] === snap[j] && w[j + 1] === snap[j + 1]) continue;
          const i = (j - base) >>> 1;
          const oldLo = snap[j]!;
          const oldHi = snap[j + 1]!;
          const k = this.checkSpte(sp, i);
          const oldPresent = mmu.isPresent(oldLo, oldHi);
          if (sp.level === 1) {
            if (oldPresent) {
              this.frameLeaves[f]--;
              lost.push(sp.base + i, Math.floor(sptePa(oldLo, oldHi) / PAGE_SIZE));
            }
            if (k === KIND_LEAF) this.frameLeaves[f]++;
          } else {
            if (oldPresent) this.frameLinks[f]--;
            if (k === KIND_LINK) this.frameLinks[f]++;
          }
          snap[j] = w[j]!;
          snap[j + 1] = w[j + 1]!;
          (changed ??= []).push(i);
        }
        if (changed !== null) this.changedIdx.set(f, changed);
      }
      links += this.frameLinks[f]!;
      leaves += this.frameLeaves[f]!;
    }
    // Frames that held a page at the last audit and hold none now: their leaves are gone.
    const live: number[] = [];
    for (const f of this.liveFrames) {
      if (this.frameLive[f] === this.serial) continue;
      const old = this.framePage[f]!;
      if (roleLevel(this.frameRole[f]!) === 1) {
        const base = f * SPTES_PER_PAGE * 2;
        for (let i = 0; i < SPTES_PER_PAGE; i++) {
          const lo = snap[base + i * 2]!;
          const hi = snap[base + i * 2 + 1]!;
          if (mmu.isPresent(lo, hi)) lost.push(old.base + i, Math.floor(sptePa(lo, hi) / PAGE_SIZE));
        }
      }
      this.framePage[f] = null;
    }
    for (const sp of this.all) live.push(sp.frame);
    this.liveFrames = live;
    // A leaf of the record that is gone may stay in its old rmap only if it is again a present leaf of that gfn.
    for (let k = 0; k < lost.length; k += 2) {
      const loc = lost[k]!;
      const gfn = lost[k + 1]!;
      const head = this.rmaps.head(gfn, 1, false);
      if (head === null || !head.has(loc)) continue;
      if (!this.isLeafOf(loc, gfn))
        this.fail(`the level-1 rmap of gfn 0x${gfn.toString(16)} holds spte ${loc}, which is not a present leaf mapping it`, this.livePageOf(loc), loc);
    }
    let parents = 0;
    for (const sp of this.all) parents += sp.parentPtes.size;
    if (parents !== links) this.fail(`${parents} parent_ptes entries for ${links} present non-leaf sptes`, null, 0);
    this.leafCount = leaves;
  }
  private leafCount = 0;

  /** Whether spte `loc` is now a present leaf, in a page in use, that maps `gfn`. */
  private isLeafOf(loc: number, gfn: number): boolean {
    const sp = this.mmu.pageOfLoc(loc);
    if (sp === null || sp === undefined || this.frameLive[sp.frame] !== this.serial || sp.level !== 1) return false;
    const lo = this.pool.lo(loc);
    const hi = this.pool.hi(loc);
    return this.mmu.isPresent(lo, hi) && Math.floor(sptePa(lo, hi) / PAGE_SIZE) === gfn;
  }

  /** The rules of one spte on its own (KVM audit_sptes_have_rmaps, audit_spte_after_sync and the bypass rules). */
  private checkSpte(sp: ShadowPage, i: number): number {
    const mmu = this.mmu;
    const loc = sp.base + i;
    const lo = this.pool.lo(loc);
    const hi = this.pool.hi(loc);
    if (!mmu.isPresent(lo, hi)) {
      if (lo === this.trapLo && hi === this.trapHi) return KIND_NONE;
      if (!mmu.isNotrap(lo, hi)) this.fail('a non-present spte is neither the trap nor the notrap value', sp, loc);
      if (!mmu.bypassEncoding) return KIND_NONE;
      if (sp.level > 1) this.fail('a notrap spte at a non-leaf level (its faults would bypass the hypervisor)', sp, loc);
      if (!mmu.notrapAllowed(sp)) this.fail(`a notrap spte in a ${sp.unsync ? 'unsync' : sp.direct ? 'direct' : '4-byte-gpte or efer_nx=0'} page`, sp, loc);
      this.checkNotrapGpte(sp, i);
      return KIND_NONE;
    }
    const pa = sptePa(lo, hi);
    if (sp.level > 1) {
      const f = this.pool.hpaToFrame(pa);
      const child = f < 0 ? null : mmu.pages[f];
      if (child === null || child === undefined) this.fail('a non-leaf spte points at no shadow page', sp, loc);
      if (child.level !== sp.level - 1) this.fail(`a non-leaf spte points at a level-${child.level} page`, sp, loc);
      if (!child.parentPtes.has(loc)) this.fail("a non-leaf spte is missing from its child's parent_ptes", sp, loc);
      return KIND_LINK;
    }
    const gfn = Math.floor(pa / PAGE_SIZE);
    const slot = this.memory.slotForGfn(gfn);
    if (slot === null) this.fail(`a leaf spte maps gfn 0x${gfn.toString(16)}, outside every memslot`, sp, loc);
    const head = this.rmaps.head(gfn, 1, false);
    if (head === null || !head.has(loc)) this.fail(`no rmap for the leaf spte (gfn 0x${gfn.toString(16)})`, sp, loc);
    if ((lo & SPTE_W) !== 0) {
      if (slot.readonly || (lo & SPTE_HOST_WRITABLE) === 0) this.fail('a writable spte maps read-only host memory', sp, loc);
      if ((lo & SPTE_MMU_WRITABLE) === 0) this.fail('W without MMU-writable', sp, loc);
      if (mmu.writeProtectedInMaps(gfn)) this.fail(`a writable spte maps write-protected guest page table gfn 0x${gfn.toString(16)}`, sp, loc);
    }
    const acc = roleAccess(sp.role);
    if ((lo & SPTE_U) !== 0 && (acc & ACC_USER_MASK) === 0) this.fail('U beyond the page role access', sp, loc);
    if ((hi & SPTE_HI_NX) === 0 && (acc & ACC_EXEC_MASK) === 0) this.fail('X beyond the page role access', sp, loc);
    if ((lo & SPTE_W) !== 0 && (acc & ACC_WRITE_MASK) === 0 && (sp.role & ROLE_CR0_WP) !== 0) this.fail('W beyond the page role access', sp, loc);
    return KIND_LEAF;
  }

  /** A notrap spte promises that its gpte is not present (else the guest's access would fault forever). */
  private checkNotrapGpte(sp: ShadowPage, i: number): void {
    const ga = this.mmu.gpteAddress(sp, i);
    const m = this.memory;
    if ((m.read32(ga) & PT_PRESENT) !== 0) {
      this.fail(
        `a notrap spte where the guest pte at gpa 0x${ga.toString(16)} is present (${hex64(m.read32(ga), m.read32(ga + 4))}): the guest's access would fault forever`,
        sp,
        sp.base + i,
      );
    }
  }

  /** The Buffer over guest memory's backing buffer as it is now. */
  private ram(): Buffer<ArrayBufferLike> {
    if (this.ramBuf.buffer !== this.memory.buffer) this.ramBuf = Buffer.from(this.memory.buffer, 0, this.memory.buffer.byteLength);
    return this.ramBuf;
  }

  /** Keeps a copy of guest page `gfn` (from now on, until an audit no longer needs it). */
  private track(gfn: number): void {
    this.usedGfns.add(gfn);
    if (this.guestSnap.has(gfn)) return;
    const buf = Buffer.alloc(PAGE_SIZE);
    // readOffset: the audit backs no page (one never written is read through the zero page).
    const off = this.memory.readOffset(gfn * PAGE_SIZE);
    if (off >= 0) this.ram().copy(buf, 0, off, off + PAGE_SIZE);
    this.guestSnap.set(gfn, { off, buf, words: new Uint32Array(buf.buffer, buf.byteOffset, PAGE_SIZE / 4) });
  }

  /**
   * Guest memory: which words of the guest pages in the record changed (the MMU need not have seen the
   * write). Then the notrap sptes over changed gptes of pages that were not re-checked in full above.
   */
  private auditGuestPages(): void {
    const ram = this.ram();
    const u32 = this.memory.u32;
    for (const [gfn, { off: at, buf, words: copy }] of this.guestSnap) {
      if (at < 0) continue; // no memslot: reads 0, never changes
      // Where the page is now (it may have been backed since the copy was taken).
      const off = this.memory.readOffset(gfn * PAGE_SIZE);
      if (ram.compare(buf, 0, PAGE_SIZE, off, off + PAGE_SIZE) === 0) continue;
      const w0 = off >>> 2;
      let words: number[] | null = null;
      for (let k = 0; k < PAGE_SIZE / 4; k++) {
        const v = u32[w0 + k]!;
        if (v === copy[k]) continue;
        copy[k] = v;
        (words ??= []).push(k);
        this.changedWords.add(gfn * PAGE_SIZE + k * 4);
      }
      if (words !== null) this.changedByGfn.set(gfn, words);
    }
    if (this.changedByGfn.size === 0 || !this.mmu.bypassEncoding) return;
    const pool = this.pool;
    for (const sp of this.all) {
      if (this.newFrames.has(sp.frame) || sp.direct || sp.level !== 1 || (sp.role & ROLE_4BYTE_GPTE) !== 0) continue;
      const words = this.changedByGfn.get(sp.gfn);
      if (words === undefined) continue;
      for (const k of words) {
        const i = k >>> 1; // 8-byte gptes: spte i's gpte is words 2i, 2i+1
        const loc = sp.base + i;
        if (this.mmu.isNotrap(pool.lo(loc), pool.hi(loc))) this.checkNotrapGpte(sp, i);
      }
    }
  }

  /**
   * The rmaps: every head changed since the last audit (all heads the first time) holds present leaves of
   * its gfn and level, each once, and every entry it lost is no longer such a leaf; and the entries add up to
   * the present leaves.
   */
  private auditRmaps(): void {
    const log = this.rmaps.changed;
    if (this.first) {
      for (const e of this.rmaps.entries()) this.auditRmapHead(e.list, `the level-${e.level} rmap of slot ${e.slot.id} index ${e.index}`);
      if (this.keep) this.drainLog(log, false);
    } else {
      this.drainLog(log, true);
    }
    if (this.rmapTotal !== this.leafCount) this.fail(`${this.rmapTotal} rmap entries for ${this.leafCount} present leaf sptes`, null, 0);
  }

  private drainLog(log: SpteList[], audit: boolean): void {
    for (const list of log) {
      list.queued = false;
      if (audit) this.auditRmapHead(list, 'an rmap');
    }
    log.length = 0;
  }

  private auditRmapHead(list: SpteList, name: string): void {
    const mmu = this.mmu;
    const s = this.nextStamp();
    const cur = list.toArray();
    for (const loc of cur) {
      const sp = mmu.pageOfLoc(loc);
      const lo = this.pool.lo(loc);
      const hi = this.pool.hi(loc);
      if (sp === null || sp === undefined || this.frameLive[sp.frame] !== this.serial || !mmu.isPresent(lo, hi) || sp.level > 1) {
        this.fail(`${name} holds spte ${loc}, which is not a present leaf`, this.livePageOf(loc), loc);
      }
      const gfn = Math.floor(sptePa(lo, hi) / PAGE_SIZE);
      if (this.rmaps.head(gfn, sp.level, false) !== list) this.fail(`${name} holds an spte that maps gfn 0x${gfn.toString(16)}, another gfn's`, sp, loc);
      if (this.locStamp[loc] === s) this.fail(`${name} holds spte ${loc} twice`, sp, loc);
      this.locStamp[loc] = s;
    }
    const old = this.rmapSeen.get(list) ?? EMPTY;
    for (const loc of old) {
      if (this.locStamp[loc] === s) continue;
      const sp = this.mmu.pageOfLoc(loc);
      if (sp === null || sp === undefined || this.frameLive[sp.frame] !== this.serial || sp.level !== 1) continue;
      const lo = this.pool.lo(loc);
      const hi = this.pool.hi(loc);
      if (mmu.isPresent(lo, hi) && this.rmaps.head(Math.floor(sptePa(lo, hi) / PAGE_SIZE), 1, false) === list) {
        this.fail(`no rmap for the leaf spte (gfn 0x${Math.floor(sptePa(lo, hi) / PAGE_SIZE).toString(16)})`, sp, loc);
      }
    }
    this.rmapTotal += cur.length - old.length;
    if (cur.length > 0) this.rmapSeen.set(list, cur);
    else this.rmapSeen.delete(list);
  }

  /** KVM audit_write_protection: a gfn that became write-protected since the last audit has no writable spte. */
  private auditWriteProtection(): void {
    const mmu = this.mmu;
    const now = new Set<number>();
    for (const gfn of mmu.writeTrack.keys()) {
      if (!mmu.writeProtectedInMaps(gfn)) continue;
      now.add(gfn);
      if (this.protectedGfns.has(gfn)) continue; // its sptes were checked then; a changed one was checked above
      const head = this.rmaps.head(gfn, 1, false);
      if (head === null) continue;
      for (const loc of head.toArray()) {
        if ((this.pool.lo(loc) & SPTE_W) !== 0)
          this.fail(`a writable spte maps write-protected guest page table gfn 0x${gfn.toString(16)}`, mmu.pageOfLoc(loc) ?? null, loc);
      }
    }
    this.protectedGfns = now;
  }

  /**
   * audit_mappings: each reachable leaf against the guest's own translation of its address, for the leaves
   * whose spte, guest ptes or paging context changed since they were last compared.
   */
  private auditMappings(st: VcpuShadowState): void {
    const vcpu = st.vcpu;
    if (!vcpu.pagingEnabled) {
      this.vcpus.delete(st);
      return;
    }
    const g = vcpu.ctx;
    let rec = this.vcpus.get(st);
    if (rec === undefined || !sameCtx(g, rec)) {
      const ctxKeys = Object.keys(g);
      rec = { ctxKeys, ctxValues: ctxKeys.map((k) => copyValue((g as unknown as Record<string, unknown>)[k])), leaves: new Map() };
      this.vcpus.set(st, rec);
    }
    // An inspection walk that reports every present translation: no SMAP or keys (rights are checked here).
    const ctx: PagingContext = { ...g, cr4Smap: false, cr4Pke: false, pdpteLo: g.pdpteLo, pdpteHi: g.pdpteHi };
    const seen = new Map<ShadowPage, LeafRecord[]>();
    if (st.root !== null) {
      const span = 2 ** (12 + 9 * st.root.level);
      this.walkShadow(st, ctx, rec, seen, st.root, 0, span);
    } else {
      for (let i = 0; i < 4; i++) {
        const sp = st.paeRoots[i];
        if (sp !== null && sp !== undefined) this.walkShadow(st, ctx, rec, seen, sp, i * 2 ** 30, 0);
      }
    }
    rec.leaves = seen;
  }

  /** `span` > 0: addresses at or above span/2 are the upper half (signed-canonical, 4/5-level roots). */
  private walkShadow(
    st: VcpuShadowState,
    ctx: PagingContext,
    rec: VcpuRecord,
    seen: Map<ShadowPage, LeafRecord[]>,
    sp: ShadowPage,
    vaBase: number,
    span: number,
  ): void {
    const pool = this.pool;
    const mmu = this.mmu;
    if (sp.level > 1) {
      const shift = 2 ** (12 + 9 * (sp.level - 1));
      let links = this.links[sp.frame];
      if (links === null || links === undefined) {
        links = [];
        for (let i = 0; i < SPTES_PER_PAGE; i++) if (mmu.isPresent(pool.lo(sp.base + i), pool.hi(sp.base + i))) links.push(i);
        this.links[sp.frame] = links;
      }
      for (const i of links) {
        const loc = sp.base + i;
        this.walkShadow(st, ctx, rec, seen, mmu.pageAt(sptePa(pool.lo(loc), pool.hi(loc))), vaBase + i * shift, span);
      }
      return;
    }
    let list = seen.get(sp);
    if (list !== undefined && list.some((l) => l.vaBase === vaBase)) return; // reached twice at one address
    const prev = rec.leaves.get(sp)?.find((l) => l.vaBase === vaBase);
    const lr: LeafRecord = prev ?? { vaBase, unsync: sp.unsync, hasDeps: false, upper: [], leaf0: -1, gpteSize: ctx.mode === MODE_LEGACY32 ? 4 : 8 };
    if (list === undefined) seen.set(sp, (list = []));
    list.push(lr);
    if (sp.unsync) {
      // May be stale until the guest's next flush of these addresses: nothing to compare, nothing to keep.
      lr.unsync = true;
      lr.hasDeps = false;
      return;
    }
    let full = prev === undefined || lr.unsync || this.newFrames.has(sp.frame);
    if (!full && lr.hasDeps) for (const a of lr.upper) if (this.changedWords.has(a)) full = true;
    lr.unsync = false;
    if (full) {
      lr.hasDeps = false;
      lr.upper = [];
      lr.leaf0 = -1;
      for (let i = 0; i < SPTES_PER_PAGE; i++) this.compareLeaf(st, ctx, sp, i, vaBase, span, lr);
      return;
    }
    if (lr.hasDeps) {
      for (const a of lr.upper) this.track(Math.floor(a / PAGE_SIZE));
      if (lr.leaf0 >= 0) {
        const gfn = Math.floor(lr.leaf0 / PAGE_SIZE);
        this.track(gfn);
        const words = this.changedByGfn.get(gfn);
        if (words !== undefined) {
          for (const k of words) {
            const i = Math.floor((gfn * PAGE_SIZE + k * 4 - lr.leaf0) / lr.gpteSize);
            if (i >= 0 && i < SPTES_PER_PAGE) this.compareLeaf(st, ctx, sp, i, vaBase, span, lr);
          }
        }
      }
    }
    const changed = this.changedIdx.get(sp.frame);
    if (changed !== undefined) for (const i of changed) this.compareLeaf(st, ctx, sp, i, vaBase, span, lr);
  }

  /** Leaf spte `i` of `sp` (at `vaBase`) against the guest walk of its address; records what the walk read. */
  private compareLeaf(st: VcpuShadowState, ctx: PagingContext, sp: ShadowPage, i: number, vaBase: number, span: number, lr: LeafRecord): void {
    const loc = sp.base + i;
    const lo = this.pool.lo(loc);
    const hi = this.pool.hi(loc);
    if (!this.mmu.isPresent(lo, hi)) return;
    const va = vaBase + i * PAGE_SIZE;
    const cva = span > 0 && va >= span / 2 ? va - span : va;
    const r = this.r;
    const status = walk(ctx, st.vcpu.memory, cva, 0, 0, r);
    if (status !== WALK_OK)
      this.fail(
        `vCPU ${st.vcpu.id}: va 0x${cva.toString(16)} has a present leaf spte but the guest tables do not map it (walk status ${status}, error code ${r.errorCode})`,
        sp,
        loc,
      );
    if (!lr.hasDeps) {
      // Every address of the page reads the same entries above its leaf table (they depend only on the
      // address bits above the page's 2 MiB span), and consecutive gptes of one leaf table.
      lr.hasDeps = true;
      const bottom = Math.max(r.leafLevel, 2);
      for (let l = r.topLevel; l >= bottom; l--) {
        const a = r.entryPa[l]!;
        lr.upper.push(a);
        if (lr.gpteSize === 8) lr.upper.push(a + 4);
        this.track(Math.floor(a / PAGE_SIZE));
      }
      if (r.leafLevel === 1) {
        lr.leaf0 = r.entryPa[1]! - i * lr.gpteSize;
        this.track(Math.floor(lr.leaf0 / PAGE_SIZE));
      }
    }
    const gpte = (): string =>
      ` (guest pte ${hex64(r.entryLo[r.leafLevel]!, r.entryHi[r.leafLevel]!)} at level ${r.leafLevel}, gpa 0x${r.entryPa[r.leafLevel]!.toString(16)})`;
    if (Math.floor(r.pa / PAGE_SIZE) !== Math.floor(sptePa(lo, hi) / PAGE_SIZE)) {
      this.fail(
        `vCPU ${st.vcpu.id}: va 0x${cva.toString(16)} maps gpa 0x${r.pa.toString(16)} in the guest tables but another frame in the shadow`,
        sp,
        loc,
        '',
        gpte(),
      );
    }
    // W needs D, but a gpte in ROM never gets D (KVM keeps W for a write fault there: pte_writable); asked only of a writable spte.
    if ((lo & SPTE_W) !== 0 && !((r.dirty || st.vcpu.memory.isReadonly(r.entryPa[r.leafLevel]!)) && (r.writable || (!ctx.cr0Wp && (lo & SPTE_U) === 0)))) {
      this.fail(`vCPU ${st.vcpu.id}: va 0x${cva.toString(16)} is writable in the shadow but not writable and dirty in the guest`, sp, loc, '', gpte());
    }
    if ((lo & SPTE_U) !== 0 && !r.user)
      this.fail(`vCPU ${st.vcpu.id}: va 0x${cva.toString(16)} is user in the shadow but supervisor in the guest`, sp, loc, '', gpte());
    if ((hi & SPTE_HI_NX) === 0 && !r.executable)
      this.fail(`vCPU ${st.vcpu.id}: va 0x${cva.toString(16)} is executable in the shadow but not in the guest`, sp, loc, '', gpte());
  }
}

/** A copy of one guest page: its RAM offset (-1: no memslot), the bytes, and the same as words. */
interface GuestCopy {
  /** RAM offset when the copy was taken (-1: no memslot). */
  off: number;
  buf: Buffer;
  words: Uint32Array;
}
const KIND_NONE = 0;
const KIND_LEAF = 1;
const KIND_LINK = 2;

/** Whether the guest paging context still has the values recorded (every field; typed arrays by content). */
function sameCtx(g: PagingContext, rec: VcpuRecord): boolean {
  const o = g as unknown as Record<string, unknown>;
  const keys = Object.keys(g);
  if (keys.length !== rec.ctxKeys.length) return false;
  for (let i = 0; i < keys.length; i++) {
    if (keys[i] !== rec.ctxKeys[i]) return false;
    const v = o[keys[i]!];
    const w = rec.ctxValues[i];
    if (ArrayBuffer.isView(v) && !(v instanceof DataView) && ArrayBuffer.isView(w)) {
      const a = v as unknown as ArrayLike<unknown>;
      const b = w as unknown as ArrayLike<unknown>;
      if (a.length !== b.length) return false;
      for (let j = 0; j < a.length; j++) if (a[j] !== b[j]) return false;
    } else if (v !== w) return false;
  }
  return true;
}

const copyValue = (v: unknown): unknown => (ArrayBuffer.isView(v) && !(v instanceof DataView) ? (v as Uint32Array).slice() : v);

const hex64 = (lo: number, hi: number): string => `0x${(hi >>> 0).toString(16).padStart(8, '0')}${(lo >>> 0).toString(16).padStart(8, '0')}`;
