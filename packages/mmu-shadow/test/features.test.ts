import { PF_VECTOR, type Vcpu } from '@vmexit/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ShadowMmuError, type ShadowMmu, type ShadowPage } from '../src/index.js';
import { A, D, type GuestTables, P, setup, U, W } from './harness.js';

const USER = 0x40000000;
/** KVM's trap spte (~0xffeull) and notrap spte (0), as the bypass policy programs them. */
const TRAP_LO = 0xfffff001;
const TRAP_HI = 0xffffffff;

function user<T>(vcpu: Vcpu, f: () => T): T {
  vcpu.setCpl(3);
  try {
    return f();
  } finally {
    vcpu.setCpl(0);
  }
}

/** The leaf spte location of `va` under the vCPU's root (or -1 when a level above is not present). */
function leafLoc(mmu: ShadowMmu, va: number): number {
  const st = mmu.states[0]!;
  let sp: ShadowPage = st.root ?? st.paeRoots[(va >>> 30) & 3]!;
  for (;;) {
    const loc = sp.base + (Math.floor(va / 2 ** (12 + 9 * (sp.level - 1))) & 511);
    if (sp.level === 1) return loc;
    const lo = mmu.pool.lo(loc);
    const hi = mmu.pool.hi(loc);
    if (!mmu.isPresent(lo, hi)) return -1;
    sp = mmu.pageAt((lo & 0xfffff000) + hi * 2 ** 32);
  }
}

function levelOnePage(mmu: ShadowMmu, pt: GuestTables, va: number): ShadowPage {
  const ptGfn = Math.floor(pt.entryAddr(va, 1) / 4096);
  return mmu.indirectPagesOf(ptGfn).find((sp) => sp.level === 1)!;
}

/** A demand pager that writes a present, accessed, dirty pte with one aligned store. */
function pager(vcpu: Vcpu, pt: GuestTables, first = 0x800000): void {
  let next = first;
  vcpu.setExceptionHandler(PF_VECTOR, (v, _vec, _ec, cr2) => {
    const e = pt.entryAddr(cr2, 1);
    if (pt.mode === 'legacy32') v.write(e, 4, (next | P | W | U | A | D) >>> 0);
    else v.write(e, 8, (next | P | W | U | A | D) >>> 0, 0);
    next += 4096;
  });
}

describe('ShadowMmu', () => {
  describe('.setNonPresentSptes', () => {
    it('refuses a notrap value with P and a trap value without reserved bits, naming the value', () => {
      const { mmu } = setup('long4');
      expect(() => mmu.setNonPresentSptes(0, 0, 1, 0)).toThrow(/notrap spte 0x0000000000000001 has P set/);
      expect(() => mmu.setNonPresentSptes(0x1001, 0, 0, 0)).toThrow(/must have P and a reserved bit in 51:46/);
      expect(() => mmu.setNonPresentSptes(TRAP_LO, TRAP_HI, 0, 0)).not.toThrow();
    });

    it('turns every existing non-present spte into trap, so a not-present fault of the shadow exits with P=1|RSVD', () => {
      const { mmu, h, vcpu, pt } = setup('long4');
      mmu.setNonPresentSptes(TRAP_LO, TRAP_HI, 0, 0);
      h.pfecMask = 1;
      h.pfecMatch = 1;
      mmu.audit();
      pt.map(USER, 0x900000, P | W | U);
      // The root's spte for USER is trap: the walk faults P=1|RSVD (0xd with U), which exits; the MMU
      // strips RSVD, walks the guest and builds the path (one exit, pf_fixed).
      expect(user(vcpu, () => vcpu.read(USER, 4))).toBe(0);
      expect(h.e('pf')).toBe(1);
      expect(h.c('pf_fixed')).toBe(1);
      expect(h.c('pf_bypassed')).toBe(0);
    });
  });

  describe('.handlePageFault (bypass encoding)', () => {
    it('gives a new level-1 page of 8-byte gptes notrap exactly where the gpte is not present, and costs a demand fault 1 exit with update-spte', () => {
      const { mmu, h, vcpu, pt } = setup('long4', { nxe: true }); // notrap sptes need EFER.NXE = 1 (state.ts notrapAllowed)
      mmu.setNonPresentSptes(TRAP_LO, TRAP_HI, 0, 0);
      h.pfecMask = 1;
      h.pfecMatch = 1;
      h.decider = (ev) => (ev.kind === 'pte-write' && ev.level === 1 ? 'update-spte' : null);
      pager(vcpu, pt);
      pt.map(USER + 0x1000, 0x7ff000, P | W | U | A);
      user(vcpu, () => vcpu.read(USER + 0x1000, 4)); // creates the shadow PT of USER's guest PT
      const sp = levelOnePage(mmu, pt, USER);
      expect(mmu.pool.lo(sp.base + 1)).not.toBe(0); // gpte 1 present: a real spte now
      expect([mmu.pool.lo(sp.base), mmu.pool.hi(sp.base)]).toEqual([0, 0]); // gpte 0 not present: notrap
      expect([mmu.pool.lo(sp.base + 2), mmu.pool.hi(sp.base + 2)]).toEqual([0, 0]);
      h.reset();
      // The guest's #PF on USER (P=0, spte notrap) goes straight to its handler: 0 exits.
      // Exit 1: the handler's pte store hits the write-protected PT -> emulated -> update-spte installs the spte.
      // The re-executed read hits the new spte: no exit.
      user(vcpu, () => vcpu.read(USER, 4));
      expect(h.e('pf')).toBe(1);
      expect(h.c('pf_bypassed')).toBe(1);
      expect(h.c('mmu_pte_updated')).toBe(1);
      mmu.audit();
    });

    it('writes trap, never notrap, when an spte is zapped, and notrap on a pte-update of a not-present gpte', () => {
      const { mmu, h, vcpu, pt } = setup('long4', { nxe: true }); // notrap sptes need EFER.NXE = 1 (state.ts notrapAllowed)
      mmu.setNonPresentSptes(TRAP_LO, TRAP_HI, 0, 0);
      h.pfecMask = 1;
      h.pfecMatch = 1;
      const e = pt.map(USER, 0x900000, P | W | U | A);
      user(vcpu, () => vcpu.read(USER, 4));
      const loc = leafLoc(mmu, USER);
      expect(mmu.isPresent(mmu.pool.lo(loc), mmu.pool.hi(loc))).toBe(true);
      // Default decision (zap-spte): the guest clears the pte -> the spte becomes trap.
      vcpu.write(e, 8, 0, 0);
      expect([mmu.pool.lo(loc), mmu.pool.hi(loc)]).toEqual([TRAP_LO, TRAP_HI]);
      mmu.audit();
      // With update-spte, a not-present gpte written whole becomes notrap; present with A=0 stays trap.
      h.decider = (ev) => (ev.kind === 'pte-write' ? 'update-spte' : null);
      vcpu.write(e, 8, 0x900000 | W | U, 0);
      expect([mmu.pool.lo(loc), mmu.pool.hi(loc)]).toEqual([0, 0]);
      vcpu.write(e, 8, 0x900000 | P | W | U, 0);
      expect([mmu.pool.lo(loc), mmu.pool.hi(loc)]).toEqual([TRAP_LO, TRAP_HI]);
      mmu.audit();
      // The access that sets A exits (trap) and maps it.
      h.reset();
      expect(user(vcpu, () => vcpu.read(USER, 4))).toBe(0);
      expect(h.e('pf')).toBe(1);
      expect(pt.r32(e) & A).toBe(A);
    });

    it('keeps working after a decision threw in the write hook (later writes take fresh scratch arrays)', () => {
      const { mmu, h, vcpu, pt } = setup('long4');
      const e = pt.map(USER, 0x900000, P | W | U | A);
      user(vcpu, () => vcpu.read(USER, 4)); // the page table of USER is shadowed: writes to its gptes are emulated
      const loc = leafLoc(mmu, USER);
      h.decider = (ev) => {
        if (ev.kind === 'pte-write') throw new Error('policy failed');
        return null;
      };
      expect(() => vcpu.write(e, 8, 0, 0)).toThrow('policy failed');
      expect(mmu.scratch.pagesBusy).toBe(true); // left busy (see pte-write.ts)
      // The next write is handled as a nested call's: the same decisions and sptes as on a fresh MMU.
      h.decider = (ev) => (ev.kind === 'pte-write' ? 'update-spte' : null);
      vcpu.write(e, 8, 0x900000 | P | W | U | A, 0);
      expect(mmu.isPresent(mmu.pool.lo(loc), mmu.pool.hi(loc))).toBe(true);
      expect(pt.r32(e) & ~0xfff).toBe(0x900000);
      mmu.audit();
    });

    it('keeps 4-byte-gpte pages and upper levels all trap (a 32-bit guest fault is reflected)', () => {
      const { mmu, h, vcpu, pt } = setup('legacy32');
      mmu.setNonPresentSptes(TRAP_LO, TRAP_HI, 0, 0);
      h.pfecMask = 1;
      h.pfecMatch = 1;
      pager(vcpu, pt);
      pt.map(USER + 0x1000, 0x7ff000, P | W | U | A);
      user(vcpu, () => vcpu.read(USER + 0x1000, 4));
      const sp = levelOnePage(mmu, pt, USER);
      expect([mmu.pool.lo(sp.base), mmu.pool.hi(sp.base)]).toEqual([TRAP_LO, TRAP_HI]);
      h.reset();
      user(vcpu, () => vcpu.read(USER, 4)); // reflect (trap exits), emulated pte write, re-fault
      expect(h.e('pf')).toBe(3);
      mmu.audit();
    });

    it('audit: reports a notrap spte over a present gpte and a notrap spte at a non-leaf level', () => {
      const { mmu, h, vcpu, pt } = setup('long4', { nxe: true }); // notrap sptes need EFER.NXE = 1 (state.ts notrapAllowed)
      mmu.setNonPresentSptes(TRAP_LO, TRAP_HI, 0, 0);
      h.audit = false;
      pt.map(USER, 0x900000, P | W | U | A);
      user(vcpu, () => vcpu.read(USER, 4));
      const loc = leafLoc(mmu, USER);
      const lo = mmu.pool.lo(loc);
      const hi = mmu.pool.hi(loc);
      mmu.pool.set(loc, 0, 0); // as if the leaf were notrap although its gpte is present
      expect(() => mmu.audit()).toThrow(/notrap spte where the guest pte at gpa 0x[0-9a-f]+ is present/);
      mmu.pool.set(loc, lo, hi);
      const root = mmu.states[0]!.root!;
      const empty = root.base + 300;
      mmu.pool.set(empty, 0, 0);
      expect(() => mmu.audit()).toThrow(ShadowMmuError);
      expect(() => mmu.audit()).toThrow(/notrap spte at a non-leaf level/);
    });
  });

  describe('.handlePageFault (prefetch)', () => {
    it('maps the other present and accessed gptes of the aligned group of 8, and stops at the first that cannot be', () => {
      const { mmu, h, vcpu, pt } = setup('long4');
      h.decider = (ev) => (ev.kind === 'prefetch' ? true : null);
      // Group of USER: indexes 0..7. 1 and 2 present+accessed, 3 present without A, 4 present+accessed.
      pt.map(USER, 0x900000, P | U | A);
      pt.map(USER + 0x1000, 0x901000, P | U | A);
      pt.map(USER + 0x2000, 0x902000, P | W | U | A | D);
      pt.map(USER + 0x3000, 0x903000, P | U);
      pt.map(USER + 0x4000, 0x904000, P | U | A);
      user(vcpu, () => vcpu.read(USER, 4));
      expect(h.e('pf')).toBe(1);
      const sp = levelOnePage(mmu, pt, USER);
      const present = (i: number): boolean => mmu.isPresent(mmu.pool.lo(sp.base + i), mmu.pool.hi(sp.base + i));
      expect([0, 1, 2, 3, 4].map(present)).toEqual([true, true, true, false, false]);
      expect(mmu.pool.lo(sp.base + 2) & W).toBe(W); // dirty and writable: writable
      expect(mmu.pool.lo(sp.base + 1) & W).toBe(0);
      h.reset();
      user(vcpu, () => vcpu.read(USER + 0x1000, 4));
      user(vcpu, () => vcpu.write(USER + 0x2000, 4, 9));
      expect(h.e('pf')).toBe(0);
      mmu.audit();
    });

    it('in a direct page (under a guest 2 MiB page) maps the neighbouring gfns of the group, each run of non-present sptes (__direct_pte_prefetch)', () => {
      const { mmu, h, vcpu, pt } = setup('long4');
      h.decider = (ev) => (ev.kind === 'prefetch' ? true : null);
      const LARGE = 0x40000000; // a user 2 MiB page at gpa 8 MiB
      pt.map(LARGE, 0x800000, P | W | U | A | D, 2);
      const leaf = (i: number): number => {
        const st = mmu.states[0]!;
        let sp: ShadowPage = st.root!;
        const va = LARGE + i * 4096;
        while (sp.level > 1) {
          const loc = sp.base + (Math.floor(va / 2 ** (12 + 9 * (sp.level - 1))) & 511);
          sp = mmu.childPage(mmu.pool.lo(loc), mmu.pool.hi(loc));
        }
        expect(sp.direct).toBe(true);
        return sp.base + i;
      };
      const present = (i: number): boolean => mmu.isPresent(mmu.pool.lo(leaf(i)), mmu.pool.hi(leaf(i)));
      // Exit 1: the read of page 3 faults; its spte is made, and the prefetch maps the rest of spte group 0-7
      // (runs 0-2 and 4-7, gfns 0x800-0x802 and 0x804-0x807), writable with the direct page's access (uwx).
      user(vcpu, () => vcpu.read(LARGE + 3 * 4096, 4));
      expect(h.e('pf')).toBe(1);
      expect(h.c('pf_fixed')).toBe(1);
      expect([...Array(10).keys()].map(present)).toEqual([true, true, true, true, true, true, true, true, false, false]);
      expect(mmu.pool.lo(leaf(5)) & W).toBe(W);
      // The other 7 pages of the group, read and written: no exit. Page 8 is in the next group: 1 exit.
      h.reset();
      for (const i of [0, 1, 2, 4, 5, 6, 7]) user(vcpu, () => vcpu.write(LARGE + i * 4096, 4, i));
      expect(h.e('pf')).toBe(0);
      user(vcpu, () => vcpu.read(LARGE + 8 * 4096, 4));
      expect(h.e('pf')).toBe(1);
      mmu.audit();
    });

    it('does nothing without a policy (the default decision)', () => {
      const { mmu, vcpu, pt } = setup('long4');
      pt.map(USER, 0x900000, P | U | A);
      pt.map(USER + 0x1000, 0x901000, P | U | A);
      user(vcpu, () => vcpu.read(USER, 4));
      const sp = levelOnePage(mmu, pt, USER);
      expect(mmu.isPresent(mmu.pool.lo(sp.base + 1), mmu.pool.hi(sp.base + 1))).toBe(false);
    });
  });

  describe('.invlpg / .crWritten (unsync)', () => {
    it('lets a level-1 page go unsync on a write fault, and re-reads the gpte on INVLPG', () => {
      const { mmu, h, vcpu, pt } = setup('long4');
      h.decider = (ev) => (ev.kind === 'unsync' ? true : null);
      const e = pt.map(USER, 0x900000, P | W | U | A);
      user(vcpu, () => vcpu.read(USER, 4));
      h.reset();
      // Exit 1: the kernel's pte store faults on the read-only spte of the PT page; the PT's only shadow page is
      // level 1, so it goes unsync and the spte becomes writable: no emulation. The next store needs no exit.
      vcpu.write(e, 8, 0x910000 | P | W | U | A, 0);
      vcpu.write(e + 8, 8, 0x911000 | P | W | U | A, 0);
      expect(h.e('pf')).toBe(1);
      expect(h.c('mmu_unsync')).toBe(1);
      expect(h.c('pf_emulate')).toBe(0);
      const sp = levelOnePage(mmu, pt, USER);
      expect(sp.unsync).toBe(true);
      mmu.audit(); // the stale spte of USER is allowed while unsync
      // INVLPG exits and re-reads the gpte: USER now maps 0x910000 with no fault.
      vcpu.memory.write32(0x910000, 0x5151);
      vcpu.invlpg(USER);
      expect(h.e('invlpg')).toBe(1);
      h.reset();
      expect(user(vcpu, () => vcpu.read(USER, 4))).toBe(0x5151);
      expect(h.e('pf')).toBe(0);
      mmu.audit();
    });

    it('syncs and write-protects unsync pages on a CR3 write', () => {
      const { mmu, h, vcpu, pt } = setup('long4');
      h.decider = (ev) => (ev.kind === 'unsync' ? true : null);
      const e = pt.map(USER, 0x900000, P | W | U | A);
      user(vcpu, () => vcpu.read(USER, 4));
      vcpu.write(e, 8, 0, 0); // unsync, the guest clears the pte without a flush
      const sp = levelOnePage(mmu, pt, USER);
      expect(sp.unsync).toBe(true);
      vcpu.movToCr3(pt.root);
      expect(sp.unsync).toBe(false);
      expect(mmu.unsyncPages.size).toBe(0);
      expect(mmu.isPresent(mmu.pool.lo(leafLoc(mmu, USER)), mmu.pool.hi(leafLoc(mmu, USER)))).toBe(false);
      mmu.audit();
      // Write-protected again: the next pte store exits (and goes unsync again).
      h.reset();
      vcpu.write(e, 8, 0x900000 | P | W | U | A, 0);
      expect(h.e('pf')).toBe(1);
      expect(h.c('mmu_unsync')).toBe(1);
    });

    it('with the bypass encoding, a sync drops the spte of a cleared gpte to notrap: the guest fault on it bypasses', () => {
      for (const mode of ['pae', 'long4'] as const) {
        const { mmu, h, vcpu, pt } = setup(mode, { nxe: true }); // notrap sptes need EFER.NXE = 1 (state.ts notrapAllowed)
        mmu.setNonPresentSptes(TRAP_LO, TRAP_HI, 0, 0);
        h.pfecMask = 1;
        h.pfecMatch = 1;
        h.decider = (ev) => (ev.kind === 'unsync' ? true : null);
        const e = pt.map(USER, 0x900000, P | W | U | A | D);
        pt.map(USER + 0x1000, 0x901000, P | W | U | A | D);
        user(vcpu, () => vcpu.read(USER, 4));
        user(vcpu, () => vcpu.read(USER + 0x1000, 4));
        // The kernel's first pte store makes the PT unsync (1 exit); it then clears gpte 0 without an exit and
        // flushes its TLB (CR3 write: the page is synced and write-protected again).
        vcpu.write(pt.entryAddr(USER + 0x2000, 1), 8, 0x902000 | P | W | U | A | D, 0);
        vcpu.write(e, 8, 0, 0);
        vcpu.movToCr3(pt.root);
        const sp = levelOnePage(mmu, pt, USER);
        expect(sp.unsync).toBe(false);
        // KVM 4731d4c7a077 FNAME(sync_page): the gpte is not present, so the dropped spte is notrap (trap where
        // the gpte is present but invalid, e.g. A=0).
        expect([mmu.pool.lo(leafLoc(mmu, USER)), mmu.pool.hi(leafLoc(mmu, USER))]).toEqual([0, 0]);
        mmu.audit();
        // The user read: P=0, PFEC_MASK = PFEC_MATCH = P sends it straight to the guest (0 exits); the pager's
        // pte store hits the write-protected PT (exit 1, emulated, the spte cleared: no pte-update); the
        // re-executed read faults on the trap spte (exit 2) and maps it. With trap after the sync: 3 exits.
        h.reset();
        pager(vcpu, pt);
        user(vcpu, () => vcpu.read(USER, 4));
        expect(h.c('pf_bypassed')).toBe(1);
        expect(h.e('pf')).toBe(2);
        mmu.audit();
      }
    });

    it('property: with bypass and unsync, after any kernel pte stores, TLB flushes and user reads, the audit holds (no notrap over a present gpte) and every read sees its gpte', () => {
      const op = fc.record({ kind: fc.constantFrom('store', 'clear', 'read', 'cr3', 'invlpg'), page: fc.nat(7), frame: fc.nat(3) });
      fc.assert(
        fc.property(fc.constantFrom('pae', 'long4'), fc.array(op, { minLength: 1, maxLength: 30 }), (mode, ops) => {
          const { mmu, h, vcpu, pt } = setup(mode);
          mmu.setNonPresentSptes(TRAP_LO, TRAP_HI, 0, 0);
          h.pfecMask = 1;
          h.pfecMatch = 1;
          h.decider = (ev) => (ev.kind === 'unsync' ? true : null);
          for (let f = 0; f < 4; f++) vcpu.memory.write32(0x900000 + f * 4096, 0x100 + f);
          for (let i = 0; i < 8; i++) pt.map(USER + i * 4096, 0x900000 + (i % 4) * 4096, P | W | U | A | D);
          // A not-present page faults into the guest, whose handler maps it to frame 0 (one kernel pte store).
          vcpu.setExceptionHandler(PF_VECTOR, (v, _vec, _ec, cr2) => v.write(pt.entryAddr(cr2, 1), 8, 0x900000 | P | W | U | A | D, 0));
          for (const o of ops) {
            const va = USER + o.page * 4096;
            if (o.kind === 'store') vcpu.write(pt.entryAddr(va, 1), 8, (0x900000 + o.frame * 4096) | P | W | U | A | D, 0);
            else if (o.kind === 'clear') vcpu.write(pt.entryAddr(va, 1), 8, 0, 0);
            else if (o.kind === 'cr3') vcpu.movToCr3(pt.root);
            else if (o.kind === 'invlpg') vcpu.invlpg(va);
            else {
              // The guest may read a stale translation until it flushes (unsync); after a CR3 write it sees its gpte.
              vcpu.movToCr3(pt.root);
              const got = user(vcpu, () => vcpu.read(va, 4));
              expect(got).toBe(vcpu.memory.read32(pt.r32(pt.entryAddr(va, 1)) & 0xfffff000));
            }
            mmu.audit();
          }
        }),
        { numRuns: 80 },
      );
    });

    it('never lets an upper-level guest table go unsync (it is emulated)', () => {
      const { mmu, h, vcpu, pt } = setup('long4');
      h.decider = (ev) => (ev.kind === 'unsync' ? true : null);
      pt.map(USER, 0x900000, P | W | U | A);
      user(vcpu, () => vcpu.read(USER, 4));
      h.reset();
      vcpu.write(pt.entryAddr(USER + 0x200000, 2), 8, 0, 0);
      expect(h.c('pf_emulate')).toBe(1);
      expect(mmu.unsyncPages.size).toBe(0);
    });
  });

  describe('.trackWrite (flood and misaligned events)', () => {
    it('update-spte: mmu_pte_updated counts every update_pte call (mmu_pte_write_new_pte), installed or not', () => {
      for (const mode of ['legacy32', 'pae', 'long4'] as const) {
        const { h, vcpu, pt } = setup(mode);
        h.decider = (ev) => (ev.kind === 'pte-write' && ev.level === 1 && !ev.misaligned ? 'update-spte' : null);
        pt.map(USER + 0x1000, 0x901000, P | W | U | A); // keeps the guest PT shadowed by a level-1 page
        user(vcpu, () => vcpu.read(USER + 0x1000, 4));
        const e = pt.entryAddr(USER, 1);
        const store = (lo: number): void => (mode === 'legacy32' ? vcpu.write(e, 4, lo >>> 0) : vcpu.write(e, 8, lo >>> 0, 0));
        h.reset();
        // Three whole-gpte stores into the shadowed PT, each 1 exit (emulated) and one update_pte call of its
        // level-1 page: present and accessed (an spte installed), present with A=0 (none: its access must set A),
        // not present (none). KVM counts the call ("++mmu_pte_updated; update_pte()"), not the spte.
        store(0x900000 | P | W | U | A);
        store(0x900000 | P | W | U);
        store(0x900000 | W | U);
        expect(h.e('pf')).toBe(3);
        expect(h.c('mmu_pte_write')).toBe(3);
        expect(h.c('mmu_pte_updated')).toBe(3);
        // A 2-byte store is not a whole gpte: no update_pte (its spte is cleared), nothing counted.
        vcpu.write(e + 2, 2, 0x90);
        expect(h.c('mmu_pte_updated')).toBe(3);
      }
    });

    it('counts per shadow page (reset by a walk through it) and per vCPU (reset by any other fault)', () => {
      const { h, vcpu, pt } = setup('long4');
      const seen: [number, number, number][] = [];
      h.decider = (ev) => {
        if (ev.kind === 'flood') seen.push([ev.level, ev.writeCount, ev.vcpuWriteCount]);
        return null;
      };
      pt.map(USER, 0x900000, P | W | U | A);
      user(vcpu, () => vcpu.read(USER, 4));
      const pde = pt.entryAddr(USER + 0x200000, 2);
      vcpu.write(pde, 8, 0, 0);
      vcpu.write(pde, 8, 0, 0);
      expect(seen).toEqual([
        [2, 1, 1],
        [2, 2, 2],
      ]);
      pt.map(USER + 0x3000, 0x903000, P | U | A); // an emulated PT write: the vCPU count moves to the PT's gfn
      user(vcpu, () => vcpu.read(USER + 0x3000, 4)); // a fault through the PD: both counts reset
      seen.length = 0;
      vcpu.write(pde, 8, 0, 0);
      expect(seen).toEqual([[2, 1, 1]]);
    });

    it('zaps a PAE page table on a misaligned 8-byte store at offset 4 (policy: zap-page), not on a 4-byte store there', () => {
      const { mmu, h, vcpu, pt } = setup('pae');
      h.decider = (ev) => (ev.kind === 'pte-write' && ev.misaligned ? 'zap-page' : null);
      pt.map(USER, 0x900000, P | W | U | A);
      pt.map(USER + 0x1000, 0x901000, P | W | U | A);
      user(vcpu, () => vcpu.read(USER, 4));
      const e = pt.entryAddr(USER, 1);
      const gfn = Math.floor(e / 4096);
      expect(mmu.indirectPagesOf(gfn).length).toBe(1);
      // 4 bytes at offset 4 (the high half of gpte 0): widened to the whole 8-byte gpte, not misaligned.
      vcpu.write(e + 4, 4, 0);
      expect(h.c('mmu_flooded')).toBe(0);
      expect(mmu.indirectPagesOf(gfn).length).toBe(1);
      // 8 bytes at offset 4: the high half of gpte 0 and the low half of gpte 1 -> misaligned -> zap the page.
      vcpu.write(e + 4, 8, 0, 0x901000 | P | W | U | A);
      expect(h.c('mmu_flooded')).toBe(1);
      expect(mmu.indirectPagesOf(gfn)).toEqual([]);
      mmu.audit();
    });

    it('without a policy clears both sptes a straddling write touches (the guest view stays exact)', () => {
      const { mmu, h, vcpu, pt } = setup('pae');
      pt.map(USER, 0x900000, P | W | U | A);
      pt.map(USER + 0x1000, 0x901000, P | W | U | A);
      user(vcpu, () => vcpu.read(USER, 4));
      user(vcpu, () => vcpu.read(USER + 0x1000, 4));
      const e = pt.entryAddr(USER, 1);
      // gpte 1 becomes 0x902000|P|W|U|A through its low half, written by the straddling store.
      vcpu.write(e + 4, 8, 0, (0x902000 | P | W | U | A) >>> 0);
      expect(mmu.isPresent(mmu.pool.lo(leafLoc(mmu, USER + 0x1000)), mmu.pool.hi(leafLoc(mmu, USER + 0x1000)))).toBe(false);
      vcpu.memory.write32(0x902000, 77);
      expect(user(vcpu, () => vcpu.read(USER + 0x1000, 4))).toBe(77);
      expect(h.c('mmu_flooded')).toBe(0);
      mmu.audit();
    });
  });
});
