import { CR0_PG, CR0_WP, PF_VECTOR, type Vcpu } from '@vmexit/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SPTE_HI_NX, SPTE_HOST_WRITABLE, SPTE_MMU_WRITABLE, SPTE_U, SPTE_W, sptePa } from '@vmexit/core/mmu';
import { auditShadowMmu, ShadowMmuError, type ShadowMmu, type ShadowPage } from '../src/index.js';
import { A, D, GuestTables, type Mode, P, setup, U, W, asUser } from './harness.js';

const USER = 0x40000000; // 1 GiB: user space of the test guests
const USER2 = USER + 0x400000; // another page directory entry (another guest PT in every mode)
const FRAMES = 0x800000; // the user pages' frames
/** KVM's trap spte (~0xffeull) and notrap spte (0), as the bypass policy programs them. */
const TRAP_LO = 0xfffff001;
const TRAP_HI = 0xffffffff;
const RIGHTS = SPTE_W | SPTE_HOST_WRITABLE | SPTE_MMU_WRITABLE;

/** The message of the audit's violation (null when it passes); anything but an E_MMU_AUDIT error fails the test. */
function reported(mmu: ShadowMmu, full: boolean): string | null {
  try {
    auditShadowMmu(mmu, { full });
    return null;
  } catch (e) {
    expect(e).toBeInstanceOf(ShadowMmuError);
    expect((e as ShadowMmuError).code).toBe('E_MMU_AUDIT');
    return (e as Error).message;
  }
}

/** Both audits report the violation: the incremental one (whose record is up to date) and the full one. */
function expectBoth(mmu: ShadowMmu, re: RegExp): void {
  expect(reported(mmu, false)).toMatch(re);
  expect(reported(mmu, true)).toMatch(re);
}

function expectNeither(mmu: ShadowMmu): void {
  expect(reported(mmu, false)).toBeNull();
  expect(reported(mmu, true)).toBeNull();
}

/** The guest kernel's #PF handler for user pages: maps a missing page to its own frame, or grants W, U, A, D. */
function kernelPager(vcpu: Vcpu, pt: GuestTables): void {
  vcpu.setExceptionHandler(PF_VECTOR, (v, _vec, _ec, cr2) => {
    if (cr2 < USER || cr2 >= USER2 + 0x200000) throw new Error(`unexpected #PF at 0x${cr2.toString(16)}`);
    const e = pt.entryAddr(cr2, 1);
    const old = v.read(e, 4);
    const lo = (old & P) === 0 ? FRAMES + (cr2 - USER) : old; // a frame of its own per page
    writePte(v, pt, e, (((lo & ~0xfff) | P | W | U | A | D) >>> 0) & ~0x80);
  });
}

/** A kernel store of a pte (through the identity map: an emulated write when the table is shadowed). */
function writePte(v: Vcpu, pt: GuestTables, e: number, lo: number): void {
  if (pt.mode === 'legacy32') v.write(e, 4, lo >>> 0);
  else v.write(e, 8, lo >>> 0, 0);
}

/** Present leaf sptes of in-sync level-1 pages (the ones the audit compares with the guest). */
function leaves(mmu: ShadowMmu): { sp: ShadowPage; loc: number }[] {
  const out: { sp: ShadowPage; loc: number }[] = [];
  for (const sp of mmu.active) {
    if (sp.level !== 1 || sp.unsync) continue;
    for (let i = 0; i < 512; i++) if (mmu.isPresent(mmu.pool.lo(sp.base + i), mmu.pool.hi(sp.base + i))) out.push({ sp, loc: sp.base + i });
  }
  return out;
}

/** The leaf spte location of `va` under vCPU 0's roots. */
function leafLoc(mmu: ShadowMmu, va: number): number {
  const st = mmu.states[0]!;
  let sp: ShadowPage = st.root ?? st.paeRoots[(va >>> 30) & 3]!;
  for (;;) {
    const loc = sp.base + (Math.floor(va / 2 ** (12 + 9 * (sp.level - 1))) & 511);
    if (sp.level === 1) return loc;
    sp = mmu.pageAt(sptePa(mmu.pool.lo(loc), mmu.pool.hi(loc)));
  }
}

/**
 * A guest with user pages at USER and USER2 (both in its own guest PT), mapped by the kernel pager on first
 * touch, and audited incrementally after every exit by the harness.
 */
function guest(mode: Mode) {
  const s = setup(mode);
  kernelPager(s.vcpu, s.pt);
  for (const va of [USER, USER + 0x1000, USER + 0x2000, USER2]) asUser(s.vcpu, () => s.vcpu.write(va, 4, 0x1234));
  s.vcpu.read(s.pt.entryAddr(USER, 1) & ~0xfff, 4); // the kernel reads the guest PT (a read-only spte: it is shadowed)
  return s;
}

const MODES: Mode[] = ['legacy32', 'pae', 'long4'];

describe('auditShadowMmu', () => {
  describe.each(MODES)('incremental and full, %s', (mode) => {
    it('are silent on the MMU', () => {
      const { mmu } = guest(mode);
      expectNeither(mmu);
    });

    it('report an spte with more rights than its guest pte (W over a clean gpte), with the guest pte and the role', () => {
      const { mmu, vcpu, pt } = guest(mode);
      pt.map(USER + 0x5000, FRAMES + 0x5000, P | W | U | A); // not dirty: the shadow must stay read-only
      asUser(vcpu, () => vcpu.read(USER + 0x5000, 4));
      mmu.audit();
      const loc = leafLoc(mmu, USER + 0x5000);
      const lo = mmu.pool.lo(loc);
      expect(lo & SPTE_W).toBe(0);
      mmu.pool.set(loc, (lo | RIGHTS) >>> 0, mmu.pool.hi(loc));
      expectBoth(
        mmu,
        /va 0x40005000 is writable in the shadow but not writable and dirty in the guest at spte 5 = 0x[0-9a-f]{16} of the shadow page for gfn 0x[0-9a-f]+ role \{level=1.* \(guest pte 0x[0-9a-f]{16} at level 1, gpa 0x[0-9a-f]+\)/,
      );
      mmu.pool.set(loc, lo, mmu.pool.hi(loc));
      expectNeither(mmu);
    });

    it('report U on a supervisor page', () => {
      const { mmu, vcpu } = guest(mode);
      vcpu.read(0x5000, 4);
      mmu.audit();
      const loc = leafLoc(mmu, 0x5000);
      mmu.pool.set(loc, (mmu.pool.lo(loc) | SPTE_U) >>> 0, mmu.pool.hi(loc));
      expectBoth(mmu, /va 0x5000 is user in the shadow but supervisor in the guest at spte 5 /);
    });

    it('report a leaf missing from its rmap, and an rmap entry that is no leaf', () => {
      const { mmu } = guest(mode);
      const loc = leafLoc(mmu, USER + 0x1000);
      const gfn = Math.floor(sptePa(mmu.pool.lo(loc), mmu.pool.hi(loc)) / 4096);
      const head = mmu.rmaps.head(gfn, 1, false)!;
      head.remove(loc);
      expectBoth(mmu, /no rmap for the leaf spte \(gfn 0x[0-9a-f]+\) at spte 1 /);
      head.add(loc);
      expectNeither(mmu);
      const empty = leafLoc(mmu, USER + 0x3000); // not mapped: a trap spte
      head.add(empty);
      expectBoth(mmu, new RegExp(`rmap.* holds spte ${empty}, which is not a present leaf`));
      head.remove(empty);
      head.add(loc);
      expectBoth(mmu, new RegExp(`holds spte ${loc} twice`));
    });

    it('report an rmap entry left behind by a leaf spte cleared without rmap_remove', () => {
      const { mmu } = guest(mode);
      const loc = leafLoc(mmu, USER + 0x1000);
      const lo = mmu.pool.lo(loc);
      const hi = mmu.pool.hi(loc);
      mmu.pool.set(loc, mmu.trapLo, mmu.trapHi);
      expectBoth(mmu, new RegExp(`the level-1 rmap of .* holds spte ${loc}, which is not a present leaf`));
      mmu.pool.set(loc, lo, hi);
      expectNeither(mmu);
    });

    it('report a writable spte over a write-protected gfn, whether the spte or the protection is new', () => {
      const { mmu, pt } = guest(mode);
      // The kernel's read-only view of the guest PT made writable.
      const ptLoc = leafLoc(mmu, pt.entryAddr(USER, 1) & ~0xfff);
      const lo = mmu.pool.lo(ptLoc);
      mmu.pool.set(ptLoc, (lo | RIGHTS) >>> 0, mmu.pool.hi(ptLoc));
      expectBoth(mmu, /a writable spte maps write-protected guest page table gfn 0x[0-9a-f]+ at spte/);
      mmu.pool.set(ptLoc, lo, mmu.pool.hi(ptLoc));
      expectNeither(mmu);
      // A gfn that becomes write-tracked while a writable spte maps it (rmap_write_protect forgotten): the
      // spte itself did not change since the last audit.
      const loc = leafLoc(mmu, USER + 0x2000);
      expect(mmu.pool.lo(loc) & SPTE_W).toBe(SPTE_W);
      const gfn = Math.floor(sptePa(mmu.pool.lo(loc), mmu.pool.hi(loc)) / 4096);
      mmu.writeTrack.set(gfn, 1);
      mmu.trackVersion++; // as the page cache does with every change to the maps (state.ts)
      expectBoth(mmu, new RegExp(`a writable spte maps write-protected guest page table gfn 0x${gfn.toString(16)} at spte 2 `));
      mmu.writeTrack.delete(gfn);
      mmu.trackVersion++;
      expectNeither(mmu);
    });

    it("report a write-track count (KVM's gfn_write_track) that disagrees with the gfn's indirect pages above level 1", () => {
      const { mmu } = guest(mode);
      const [gfn, n] = [...mmu.upperTrack][0]!; // a guest table above level 1: its shadow pages write-track it
      mmu.upperTrack.set(gfn, n + 1);
      mmu.trackVersion++;
      expectBoth(mmu, new RegExp(`write-track count ${n + 1} for gfn 0x${gfn.toString(16)} but ${n} indirect pages above level 1`));
      mmu.upperTrack.set(gfn, n);
      mmu.trackVersion++;
      expectNeither(mmu);
      // A gfn counted that no upper-level page shadows (a count left behind by a zap).
      const size = mmu.upperTrack.size;
      mmu.upperTrack.set(0x7ffff, 1);
      mmu.trackVersion++;
      expectBoth(mmu, new RegExp(`write-track counts for ${size + 1} gfns but indirect pages above level 1 for ${size}`));
      mmu.upperTrack.delete(0x7ffff);
      mmu.trackVersion++;
      expectNeither(mmu);
    });

    it('report a write-track memo that a change to the maps left stale (one that did not bump trackVersion)', () => {
      const { mmu } = guest(mode);
      const [gfn] = [...mmu.upperTrack][0]!; // a write-protected guest table
      expect(mmu.isWriteProtected(gfn)).toBe(true); // the memo now holds gfn
      expect(mmu.isUpperTracked(gfn)).toBe(true);
      expectNeither(mmu);
      // The gfn's protection dropped behind the MMU's back: the memo still says protected.
      const [w, u] = [mmu.writeTrack.get(gfn)!, mmu.upperTrack.get(gfn)!];
      mmu.writeTrack.delete(gfn);
      mmu.upperTrack.delete(gfn);
      expect(mmu.isWriteProtected(gfn)).toBe(true);
      expect(reported(mmu, false)).toMatch(new RegExp(`the write-track memo of gfn 0x${gfn.toString(16)} disagrees with the write-track maps`));
      // A change made through the page cache bumps trackVersion, and the memo is asked again.
      mmu.trackVersion++;
      expect(mmu.isWriteProtected(gfn)).toBe(false);
      expect(mmu.isUpperTracked(gfn)).toBe(false);
      mmu.writeTrack.set(gfn, w);
      mmu.upperTrack.set(gfn, u);
      mmu.trackVersion++;
      expect(mmu.isWriteProtected(gfn)).toBe(true);
      expectNeither(mmu);
    });

    it('report a guest pte written behind the MMU (straight into guest RAM, no trap): another frame, not present, a redirected PDE', () => {
      const { mmu, machine, pt } = guest(mode);
      const mem = machine.memory;
      const e = pt.entryAddr(USER + 0x1000, 1);
      const old = mem.read32(e);
      mem.write32(e, (FRAMES + 0x70000) | P | W | U | A | D);
      expectBoth(
        mmu,
        /va 0x40001000 maps gpa 0x870000 in the guest tables but another frame in the shadow at spte 1 .*\(guest pte 0x[0-9a-f]{16} at level 1, gpa 0x[0-9a-f]+\)/,
      );
      mem.write32(e, old & ~P);
      expectBoth(mmu, /va 0x40001000 has a present leaf spte but the guest tables do not map it/);
      mem.write32(e, old);
      expectNeither(mmu);
      // The PDE of USER2 pointed at USER's guest PT: every leaf of USER2 now translates elsewhere.
      const pde = pt.entryAddr(USER2, 2);
      const oldPde = mem.read32(pde);
      mem.write32(pde, ((pt.entryAddr(USER, 1) & ~0xfff) | P | W | U | A) >>> 0);
      expectBoth(mmu, /va 0x40400000 maps gpa 0x[0-9a-f]+ in the guest tables but another frame in the shadow/);
      mem.write32(pde, oldPde);
      expectNeither(mmu);
    });

    it('report leaves kept over a change of the paging context that the MMU did not see (a missed CR3 exit)', () => {
      const { mmu, vcpu, machine } = guest(mode);
      const ctx = vcpu.ctx;
      const saved = { cr3: ctx.cr3, pdpte: ctx.pdpteLo[1]! };
      // The new guest tables map nothing (PAE: the PDPTE register of USER's GiB is not present).
      if (mode === 'pae') ctx.pdpteLo[1] = 0;
      else ctx.cr3 = new GuestTables(machine, mode, 0x300000).root;
      expectBoth(mmu, /va 0x[0-9a-f]+ has a present leaf spte but the guest tables do not map it/);
      ctx.cr3 = saved.cr3;
      ctx.pdpteLo[1] = saved.pdpte;
      expectNeither(mmu);
    });

    it('report an spte outside every memslot', () => {
      const { mmu } = guest(mode);
      const loc = leafLoc(mmu, USER);
      const lo = mmu.pool.lo(loc);
      mmu.pool.set(loc, ((lo & 0xfff) | 0x7ff00000) >>> 0, mmu.pool.hi(loc));
      expectBoth(mmu, /a leaf spte maps gfn 0x7ff00, outside every memslot at spte 0 /);
    });

    it("report a parent link missing from the child's parent_ptes", () => {
      const { mmu } = guest(mode);
      const sp = mmu.pageOfLoc(leafLoc(mmu, USER));
      const link = sp.parentPtes.toArray()[0]!;
      sp.parentPtes.remove(link);
      // The full audit finds the spte; the incremental one, whose sptes did not change, finds the count short.
      expect(reported(mmu, false)).toMatch(/parent_ptes entries for \d+ present non-leaf sptes/);
      expect(reported(mmu, true)).toMatch(/a non-leaf spte is missing from its child's parent_ptes/);
      sp.parentPtes.add(link);
      expectNeither(mmu);
    });
  });

  describe('incremental and full, bypass encoding', () => {
    it('report a notrap spte whose gpte the guest made present behind the MMU', () => {
      const { mmu, machine, pt, h } = setup('long4', { nxe: true }); // notrap sptes need EFER.NXE = 1 (state.ts notrapAllowed)
      mmu.setNonPresentSptes(TRAP_LO, TRAP_HI, 0, 0);
      kernelPager(machine.vcpus[0]!, pt);
      asUser(machine.vcpus[0]!, () => machine.vcpus[0]!.write(USER, 4, 1)); // the PT is shadowed: notrap at 1..511
      expect(h.e('pf')).toBeGreaterThan(0);
      const loc = leafLoc(mmu, USER + 0x4000);
      expect(mmu.isNotrap(mmu.pool.lo(loc), mmu.pool.hi(loc))).toBe(true);
      mmu.audit();
      const e = pt.entryAddr(USER + 0x4000, 1);
      machine.memory.write32(e, (FRAMES + 0x4000) | P | W | U);
      expectBoth(mmu, /a notrap spte where the guest pte at gpa 0x[0-9a-f]+ is present .* at spte 4 /);
      machine.memory.write32(e, 0);
      expectNeither(mmu);
    });
  });

  // Random short guest workloads (kernel pte stores, user and kernel accesses through the pager, INVLPG,
  // CR3 reloads, CR0.WP flips, user pages mapped onto the guest's own PT) on 1 or 2 vCPUs, with the
  // incremental audit after every exit.
  const opArb = fc.record({
    vcpu: fc.nat(1),
    kind: fc.constantFrom('read', 'write', 'uread', 'uwrite', 'map', 'unmap', 'invlpg', 'cr3', 'wp'),
    page: fc.nat(23),
    frame: fc.nat(16),
    flags: fc.constantFrom(P, P | W, P | U, P | W | U, P | W | U | A, P | W | U | A | D, P | U | A),
  });
  type Op = { vcpu: number; kind: string; page: number; frame: number; flags: number };

  function runOps(mode: Mode, vcpus: number, bypass: boolean, ops: Op[]) {
    const s = setup(mode, { vcpus });
    if (bypass) s.mmu.setNonPresentSptes(TRAP_LO, TRAP_HI, 0, 0);
    const ptFrame = s.pt.entryAddr(USER, 1) & ~0xfff;
    for (const v of s.machine.vcpus) kernelPager(v, s.pt);
    const wp = s.machine.vcpus.map(() => true);
    s.vcpu.read(0x5000, 4); // a kernel leaf and a user leaf to start with
    asUser(s.vcpu, () => s.vcpu.write(USER2, 4, 1));
    for (const op of ops) {
      const v = s.machine.vcpus[op.vcpu % vcpus]!;
      const va = (op.page < 16 ? USER + op.page * 4096 : USER2 + (op.page - 16) * 4096) >>> 0;
      switch (op.kind) {
        case 'read':
          v.read(va, 4);
          break;
        case 'write':
          v.write(va, 4, op.frame);
          break;
        case 'uread':
          asUser(v, () => v.read(va, 4));
          break;
        case 'uwrite':
          asUser(v, () => v.write(va, 4, op.frame));
          break;
        case 'map': // frame 16: the guest's own PT
          writePte(v, s.pt, s.pt.entryAddr(va, 1), ((op.frame === 16 ? ptFrame : FRAMES + op.frame * 4096) | op.flags) >>> 0);
          break;
        case 'unmap':
          writePte(v, s.pt, s.pt.entryAddr(va, 1), 0);
          break;
        case 'invlpg':
          v.invlpg(va);
          break;
        case 'cr3':
          v.movToCr3(s.pt.root);
          break;
        case 'wp':
          wp[op.vcpu % vcpus] = !wp[op.vcpu % vcpus];
          v.movToCr0(CR0_PG | (wp[op.vcpu % vcpus] ? CR0_WP : 0) | 1);
          break;
      }
    }
    return s;
  }

  const scenarioArb = fc.record({
    mode: fc.constantFrom<Mode>(...MODES),
    vcpus: fc.constantFrom(1, 2),
    bypass: fc.boolean(),
    ops: fc.array(opArb, { minLength: 1, maxLength: 40 }),
  });

  it('is silent after every exit of random guest workloads, and so is the full audit at the end', () => {
    fc.assert(
      fc.property(scenarioArb, ({ mode, vcpus, bypass, ops }) => {
        const { mmu, h } = runOps(mode, vcpus, bypass && mode !== 'legacy32', ops);
        expect(h.audit).toBe(true);
        expectNeither(mmu);
      }),
      { seed: 0xa0d17, numRuns: 100 },
    );
  });

  it('reports a random corruption after a random workload exactly when the full audit does', () => {
    const corruptions = [
      'rights',
      'user',
      'nx',
      'frame',
      'memslot',
      'rmap-remove',
      'rmap-dup',
      'gpte-frame',
      'gpte-clear',
      'gpte-ro',
      'notrap',
      'pde',
    ] as const;
    let caught = 0;
    fc.assert(
      fc.property(scenarioArb, fc.constantFrom(...corruptions), fc.nat(), ({ mode, vcpus, bypass, ops }, corruption, pick) => {
        const { mmu, machine, pt } = runOps(mode, vcpus, bypass && mode !== 'legacy32', ops);
        mmu.audit();
        const all = leaves(mmu);
        const { sp, loc } = all[pick % all.length]!;
        const pool = mmu.pool;
        const lo = pool.lo(loc);
        const hi = pool.hi(loc);
        const mem = machine.memory;
        const ga = sp.direct ? -1 : mmu.gpteAddress(sp, loc - sp.base);
        switch (corruption) {
          case 'rights':
            pool.set(loc, (lo | RIGHTS) >>> 0, hi);
            break;
          case 'user':
            pool.set(loc, (lo | SPTE_U) >>> 0, hi);
            break;
          case 'nx':
            pool.set(loc, lo, (hi & ~SPTE_HI_NX) >>> 0);
            break;
          case 'frame':
            pool.set(loc, ((lo & 0xfff) | (FRAMES + 0x3f000)) >>> 0, hi);
            break;
          case 'memslot':
            pool.set(loc, ((lo & 0xfff) | 0x7ff00000) >>> 0, hi);
            break;
          case 'rmap-remove':
            mmu.rmaps.head(Math.floor(sptePa(lo, hi) / 4096), 1, false)!.remove(loc);
            break;
          case 'rmap-dup':
            mmu.rmaps.head(Math.floor(sptePa(lo, hi) / 4096), 1, false)!.add(loc);
            break;
          case 'gpte-frame':
            if (ga >= 0) mem.write32(ga, ((mem.read32(ga) & 0xfff) | (FRAMES + 0x3e000)) >>> 0);
            break;
          case 'gpte-clear':
            if (ga >= 0) mem.write32(ga, 0);
            break;
          case 'gpte-ro':
            if (ga >= 0) mem.write32(ga, (mem.read32(ga) & ~(W | D)) >>> 0);
            break;
          case 'notrap':
            pool.set(loc, mmu.notrapLo, mmu.notrapHi);
            break;
          case 'pde': {
            // Redirect the PDE above USER to USER2's guest PT (or back), behind the MMU.
            const pde = pt.entryAddr(USER, 2);
            mem.write32(pde, ((pt.entryAddr(USER2, 1) & ~0xfff) | P | W | U | A) >>> 0);
            break;
          }
        }
        const inc = reported(mmu, false);
        const full = reported(mmu, true);
        expect(inc !== null).toBe(full !== null);
        if (full !== null) caught++;
      }),
      { seed: 0xc0bb1e, numRuns: 120 },
    );
    // Most corruptions are violations; some are not (W over a gpte that is writable and dirty, U on a user page).
    expect(caught).toBeGreaterThan(60);
  });
});
