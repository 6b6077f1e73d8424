import { CR0_PG, CR0_WP, GP_VECTOR, Machine, PF_VECTOR, type Vcpu } from '@vmexit/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ACC_WRITE_MASK, ROLE_4BYTE_GPTE, ROLE_DIRECT, ROLE_INVALID, roleAccess, roleQuadrant, SPTE_P, SPTE_W } from '@vmexit/core/mmu';
import { auditShadowMmu } from '../src/audit.js';
import { levelIndex } from '../src/gpte.js';
import { ShadowMmu, ShadowMmuError } from '../src/index.js';
import { KVM_MIN_FREE_MMU_PAGES, KVM_REFILL_PAGES } from '../src/page-cache.js';
import { pteWrite } from '../src/pte-write.js';
import { A, D, GuestTables, Harness, P, setup, U, W } from './harness.js';

const USER = 0x40000000; // 1 GiB: user space of the test guests

/** A demand-paging #PF handler: a fresh frame for the faulting page, written with one aligned kernel store. */
function demandPager(vcpu: Vcpu, pt: GuestTables, firstFrame = 0x800000): void {
  let next = firstFrame;
  vcpu.setExceptionHandler(PF_VECTOR, (v, _vector, _ec, cr2) => {
    const e = pt.entryAddr(cr2, 1);
    if (pt.mode === 'legacy32') v.write(e, 4, (next | P | W | U) >>> 0);
    else v.write(e, 8, (next | P | W | U) >>> 0, 0);
    next += 4096;
  });
}

function userRead(vcpu: Vcpu, va: number): number {
  vcpu.setCpl(3);
  try {
    return vcpu.read(va, 4);
  } finally {
    vcpu.setCpl(0);
  }
}

function userWrite(vcpu: Vcpu, va: number, v: number): void {
  vcpu.setCpl(3);
  try {
    vcpu.write(va, 4, v);
  } finally {
    vcpu.setCpl(0);
  }
}

/**
 * The error codes of the #PFs the guest takes on a user read of `va` after a CR3 reload (a flush of every
 * translation: SDM Vol. 3A §4.10.4); the handler maps `va` to some frame so that the read completes.
 */
function faultsAfterReload(vcpu: Vcpu, pt: GuestTables, va: number): number[] {
  const faults: number[] = [];
  vcpu.setExceptionHandler(PF_VECTOR, (_v, _vec, ec, cr2) => {
    faults.push(ec);
    pt.map(cr2, 0x980000, P | W | U | A);
  });
  vcpu.movToCr3(pt.root);
  userRead(vcpu, va);
  return faults;
}

describe('ShadowMmu', () => {
  describe('.handlePageFault', () => {
    it('takes 3 exits for a demand fault: reflect, emulated pte write, re-fault', () => {
      const { h, pt, vcpu, mmu } = setup('long4');
      demandPager(vcpu, pt);
      // Warm-up: a present neighbour in the same guest PT, so its shadow PT exists and is write-protected.
      pt.map(USER + 0x1000, 0x7ff000, P | W | U);
      userRead(vcpu, USER + 0x1000);
      h.reset();
      // Exit 1: #PF P=0 on USER (no spte); the guest walk fails too -> inject #PF (pf_guest).
      // Exit 2: the handler's 8-byte store to the PTE hits the write-protected guest PT (the kernel never
      //         touched that page, so P=0: a read-only spte is built for it and, the fault being a write,
      //         RET_PF_EMULATE) -> emulated (pf_emulate); the write hook clears the written spte (not
      //         present: no flush).
      // Exit 3: the re-executed read faults again (P=0) -> the guest walk succeeds -> leaf spte built (pf_fixed).
      userRead(vcpu, USER);
      expect(h.e('pf')).toBe(3);
      expect(h.c('pf_guest')).toBe(1);
      expect(h.c('pf_emulate')).toBe(1);
      expect(h.c('pf_fixed')).toBe(1);
      expect(h.c('pf_taken')).toBe(3); // kvm_mmu_do_page_fault: every fault the MMU handles, whatever it resolves to
      expect(h.c('mmu_pte_write')).toBe(1);
      expect(h.c('tlb_flush')).toBe(0);
      // Then the translation is cached: no more exits.
      userRead(vcpu, USER);
      expect(h.e('pf')).toBe(3);
      // The root, the PDPT, and a PD and a PT each for the kernel's 0..2 MiB and the user's page at 1 GiB.
      expect(mmu.usedPages).toBe(6);
    });

    it('leaves the A and D flags of a guest pte in read-only RAM as they are, as KVM skips them (pte_writable)', () => {
      const ROM = 0xc00000;
      const { h, pt, vcpu, mmu } = setup('long4', {
        memslots: [
          { base: 0, size: ROM },
          { base: ROM, size: 0x10000, readonly: true },
        ],
      });
      pt.map(USER + 0x3000, 0x7f0000, P | W | U); // the PD for USER, in RAM
      const pde = pt.entryAddr(USER, 2);
      pt.w64(pde, ROM | P | W | U, 0); // the guest PT is the ROM's first page
      const pte = ROM + levelIndex(USER, 1) * 8;
      pt.w64(pte, 0x900000 | P | W | U, 0); // A = D = 0 (the ROM's contents)
      h.reset();
      // Exit 1: the read faults (no spte); the guest walk would set A in the ROM pte: skipped (KVM
      // FNAME(update_accessed_dirty_bits) leaves a gpte in a read-only memslot alone); the leaf is read-only
      // (the gpte is clean). Exit 2: the write faults on it; the walk would set A and D: skipped; the write
      // fault keeps W (KVM applies protect_clean_gpte to read faults only), so the spte becomes writable.
      expect(userRead(vcpu, USER)).toBe(0);
      userWrite(vcpu, USER, 0x77);
      expect(userRead(vcpu, USER)).toBe(0x77);
      expect(h.e('pf')).toBe(2);
      expect([pt.r32(pte), pt.r32(pte + 4)]).toEqual([0x900000 | P | W | U, 0]);
      expect(pt.r32(pde) & A).toBe(A); // the PDE, in RAM, got its A
      auditShadowMmu(mmu, { full: true });
    });

    it('emulates a write to a page directory in read-only RAM as a write-tracked page table first (KVM page_fault_handle_page_track), then exits to user space', () => {
      // KVM FNAME(page_fault) checks page_fault_handle_page_track before kvm_faultin_pfn, whose
      // KVM_PFN_ERR_RO_FAULT (a write to a read-only memslot) would also emulate: a write-tracked gfn in ROM is
      // RET_PF_EMULATE from the page-track check, and the emulator's store to ROM becomes the MMIO exit.
      const ROM = 0xc00000;
      const { h, pt, vcpu, mmu } = setup('long4', {
        memslots: [
          { base: 0, size: ROM },
          { base: ROM, size: 0x10000, readonly: true },
        ],
      });
      pt.w64(pt.entryAddr(USER, 3), ROM | P | W | U, 0); // the guest PD for USER is the ROM's first page
      const pde = ROM + levelIndex(USER, 2) * 8;
      const ptPage = pt.alloc();
      pt.w64(pde, ptPage | P | W | U | A, 0);
      pt.w64(ptPage + levelIndex(USER, 1) * 8, 0x900000 | P | W | U | A, 0);
      pt.map(0x500000, ROM, P | W); // the kernel's mapping of the ROM page
      // Exit 1: the user read builds the shadow PD of the ROM page (a level-2 page: the gfn is write-tracked).
      // Exit 2: the kernel reads the ROM through its own mapping (a read-only spte: a tracked gfn in ROM).
      userRead(vcpu, USER);
      vcpu.read(0x500000, 4);
      h.reset();
      // Exit 3: the kernel stores to the PDE (P=1, W): the page-track check takes it first, RET_PF_EMULATE
      // (pf_emulate, not a user-space exit of the MMU's own); the emulator finds the store lands in ROM, which
      // user space drops: the ROM keeps its PDE.
      vcpu.write(0x500000 + (pde - ROM), 4, 0);
      expect([h.e('pf'), h.e('mmio'), h.c('pf_emulate')]).toEqual([1, 0, 1]);
      expect(pt.r32(pde)).toBe((ptPage | P | W | U | A) >>> 0);
      auditShadowMmu(mmu, { full: true });
    });

    it('maps a clean guest pte read-only and makes it writable on the first write (D set by the walk)', () => {
      const { h, pt, vcpu } = setup('long4');
      const e = pt.map(USER, 0x900000, P | W | U);
      userRead(vcpu, USER); // exit 1: leaf built read-only (the gpte is clean)
      expect(pt.r32(e) & (A | D)).toBe(A);
      userWrite(vcpu, USER, 7); // exit 2: write fault on the read-only spte -> D set, spte writable
      expect(pt.r32(e) & (A | D)).toBe(A | D);
      expect(h.e('pf')).toBe(2);
      expect(h.c('pf_fixed')).toBe(2);
      expect(h.c('tlb_flush')).toBe(0); // rights only grew
      expect(vcpu.memory.read32(0x900000)).toBe(7);
    });

    it('gives two aliased large PDEs with different rights different direct pages, and no fault loop', () => {
      const { h, pt, vcpu, mmu } = setup('long4');
      const frame = 0xa00000; // one 2 MiB frame behind two 2 MiB guest pages
      pt.map(USER, frame, P | U | A | D, 2); // read-only alias
      pt.map(USER + 0x200000, frame, P | W | U | A | D, 2); // writable alias
      // Exit 1: read through the read-only alias -> direct level-1 page with access u-x.
      expect(userRead(vcpu, USER + 0x10)).toBe(0);
      // Exit 2: write through the writable alias -> its own direct page (access uwx), writable leaf; success.
      userWrite(vcpu, USER + 0x200010, 42);
      expect(h.e('pf')).toBe(2);
      expect(userRead(vcpu, USER + 0x10)).toBe(42);
      const direct = [...mmu.active].filter((sp) => (sp.role & ROLE_DIRECT) !== 0 && sp.gfn === frame / 4096);
      expect(direct.length).toBe(2);
      expect(direct.map((sp) => roleAccess(sp.role) & ACC_WRITE_MASK).sort()).toEqual([0, ACC_WRITE_MASK]);
      expect(h.e('pf')).toBe(2);
    });

    it('injects the guest walk error code (RSVD of the shadow never leaks) and MMIO exits for a gfn with no slot', () => {
      const { h, pt, vcpu, mmu } = setup('long4', { memoryBytes: 16 * 1024 * 1024 });
      const faults: number[] = [];
      vcpu.setExceptionHandler(PF_VECTOR, (_v, _vec, ec, cr2) => {
        faults.push(ec);
        pt.map(cr2, 0x880000, P | W | U);
      });
      // A user write to a supervisor page: the guest's own protection fault, P|W|U = 7.
      pt.map(USER, 0x870000, P | W);
      userWrite(vcpu, USER, 1);
      expect(faults[0]).toBe(7);
      // Beyond RAM: the guest maps gpa 64 MiB (no memslot) -> an exit to user space.
      pt.map(USER + 0x5000, 0x4000000, P | W | U);
      expect(mmu.handlePageFault(vcpu, USER + 0x5000, 4)).toEqual({ kind: 'userspace', reason: 'mmio', gpa: 0x4000000 });
      expect(h.c('pf_guest')).toBe(1);
      // KVM counts RET_PF_EMULATE for a gfn with no slot (kvm_handle_noslot_fault), and every fault as pf_taken:
      // the user write (injected), its re-execution (fixed) and the MMIO fault.
      expect([h.c('pf_emulate'), h.c('pf_taken')]).toEqual([1, 3]);
    });

    it('emulates CR0.WP=0 as KVM does: a kernel write to a read-only user page gets a kernel-only writable spte', () => {
      const { h, pt, vcpu, mmu } = setup('long4', { wp: false });
      pt.map(USER, 0x900000, P | U);
      vcpu.write(USER, 4, 5); // supervisor write, WP=0: allowed by the guest
      expect(vcpu.memory.read32(0x900000)).toBe(5);
      const st = mmu.states[0]!;
      const leaf = findLeaf(mmu, st.root!, USER);
      expect(leaf & (SPTE_W | 4)).toBe(SPTE_W); // W=1, U=0
      // A user read flips it back to U=1, W=0 (one more exit), and no fault loop.
      expect(userRead(vcpu, USER)).toBe(5);
      expect(findLeaf(mmu, st.root!, USER) & (SPTE_W | 4)).toBe(4);
      expect(h.e('pf')).toBe(2);
    });
  });

  describe('.trackWrite', () => {
    it('32-bit guest: a write to PTE 700 clears spte 188 of the quadrant-1 page only', () => {
      const { h, pt, vcpu, mmu } = setup('legacy32');
      const base = 0x40000000; // PDE 256
      for (const i of [188, 700]) pt.map(base + i * 4096, 0x900000 + i * 4096, P | W | U | A);
      userRead(vcpu, base + 188 * 4096); // quadrant 0 page, spte 188
      userRead(vcpu, base + 700 * 4096); // quadrant 1 page, spte 188 (700 - 512)
      const ptGfn = pt.r32(pt.entryAddr(base, 2)) >>> 12;
      const pages = mmu.indirectPagesOf(ptGfn);
      expect(pages.map((sp) => roleQuadrant(sp.role)).sort()).toEqual([0, 1]);
      const q0 = pages.find((sp) => roleQuadrant(sp.role) === 0)!;
      const q1 = pages.find((sp) => roleQuadrant(sp.role) === 1)!;
      expect(mmu.pool.lo(q0.base + 188) & SPTE_P).toBe(SPTE_P);
      expect(mmu.pool.lo(q1.base + 188) & SPTE_P).toBe(SPTE_P);
      h.reset();
      // One exit: the kernel's store to PTE 700 (gpa offset 2800 -> 8-byte offset 5600 -> quadrant 1, spte 188).
      vcpu.write(pt.entryAddr(base + 700 * 4096, 1), 4, (0x950000 | P | W | U) >>> 0);
      expect(h.e('pf')).toBe(1);
      expect(mmu.pool.lo(q1.base + 188) & SPTE_P).toBe(0);
      expect(mmu.pool.lo(q0.base + 188) & SPTE_P).toBe(SPTE_P); // the quadrant-0 alias is left alone
      // A present spte disappeared: exactly one remote flush.
      expect(h.c('remote_tlb_flush')).toBe(1);
      expect(h.c('tlb_flush')).toBe(1);
      vcpu.memory.write32(0x950000, 0x1234);
      expect(userRead(vcpu, base + 700 * 4096)).toBe(0x1234);
    });

    it('32-bit guest: a write to a PDE clears the two shadow PDEs it is made of', () => {
      const { h, pt, vcpu, mmu } = setup('legacy32');
      const va = 300 * 0x400000; // PDE 300: quadrant 1, shadow PDEs 88 and 89
      pt.map(va, 0x900000, P | W | U | A);
      pt.map(va + 0x200000, 0x901000, P | W | U | A);
      userRead(vcpu, va);
      userRead(vcpu, va + 0x200000);
      const q1 = mmu.states[0]!.paeRoots[1]!;
      expect(roleQuadrant(q1.role)).toBe(1);
      expect(q1.role & ROLE_4BYTE_GPTE).toBe(ROLE_4BYTE_GPTE);
      expect(mmu.pool.lo(q1.base + 88) & SPTE_P).toBe(SPTE_P);
      expect(mmu.pool.lo(q1.base + 89) & SPTE_P).toBe(SPTE_P);
      h.reset();
      // A byte write into byte 2 of PDE 300 (offset 1202 -> &~7 -> 2400 -> 4800: quadrant 1, sptes 88, 89).
      const pde = pt.entryAddr(va, 2);
      vcpu.write(pde + 2, 1, pt.r32(pde) >>> 16);
      expect(h.e('pf')).toBe(1);
      expect(mmu.pool.lo(q1.base + 88) & SPTE_P).toBe(0);
      expect(mmu.pool.lo(q1.base + 89) & SPTE_P).toBe(0);
      // gentry is 0 for a 1-byte write, so no mmu_pde_zapped; a 4-byte rewrite of the PDE counts 2.
      expect(h.c('mmu_pde_zapped')).toBe(0);
      userRead(vcpu, va);
      userRead(vcpu, va + 0x200000);
      vcpu.write(pde, 4, pt.r32(pde));
      expect(h.c('mmu_pde_zapped')).toBe(2);
    });

    it('a 4-byte store across two 8-byte gptes clears both sptes (KVM widens it to the first gpte only)', () => {
      const { h, pt, vcpu, mmu } = setup('long4');
      pt.map(USER + 0x3000, 0x7f0000, P | W | U); // keeps the guest PT shadowed
      const e0 = pt.map(USER, 0x900000, P | W | U | A);
      const e1 = pt.map(USER + 0x1000, 0x901000, P | W | U | A);
      expect(e1).toBe(e0 + 8);
      userRead(vcpu, USER);
      userRead(vcpu, USER + 0x1000);
      const root = mmu.states[0]!.root!;
      expect(findLeaf(mmu, root, USER) & SPTE_P).toBe(SPTE_P);
      expect(findLeaf(mmu, root, USER + 0x1000) & SPTE_P).toBe(SPTE_P);
      h.reset();
      // A kernel store of 4 zero bytes at e0+6: bytes 6-7 of gpte 0 (already 0) and bytes 0-1 of gpte 1, whose
      // P goes. One exit, emulated. KVM's mmu_pte_write_fetch_gpte widens a 4-byte write under PAE to the
      // aligned 8 bytes at e0, so get_written_sptes would clear gpte 0's spte only and leave gpte 1's present:
      // the guest would go on reading through a pte it cleared, even after a CR3 reload (SDM Vol. 3A §4.10.4).
      // Here the store is misaligned (it writes two gptes) and both sptes are cleared.
      vcpu.write(e0 + 6, 4, 0);
      expect(h.e('pf')).toBe(1);
      expect(h.c('pf_emulate')).toBe(1);
      expect(pt.r32(e1) & P).toBe(0);
      expect(findLeaf(mmu, root, USER) & SPTE_P).toBe(0);
      expect(findLeaf(mmu, root, USER + 0x1000) & SPTE_P).toBe(0);
      // Guest-visible: after a CR3 reload the user read of the cleared page faults (U, not present: 4).
      expect(faultsAfterReload(vcpu, pt, USER + 0x1000)).toEqual([4]);
    });

    it('32-bit guest: an 8-byte store over three 4-byte gptes clears all three sptes, the middle one too', () => {
      const { h, pt, vcpu, mmu } = setup('legacy32');
      const e1 = pt.map(USER + 0x1000, 0x901000, P | W | U | A);
      const e2 = pt.map(USER + 0x2000, 0x902000, P | W | U | A);
      const e3 = pt.map(USER + 0x3000, 0x903000, P | W | U | A);
      expect([e2 - e1, e3 - e2]).toEqual([4, 4]);
      for (const va of [USER + 0x1000, USER + 0x2000, USER + 0x3000]) userRead(vcpu, va);
      const root = mmu.states[0]!.paeRoots[1]!; // USER is at 1 GiB: quadrant root 1
      for (const va of [USER + 0x1000, USER + 0x2000, USER + 0x3000]) expect(findLeaf(mmu, root, va) & SPTE_P).toBe(SPTE_P);
      h.reset();
      // 8 zero bytes at e1+2: bytes 2-3 of gpte 1, all of gpte 2, bytes 0-1 of gpte 3. One exit, emulated;
      // the store is misaligned, and every gpte it wrote loses its spte (the first and the last byte's gptes
      // alone would leave gpte 2's, whose page the guest has just unmapped).
      vcpu.write(e1 + 2, 8, 0, 0);
      expect(h.e('pf')).toBe(1);
      expect([pt.r32(e1) & P, pt.r32(e2), pt.r32(e3) & P]).toEqual([P, 0, 0]);
      for (const va of [USER + 0x1000, USER + 0x2000, USER + 0x3000]) expect(findLeaf(mmu, root, va) & SPTE_P).toBe(0);
      expect(faultsAfterReload(vcpu, pt, USER + 0x2000)).toEqual([4]);
    });

    it('property: after any store into a shadowed guest PT (any offset, 1 to 8 bytes), no spte outlives its gpte', () => {
      // The auditor compares every present leaf spte with the guest tables (audit.ts item 1): a store whose
      // written gptes were not all cleared leaves an spte that maps what its gpte no longer says.
      const modes = ['legacy32', 'pae', 'long4'] as const;
      const store = fc.record({ offset: fc.nat(4095), size: fc.constantFrom(1, 2, 4, 8), lo: fc.nat(0xffffffff), hi: fc.nat(0xffffffff) });
      fc.assert(
        fc.property(fc.constantFrom(...modes), fc.array(store, { minLength: 1, maxLength: 12 }), (mode, stores) => {
          const { pt, vcpu, mmu } = setup(mode);
          // Twelve user pages through one guest PT, each read once so that its leaf spte exists.
          let e0 = -1;
          for (let i = 0; i < 12; i++) {
            const e = pt.map(USER + i * 0x1000, 0x900000 + i * 0x1000, P | W | U | A);
            if (i === 0) e0 = e;
            userRead(vcpu, USER + i * 0x1000);
          }
          const ptPage = e0 - (e0 & 0xfff);
          vcpu.setExceptionHandler(PF_VECTOR, () => {
            throw new Error("no guest #PF is expected: the stores are the kernel's, to its own direct map");
          });
          for (const { offset, size, lo, hi } of stores) {
            const at = Math.min(offset, 4096 - size); // within the page
            vcpu.write(ptPage + at, size, size === 8 ? lo : lo % 2 ** (8 * size), size === 8 ? hi : 0);
            mmu.audit();
            // Re-read the user pages the guest still maps (reads through cleared sptes build them again).
            for (let i = 0; i < 12; i++) {
              const e = pt.entryAddr(USER + i * 0x1000, 1);
              const gLo = pt.r32(e);
              const gHi = mode === 'legacy32' ? 0 : pt.r32(e + 4);
              if ((gLo & (P | U)) === (P | U) && (gLo & 0xfffff000) === 0x900000 + i * 0x1000 && gHi === 0) userRead(vcpu, USER + i * 0x1000);
            }
            mmu.audit();
          }
        }),
        { numRuns: 60 },
      );
    });

    it('keeps byte-wise pte writes correct: the spte follows the whole gpte, never a partial value', () => {
      for (const decision of ['zap-spte', 'update-spte'] as const) {
        const { h, pt, vcpu } = setup('long4');
        h.decider = (ev) => (ev.kind === 'pte-write' ? decision : null);
        vcpu.memory.write32(0x900000, 0xaaaa);
        vcpu.memory.write32(0x9a0000, 0xbbbb);
        pt.map(USER + 0x3000, 0x7f0000, P | W | U); // keeps the guest PT shadowed
        const e = pt.map(USER, 0x900000, P | W | U | A);
        userRead(vcpu, USER + 0x3000);
        expect(userRead(vcpu, USER)).toBe(0xaaaa);
        // The kernel moves the pte to frame 0x9a0000 one byte at a time (bytes 2 then 1): each store is
        // emulated; a 1-byte write has no gentry, so the spte is only cleared, never built from half a pte.
        vcpu.write(e + 2, 1, 0x9a);
        vcpu.write(e + 1, 1, 0x00);
        expect(h.c('mmu_pte_updated')).toBe(0);
        expect(userRead(vcpu, USER)).toBe(0xbbbb);
        // `andb` clearing A (bit 5) in byte 0: an aligned 1-byte write is not misaligned, and A=0 is never installed.
        vcpu.write(e, 1, pt.r32(e) & ~A & 0xff);
        expect(userRead(vcpu, USER)).toBe(0xbbbb);
        expect(pt.r32(e) & A).toBe(A); // the fault's walk set A again
      }
    });

    it('update-spte installs a full-size write of a present, accessed pte at once (2 exits per demand fault)', () => {
      const { h, pt, vcpu } = setup('long4');
      h.decider = (ev) => (ev.kind === 'pte-write' ? 'update-spte' : null);
      demandPager(vcpu, pt);
      let next = 0x800000;
      vcpu.setExceptionHandler(PF_VECTOR, (v, _vec, _ec, cr2) => {
        v.write(pt.entryAddr(cr2, 1), 8, (next | P | W | U | A) >>> 0, 0);
        next += 4096;
      });
      pt.map(USER + 0x1000, 0x7ff000, P | W | U);
      userRead(vcpu, USER + 0x1000);
      h.reset();
      // Exit 1: reflect. Exit 2: the emulated pte write, which installs the spte. The re-execution hits.
      userRead(vcpu, USER);
      expect(h.e('pf')).toBe(2);
      expect(h.c('mmu_pte_updated')).toBe(1);
    });

    it('update-spte flushes the TLBs only when the spte loses rights (KVM need_remote_flush), not when it keeps or gains them', () => {
      const { h, pt, vcpu, mmu } = setup('long4', { vcpus: 2 });
      h.decider = (ev) => (ev.kind === 'pte-write' ? 'update-spte' : null);
      const e = pt.map(USER, 0x900000, P | U | A); // read-only
      userRead(vcpu, USER); // a read-only leaf; the guest PT is shadowed (write-protected)
      const loc = findLeafLoc(mmu, mmu.states[0]!.root!, USER);
      expect(mmu.pool.lo(loc) & (SPTE_P | SPTE_W)).toBe(SPTE_P);
      // Each kernel store of the 8-byte pte is one exit (the PT is write-protected), emulated; the write hook
      // clears the spte and installs the new gpte at once (mmu_pte_updated).
      // 1. W and D added: the new spte is writable, a superset of the old rights: no flush (a TLB entry with
      //    fewer rights only misses, and the walk of the new spte succeeds).
      h.reset();
      vcpu.write(e, 8, (0x900000 | P | W | U | A | D) >>> 0, 0);
      expect([h.e('pf'), h.c('mmu_pte_updated'), h.c('remote_tlb_flush'), h.c('tlb_flush')]).toEqual([1, 1, 0, 0]);
      expect(mmu.pool.lo(loc) & (SPTE_P | SPTE_W)).toBe(SPTE_P | SPTE_W);
      userWrite(vcpu, USER, 5); // no exit: the TLB misses on W and the hardware walk finds the writable spte
      expect(h.e('pf')).toBe(1);
      // 2. The same pte stored again: the same rights, no flush.
      vcpu.write(e, 8, (0x900000 | P | W | U | A | D) >>> 0, 0);
      expect([h.e('pf'), h.c('mmu_pte_updated'), h.c('tlb_flush')]).toEqual([2, 2, 0]);
      // 3. W removed: the spte lost a right: one remote flush, every vCPU's TLB (2 tlb_flush).
      vcpu.write(e, 8, (0x900000 | P | U | A) >>> 0, 0);
      expect([h.e('pf'), h.c('mmu_pte_updated'), h.c('remote_tlb_flush'), h.c('tlb_flush')]).toEqual([3, 3, 1, 2]);
      expect(mmu.pool.lo(loc) & (SPTE_P | SPTE_W)).toBe(SPTE_P);
      // 4. Another frame: the old translation must go (flush), whatever the rights.
      vcpu.write(e, 8, (0x901000 | P | W | U | A | D) >>> 0, 0);
      expect([h.e('pf'), h.c('remote_tlb_flush'), h.c('tlb_flush')]).toEqual([4, 2, 4]);
      // With the default zap-spte the spte disappears on every write: always a flush of a present spte.
      h.decider = null;
      vcpu.write(e, 8, (0x901000 | P | W | U | A | D) >>> 0, 0);
      expect([h.e('pf'), h.c('remote_tlb_flush')]).toEqual([5, 3]);
    });

    it('takes the stored value as the gpte only when nothing ran since the store; otherwise reads the gpte again (kvm_mmu_track_write)', () => {
      const { h, pt, vcpu, mmu } = setup('long4');
      h.decider = (ev) => (ev.kind === 'pte-write' ? 'update-spte' : null);
      const e = pt.map(USER, 0x900000, P | U | A); // read-only
      userRead(vcpu, USER); // a read-only leaf; the guest PT is shadowed (write-protected)
      const loc = findLeafLoc(mmu, mmu.states[0]!.root!, USER);
      const readOnly = (0x900000 | P | U | A) >>> 0;
      const writable = (0x900000 | P | W | U | A | D) >>> 0;
      // A vCPU stored `readOnly`, and before its write hook took mmu_lock another vCPU stored `writable` there
      // (the race scenarios' pte writer: store, then the lock, then the hook). The hook installs what memory
      // holds, as KVM's re-read of the gpte under mmu_lock does.
      pt.w64(e, writable, 0);
      pteWrite(mmu, vcpu, e, 8, readOnly, 0, readOnly, 0, false);
      expect(mmu.pool.lo(loc) & (SPTE_P | SPTE_W)).toBe(SPTE_P | SPTE_W);
      // The emulator's store, then its hook with nothing in between (justStored): memory holds the value
      // stored, so the hook takes it without reading. Shown here by a value memory does not hold.
      pteWrite(mmu, vcpu, e, 8, writable, 0, readOnly, 0, true);
      expect(mmu.pool.lo(loc) & (SPTE_P | SPTE_W)).toBe(SPTE_P);
      expect(h.c('mmu_pte_updated')).toBe(2);
    });
  });

  describe('.emulationFailed', () => {
    it('unprotects a recycled page table and lets the guest retry', () => {
      const { h, pt, vcpu, mmu } = setup('long4');
      pt.map(USER, 0x900000, P | W | U);
      userRead(vcpu, USER);
      const pteAddr = pt.entryAddr(USER, 1);
      const ptPage = pteAddr - (pteAddr % 4096);
      // The guest tears the PT out of its tables (one emulated PDE write) and recycles the page as data.
      const pde = pt.entryAddr(USER, 2);
      vcpu.write(pde, 8, 0, 0);
      expect(mmu.writeTrack.has(ptPage / 4096)).toBe(true); // the orphan shadow page still protects it
      h.reset();
      // A 16-byte vector store the emulator cannot do: emulation fails -> the gfn is unprotected -> retry,
      // which faults once more on the read-only spte and gets a writable one.
      vcpu.repStos(ptPage, 4, 16, 0x11111111, 0x22222222);
      expect(h.e('emulation-failed')).toBe(1);
      expect(mmu.writeTrack.has(ptPage / 4096)).toBe(false);
      expect(mmu.indirectPagesOf(ptPage / 4096)).toEqual([]);
      expect(vcpu.memory.read32(ptPage + 60)).toBe(0x22222222);
      expect(h.e('pf')).toBe(2);
    });
  });

  describe('.crWritten', () => {
    it('ignores junk in not-present PDPTEs; a present PDPTE with a reserved bit is #GP and keeps the old roots', () => {
      const { h, pt, vcpu, mmu } = setup('pae');
      const pdpt = pt.alloc();
      const pd = pt.alloc();
      pt.w64(pdpt, pt.r32(pt.root) /* PDPTE 0: the kernel's PD */, 0);
      pt.w64(pdpt + 8, pd | P, 0);
      pt.w64(pdpt + 16, 0xdeadbee0, 0xffffffff); // not present: junk is ignored (Solaris)
      pt.w64(pdpt + 24, 0, 0);
      // Exit 1, the MOV to CR3 (CR3-load exiting): the vCPU loaded the four PDPTE registers from the new
      // PDPT (SDM Vol. 3A §4.4.1); PDPTEs 2 and 3 are not present, so the junk in PDPTE 2's other bits is never
      // checked. kvm_mmu_new_pgd builds PAE roots for the present PDPTEs only: PDPTE 0 is the kernel's PD,
      // whose root page already exists (found by gfn and role), PDPTE 1 a new PD (one mmu_cache_miss).
      h.reset();
      vcpu.movToCr3(pdpt);
      const st = mmu.states[0]!;
      expect(st.paeRoots.map((sp) => sp !== null)).toEqual([true, true, false, false]);
      expect([h.e('cr3'), h.c('mmu_cache_miss')]).toEqual([1, 1]);
      // An access through the junk PDPTE is the guest's own not-present #PF. Exit 2: the shadow's PAE root 2
      // is not present, so the user read faults with P=0 U=1 (error code 4) and exits; the MMU's guest walk
      // stops at the guest's PDPTE 2 register (P=0) and injects that #PF with the walker's error code 4
      // (pf_guest); the guest's handler gives up (Abort). No shadow page is built for it.
      const seen: number[] = [];
      vcpu.setExceptionHandler(PF_VECTOR, (_v, _vec, ec) => {
        seen.push(ec);
        throw new Abort();
      });
      expect(() => userRead(vcpu, 0x80000000)).toThrow(Abort);
      expect([h.e('pf'), h.c('pf_guest'), h.c('mmu_cache_miss')]).toEqual([1, 1, 1]);
      expect(seen).toEqual([4]);
      // A present PDPTE with bit 5 set: the guest sees #GP(0), and CR3 and the roots stay. The exits: the MOV
      // to CR3 is intercepted (CR3-load exiting / the CR3 write intercept), and that exit comes before the
      // #GP of the PDPTE load (SDM Vol. 3C §26.1.1: only #UD, privilege and I/O-permission faults have
      // priority over a VM exit). Exit 1, the CR3 write: the handler's load_pdptrs fails and it injects #GP
      // (KVM kvm_set_cr3 -> kvm_complete_insn_gp) without telling the MMU, so no root changes. The injected
      // #GP is delivered on VM entry (no #GP intercept): no second exit.
      const bad = pt.alloc();
      pt.w64(bad, pt.r32(pt.root) | 0x20, 0);
      let gp = 0;
      vcpu.setExceptionHandler(GP_VECTOR, () => {
        gp++;
      });
      const roots = st.paeRoots.slice();
      const exits = h.e('cr3');
      vcpu.movToCr3(bad);
      expect(gp).toBe(1);
      expect(vcpu.cr3).toBe(pdpt);
      expect(h.e('cr3')).toBe(exits + 1);
      expect(st.paeRoots).toEqual(roots);
    });

    it('switches back to a cached 64-bit root without rebuilding it (prev_roots)', () => {
      const { h, pt, vcpu, mmu } = setup('long4');
      pt.map(USER, 0x900000, P | W | U);
      userRead(vcpu, USER);
      const root1 = mmu.states[0]!.root!;
      const pt2 = new GuestTables(pt.machine, 'long4', 0x300000);
      for (let va = 0; va < 0x400000; va += 4096) pt2.map(va, va, P | W);
      vcpu.movToCr3(pt2.root);
      expect(mmu.states[0]!.root).not.toBe(root1);
      vcpu.movToCr3(pt.root);
      expect(mmu.states[0]!.root).toBe(root1);
      h.reset();
      userRead(vcpu, USER); // the TLB was flushed by MOV CR3, but the shadow tables are still there
      expect(h.e('pf')).toBe(0);
    });

    it('gives pages of another CR0.WP another role', () => {
      const { pt, vcpu, mmu } = setup('long4');
      pt.map(USER, 0x900000, P | W | U);
      userRead(vcpu, USER);
      const before = mmu.states[0]!.root!;
      vcpu.movToCr0(CR0_PG | 1);
      const after = mmu.states[0]!.root!;
      expect(after).not.toBe(before);
      expect(after.gfn).toBe(before.gfn);
      expect(after.role ^ before.role).toBe(1 << 13); // cr0_wp
      vcpu.movToCr0(CR0_PG | CR0_WP | 1);
      expect(mmu.states[0]!.root).toBe(before); // found again by (gfn, role)
    });
  });

  describe('.prepareZap', () => {
    it('marks a root in use invalid instead of freeing it; its vCPUs reload, and the last release frees it', () => {
      const { h, pt, machine, mmu } = setup('long4', { vcpus: 2 });
      const [v0, v1] = machine.vcpus as [Vcpu, Vcpu];
      pt.map(USER, 0x900000, P | W | U);
      userRead(v0, USER);
      const root = mmu.states[0]!.root!;
      expect(mmu.states[1]!.root).toBe(root); // both vCPUs run on the guest's one PML4
      expect(root.rootCount).toBe(2);
      const used = mmu.usedPages;
      // A zap of the root's gfn (a recycled page table, a flood): the page is in use, so it only becomes
      // invalid (KVM role.invalid), leaves the hash, and both vCPUs are asked to reload (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS).
      mmu.prepareZap(root);
      expect(root.role & ROLE_INVALID).toBe(ROLE_INVALID);
      expect(mmu.invalidRoots.has(root)).toBe(true);
      expect(mmu.pages[root.frame]).toBe(root);
      expect(mmu.usedPages).toBe(used);
      expect(mmu.states.map((s) => s.needReload)).toEqual([true, true]);
      mmu.audit(); // an invalid root still in use is consistent
      // The next exit (vCPU 1 reads a page its TLB does not hold: the zapped root's sptes are all trap, so
      // it faults, P=0) starts with the reloads: vCPU 0 releases the invalid root (count 1) and gets a new
      // page for the same gfn (one mmu_cache_miss), vCPU 1 releases it (count 0: freed, after the one remote
      // flush of the sptes the zap removed) and finds the new page. Then the fault links the PDPT, PD and PT
      // below the new root: the zap unlinked them from the old root but they stayed (no other miss).
      h.reset();
      pt.map(USER + 0x1000, 0x901000, P | W | U);
      userRead(v1, USER + 0x1000);
      const fresh = mmu.states[0]!.root!;
      expect(fresh).not.toBe(root);
      expect(fresh.gfn).toBe(root.gfn);
      expect(mmu.states[1]!.root).toBe(fresh);
      expect(fresh.rootCount).toBe(2);
      expect(root.rootCount).toBe(0);
      expect(mmu.pages[root.frame]).not.toBe(root);
      expect(mmu.invalidRoots.size).toBe(0);
      expect([h.e('pf'), h.c('mmu_cache_miss'), h.c('remote_tlb_flush'), h.c('tlb_flush')]).toEqual([1, 1, 1, 2]);
    });
  });

  describe('.reservePages', () => {
    it('reclaims the oldest pages under a tiny budget and never frees a root', () => {
      const { h, pt, vcpu, mmu } = setup('long4', { maxMmuPages: 8 });
      const root = mmu.states[0]!.root!;
      expect(mmu.usedPages).toBe(1); // the kernel has not run yet: only the PML4 root
      // 12 pages, each in its own 1 GiB region (PML4 entry 0, PDPT entry i + 1), one exit each: the user read
      // faults (P=0: no spte below the root), the guest walk succeeds and the fetch builds the missing levels.
      // Touch 1: 7 pages free, no reclaim; the PDPT, the region's PD and PT are built (3 misses, 4 in use).
      // Touch 2..12: 4 free < KVM_MIN_FREE_MMU_PAGES, so the fault first zaps from the oldest end towards
      // KVM_REFILL_PAGES free: every page but the root, i.e. the PDPT, PD and PT of the last touch (3
      // recycled); then the walk needs the PDPT, a PD and a PT again (3 misses). The root is never a candidate.
      for (let i = 0; i < 12; i++) {
        const va = (i + 1) * 0x40000000;
        pt.map(va, 0x900000 + i * 4096, P | W | U);
        vcpu.memory.write32(0x900000 + i * 4096, 0x100 + i);
        expect(userRead(vcpu, va)).toBe(0x100 + i);
        expect(mmu.usedPages).toBe(4);
      }
      expect(h.e('pf')).toBe(12);
      expect(h.c('mmu_recycled')).toBe(11 * 3);
      expect(h.c('mmu_shadow_zapped')).toBe(11 * 3);
      expect(h.c('mmu_cache_miss')).toBe(12 * 3);
      expect(mmu.states[0]!.root).toBe(root);
      expect(mmu.pages[root.frame]).toBe(root);
    });

    it('reclaims when fewer than KVM_MIN_FREE_MMU_PAGES (5) are free, and then up to KVM_REFILL_PAGES (25) free', () => {
      const { h, pt, vcpu, mmu } = setup('long4', { maxMmuPages: 40 });
      // As above, one exit per touch of a new 1 GiB region: the first builds the PDPT, a PD and a PT, each
      // later one a PD and a PT. 17 touches: 1 + 3 + 16 * 2 = 36 pages in use, 4 free, nothing reclaimed
      // (the 17th fault started with 6 free, not fewer than 5).
      const touch = (i: number): void => {
        const va = (i + 1) * 0x40000000;
        pt.map(va, 0x900000 + i * 4096, P | W | U);
        userRead(vcpu, va);
      };
      for (let i = 0; i < 17; i++) touch(i);
      expect([mmu.availablePages, h.c('mmu_recycled')]).toEqual([KVM_MIN_FREE_MMU_PAGES - 1, 0]);
      // Touch 18: 4 free < 5, so make_mmu_pages_available zaps the 21 oldest pages (the PDPT and the PD and
      // PT of the first 10 touches) to reach exactly 25 free; then the walk builds the PDPT, a PD and a PT.
      touch(17);
      expect(h.c('mmu_recycled')).toBe(KVM_REFILL_PAGES - (KVM_MIN_FREE_MMU_PAGES - 1));
      expect(mmu.availablePages).toBe(KVM_REFILL_PAGES - 3);
      // 22 free: no reclaim again until fewer than 5 are free.
      touch(18);
      expect(h.c('mmu_recycled')).toBe(21);
      expect(h.e('pf')).toBe(19);
    });

    it('reclaims only on the way to FNAME(fetch): not for a fault injected into the guest, nor for an emulated page-table write', () => {
      // KVM FNAME(page_fault) (paging_tmpl.h): walk_addr, then the guest's own #PF is injected (RET_PF_RETRY), and
      // a write to a page table that an upper-level page write-tracks is emulated (page_fault_handle_page_track),
      // both before make_mmu_pages_available, which only the faults that go on to FNAME(fetch) reach.
      const { h, pt, vcpu, mmu } = setup('long4', { maxMmuPages: 10 });
      pt.map(0x40000000, 0x900000, P | W | U); // the guest builds a PD and a PT for the region at 1 GiB
      const pde = pt.entryAddr(0x40000000, 2);
      // Exit 1: the kernel reads that PD through its identity map (P=0: the fetch builds the kernel's PDPT, PD and
      // PT; the PD's gfn is not shadowed yet, so its spte is writable). 4 pages in use, 6 free.
      expect(vcpu.read(pde, 4)).toBe(pt.r32(pde));
      // Exit 2: a user read at 1 GiB: the fetch finds the PDPT and builds a PD and a PT (6 free: no reclaim);
      // shadowing the guest PD write-protects it, the kernel's spte included. 6 in use, 4 free (fewer than 5).
      userRead(vcpu, 0x40000000);
      expect([mmu.usedPages, mmu.availablePages, h.c('mmu_recycled')]).toEqual([6, 4, 0]);
      h.reset();
      // Exit 3: a user read the guest never mapped (no spte: P=0; the guest walk fails): the #PF is injected
      // (pf_guest) and the guest's handler gives up. Nothing is reclaimed.
      vcpu.setExceptionHandler(PF_VECTOR, () => {
        throw new Abort();
      });
      expect(() => userRead(vcpu, 0x80000000)).toThrow(Abort);
      expect([h.e('pf'), h.c('pf_guest'), h.c('mmu_recycled'), mmu.usedPages]).toEqual([1, 1, 0, 6]);
      // Exit 4: the kernel stores the PDE again, through its now read-only spte (P=1, W): the PD is tracked by a
      // level-2 shadow page, so the store is emulated (pf_emulate), and still nothing is reclaimed.
      vcpu.write(pde, 4, pt.r32(pde));
      expect([h.e('pf'), h.c('pf_emulate'), h.c('mmu_recycled')]).toEqual([2, 1, 0]);
      // Exit 5: a user read of a new region at 3 GiB goes on to the fetch: 4 free < 5, so before it the reclaim
      // asks for KVM_REFILL_PAGES - 4 = 21 pages and zaps all 5 that are not the root (the kernel's PDPT, PD and
      // PT, the user PD and PT); the fetch then builds a PDPT, a PD and a PT again (3 misses): 4 in use.
      pt.map(0xc0000000, 0x902000, P | W | U);
      userRead(vcpu, 0xc0000000);
      expect([h.e('pf'), h.c('mmu_recycled'), h.c('mmu_cache_miss'), mmu.usedPages]).toEqual([3, 5, 3, 4]);
      auditShadowMmu(mmu, { full: true });
    });

    it('counts the pages a fault has just prepared for zapping as free when it reserves pages for the fetch', () => {
      // KVM takes a page off n_used_mmu_pages when it prepares the zap (__kvm_mmu_prepare_zap_page ->
      // kvm_unaccount_mmu_page), before the commit: make_mmu_pages_available then sees it as free.
      const { h, pt, vcpu, mmu } = setup('long4', { maxMmuPages: 10 });
      pt.map(0x40000000, 0x900000, P | W | U);
      const pte = pt.entryAddr(0x40000000, 1);
      const ptGpa = pte - (pte % 4096);
      pt.map(0x40001000, ptGpa, P | W | U); // a user mapping of the guest PT of that region itself
      // The kernel reads the region's PD (its PDPT, PD and PT built), then the user reads the region (a PD and a
      // PT built; the guest PT is shadowed): 6 in use, 4 free.
      vcpu.read(pt.entryAddr(0x40000000, 2), 4);
      userRead(vcpu, 0x40000000);
      expect([mmu.usedPages, mmu.availablePages]).toEqual([6, 4]);
      h.reset();
      // One exit: a user store into the guest PT through the alias, which the fetch finds write-protected (the
      // gfn is shadowed). The tracked-write decision unprotects it (KVM 2007's user-mode write hint): its one
      // shadow page, the user PT, is prepared for zapping, so 5 pages are free to the reservation that follows
      // (not fewer than 5: nothing reclaimed), and the fetch maps the store writable.
      h.decider = (ev) => (ev.kind === 'tracked-write' ? true : null);
      userWrite(vcpu, 0x40001000 + (pte % 4096) + 8, 0);
      expect([h.e('pf'), h.c('mmu_shadow_zapped'), h.c('mmu_recycled')]).toEqual([1, 1, 0]);
      auditShadowMmu(mmu, { full: true });
    });

    it('PAE and 32-bit guests under a tiny budget: reclaim never frees a PAE root or a quadrant root', () => {
      for (const mode of ['pae', 'legacy32'] as const) {
        const { h, pt, vcpu, mmu } = setup(mode, { maxMmuPages: 8 });
        // The four roots (PAE: one PD per PDPTE; 32-bit: the one guest PD in four quadrant pages) fill half the budget.
        const roots = mmu.states[0]!.paeRoots.slice();
        expect(roots.every((sp) => sp !== null)).toBe(true);
        expect(mmu.usedPages).toBe(4);
        // 10 user pages, each in its own guest PT (2 MiB / 4 MiB apart), one exit each (P=0, guest walk
        // succeeds, one PT page built below a root). Touch 1 starts with 4 free < 5: the reclaim finds nothing
        // but roots and zaps nothing; every later touch zaps the one PT of the touch before (1 recycled).
        for (let i = 0; i < 10; i++) {
          const va = USER + i * 0x400000;
          pt.map(va, 0x900000 + i * 4096, P | W | U);
          vcpu.memory.write32(0x900000 + i * 4096, 0x200 + i);
          expect(userRead(vcpu, va)).toBe(0x200 + i);
        }
        expect([h.e('pf'), h.c('mmu_recycled'), h.c('mmu_cache_miss')]).toEqual([10, 9, 10]);
        expect(mmu.states[0]!.paeRoots).toEqual(roots);
        for (const sp of roots) {
          expect(mmu.pages[sp!.frame]).toBe(sp);
          expect(sp!.zapped).toBe(false);
        }
        // The earliest page is still reachable: rebuilt below its root on the next touch.
        expect(userRead(vcpu, USER)).toBe(0x200);
      }
    });

    it('64-bit guest under a tiny budget: the pinned previous roots are never freed, and a switch back finds them', () => {
      const { h, pt, vcpu, mmu } = setup('long4', { maxMmuPages: 10 });
      const a = mmu.states[0]!.root!;
      // Three more address spaces: each MOV CR3 exits and misses the cache (a new PML4 root), and the root
      // before it becomes a previous root, pinned (KVM_MMU_NUM_PREV_ROOTS = 3).
      const others = [0x300000, 0x340000, 0x380000].map((base) => new GuestTables(pt.machine, 'long4', base));
      for (const t of others) vcpu.movToCr3(t.root);
      vcpu.movToCr3(pt.root); // back to A: a cache hit, no new root
      const st = mmu.states[0]!;
      expect(st.root).toBe(a);
      const prev = st.prevRoots.map((p) => p.sp);
      expect(prev.map((sp) => sp.gfn)).toEqual([0x380, 0x340, 0x300]);
      expect(mmu.usedPages).toBe(4);
      h.reset();
      // 8 touches of new 1 GiB regions under A, one exit each, 3 pages each (PDPT, PD, PT). Touch 1 starts
      // with 6 free; every later one with 3 free < 5 and zaps the last touch's 3 pages, never a root.
      for (let i = 0; i < 8; i++) {
        const va = (i + 1) * 0x40000000;
        pt.map(va, 0x900000 + i * 4096, P | W | U);
        userRead(vcpu, va);
      }
      expect([h.e('pf'), h.c('mmu_recycled')]).toEqual([8, 7 * 3]);
      for (const sp of [a, ...prev]) {
        expect(mmu.pages[sp.frame]).toBe(sp);
        expect(sp.zapped).toBe(false);
      }
      // A switch to each earlier address space reuses its pinned root (fast_pgd_switch): no cache miss.
      h.reset();
      for (const t of others) vcpu.movToCr3(t.root);
      expect(h.c('mmu_cache_miss')).toBe(0);
      expect(st.root).toBe(prev[0]);
    });

    it('reserves only the PAE roots that are missing, and fails before any state changes when they do not fit', () => {
      // Three vCPUs in a budget of 8: vCPUs 0 and 1 share the four PAE roots of the guest's PDPT A, vCPU 2
      // has four of its own (PDPT B). Every page is a root in use.
      const { h, pt, machine, mmu } = setup('pae', { vcpus: 3, maxMmuPages: 8 });
      const [v0, , v2] = machine.vcpus as [Vcpu, Vcpu, Vcpu];
      const b = new GuestTables(machine, 'pae', 0x300000);
      v2.movToCr3(b.root);
      expect([mmu.usedPages, mmu.availablePages]).toEqual([8, 0]);
      const st = mmu.states[0]!;
      const roots = st.paeRoots.slice();
      expect(roots.every((sp) => sp!.rootCount === 2)).toBe(true);
      // vCPU 0 reloads CR3 = A (one exit): its roots are released and loaded again. They all exist (vCPU 1
      // holds them), so no page is needed and the reload succeeds with 0 free (reserving 4 would fail).
      h.reset();
      v0.movToCr3(pt.root);
      expect([h.e('cr3'), h.c('mmu_cache_miss'), h.c('mmu_recycled')]).toEqual([1, 0, 0]);
      expect(st.paeRoots).toEqual(roots);
      // vCPU 0 loads CR3 = C, four PDs without pages: 4 pages are needed, none is free, and none can be
      // freed (A's pages stay held by vCPU 1, B's by vCPU 2). E_MMU_NOSPC, and the MMU is as it was: vCPU 0
      // keeps its roots, their PDPTE copies and signature, and the root counts.
      const c = new GuestTables(machine, 'pae', 0x380000);
      const before = { signature: st.signature, pdpteLo: Array.from(st.pdpteLo), ctxPdpte: Array.from(st.ctx.pdpteLo), used: mmu.usedPages };
      let err: unknown;
      try {
        v0.movToCr3(c.root);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ShadowMmuError);
      expect((err as ShadowMmuError).code).toBe('E_MMU_NOSPC');
      expect((err as Error).message).toMatch(/needs 4 free pages for the new roots, but only 0 of n_max_mmu_pages=8 are free/);
      expect(st.paeRoots).toEqual(roots);
      expect({ signature: st.signature, pdpteLo: Array.from(st.pdpteLo), ctxPdpte: Array.from(st.ctx.pdpteLo), used: mmu.usedPages }).toEqual(before);
      expect(roots.every((sp) => sp!.rootCount === 2 && mmu.pages[sp!.frame] === sp)).toBe(true);
      expect([h.c('mmu_shadow_zapped'), h.c('mmu_cache_miss')]).toEqual([0, 0]);
      mmu.audit();
      // A new role (CR0.WP cleared: cr0_wp is in the role) needs four new roots too: the same clean failure.
      expect(() => v0.movToCr0(CR0_PG | 1)).toThrow(/needs 4 free pages for the roots of the new mode/);
      expect(st.paeRoots).toEqual(roots);
      expect(st.signature).toBe(before.signature);
      expect(mmu.usedPages).toBe(8);
    });

    it('does not release a zapped root in use before its replacement fits (the vCPU keeps it and reloads later)', () => {
      // As above: vCPUs 0 and 1 share the PAE roots of A, vCPU 2 has B's; all 8 pages are roots in use.
      const { machine, mmu } = setup('pae', { vcpus: 3, maxMmuPages: 8 });
      const [v0, , v2] = machine.vcpus as [Vcpu, Vcpu, Vcpu];
      v2.movToCr3(new GuestTables(machine, 'pae', 0x300000).root);
      const st = mmu.states[0]!;
      const roots = st.paeRoots.slice();
      // Root 0 (the kernel's PD) is zapped while in use: it becomes invalid and both its vCPUs must reload.
      mmu.prepareZap(roots[0]!);
      expect([st.needReload, mmu.states[1]!.needReload]).toEqual([true, true]);
      // vCPU 0's next exit (a kernel read through root 0, whose sptes are now all trap) starts with the reload:
      // a new page for root 0 is needed, and none is free or can be freed (the invalid root is still vCPU 1's).
      // E_MMU_NOSPC before anything is released: vCPU 0 keeps its roots, still to be reloaded.
      expect(() => v0.read(0x1000, 4)).toThrow(ShadowMmuError);
      expect(st.paeRoots).toEqual(roots);
      expect(st.needReload).toBe(true);
      expect(roots[0]!.rootCount).toBe(2);
      expect(mmu.usedPages).toBe(8);
    });

    it('fails cleanly when every page is a root in use', () => {
      const machine = new Machine({ memoryBytes: 16 * 1024 * 1024, vcpus: 2 });
      const mmu = new ShadowMmu({ maxMmuPages: 8 });
      const h = new Harness(machine, mmu);
      mmu.init(h);
      const tables = [new GuestTables(machine, 'legacy32', 0x100000), new GuestTables(machine, 'legacy32', 0x200000)];
      machine.vcpus.forEach((v, i) => {
        for (let va = 0; va < 0x400000; va += 4096) tables[i]!.map(va, va, P | W);
        mmu.attachVcpu(v);
        v.hooks = h;
        v.movToCr3(tables[i]!.root);
        v.movToCr0(CR0_PG | CR0_WP | 1);
      });
      expect(mmu.usedPages).toBe(8); // 4 quadrant roots per vCPU
      const used = mmu.usedPages;
      let err: unknown;
      try {
        machine.vcpus[0]!.read(0x1000, 4);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ShadowMmuError);
      expect((err as ShadowMmuError).code).toBe('E_MMU_NOSPC');
      expect(mmu.usedPages).toBe(used);
      mmu.audit();
    });
  });

  describe('.audit', () => {
    it('reports a writable spte over a write-protected gfn with the spte, the guest pte and the role', () => {
      const { pt, vcpu, mmu } = setup('long4');
      pt.map(USER, 0x900000, P | W | U | D);
      userWrite(vcpu, USER, 1);
      const root = mmu.states[0]!.root!;
      const leafLoc = findLeafLoc(mmu, root, USER);
      // Corrupt: point the leaf at the guest PT page (write-protected) with W set.
      const gpteAt = pt.entryAddr(USER, 1);
      const ptPage = gpteAt & ~0xfff;
      mmu.pool.set(leafLoc, (ptPage | 0x607) >>> 0, 0);
      mmu.rmaps.head(0x900, 1, false)!.remove(leafLoc); // moved to the PT's rmap, so this is the only violation
      mmu.rmaps.head(ptPage / 4096, 1, true)!.add(leafLoc);
      // The report names the spte (index and value), the page's role, and the guest pte behind the spte (its
      // value, level and gpa: the walk's A and D on the user's pte).
      const hex = (n: number): string => n.toString(16);
      expect(() => mmu.audit()).toThrow(
        `shadow MMU audit: a writable spte maps write-protected guest page table gfn 0x${hex(ptPage / 4096)} at spte 0 = 0x00000000${hex(ptPage | 0x607).padStart(8, '0')} ` +
          `of the shadow page for gfn 0x${hex(ptPage / 4096)} role {level=1 gpte=8 quadrant=0 direct=0 access=uwx cr0_wp=1 efer_nx=0 smep_andnot_wp=0 smap_andnot_wp=0} ` +
          `(guest pte 0x0000000000${hex(0x900000 | P | W | U | A | D)} at level 1, gpa 0x${hex(gpteAt)})`,
      );
    });

    it('reports the guest pte of a direct page from a guest walk: the large-page entry it shadows', () => {
      const { pt, vcpu, mmu } = setup('long4');
      const pde = pt.map(USER, 0xa00000, P | W | U | A | D, 2); // a 2 MiB guest page: a direct shadow page below it
      userRead(vcpu, USER + 0x3000);
      const loc = findLeafLoc(mmu, mmu.states[0]!.root!, USER + 0x3000);
      const sp = mmu.pageOfLoc(loc);
      expect(sp.direct).toBe(true);
      mmu.pool.set(loc, ((mmu.pool.lo(loc) & 0xfff) | 0x7ff00000) >>> 0, 0); // outside every memslot
      expect(() => mmu.audit()).toThrow(
        /a leaf spte maps gfn 0x7ff00, outside every memslot at spte 3 = 0x[0-9a-f]{16} of the shadow page for gfn 0xa00 role \{level=1 gpte=8 quadrant=0 direct=1 access=uwx .*\} /,
      );
      expect(() => mmu.audit()).toThrow(`(guest pte 0x0000000000a000e7 at level 2, gpa 0x${pde.toString(16)}, by vCPU 0's guest walk of va 0x40003000)`);
    });
  });
});

class Abort extends Error {}

function findLeafLoc(mmu: ShadowMmu, root: { base: number; level: number }, va: number): number {
  let sp = root;
  for (;;) {
    const shift = 12 + 9 * (sp.level - 1);
    const loc = sp.base + (Math.floor(va / 2 ** shift) & 511);
    if (sp.level === 1) return loc;
    const lo = mmu.pool.lo(loc);
    sp = mmu.pageAt((lo & 0xfffff000) + mmu.pool.hi(loc) * 2 ** 32);
  }
}

function findLeaf(mmu: ShadowMmu, root: { base: number; level: number }, va: number): number {
  return mmu.pool.lo(findLeafLoc(mmu, root, va));
}

describe('levelIndex', () => {
  it("is bits 12+9(l-1) .. 20+9(l-1) of the two's-complement address, for every level of 4- and 5-level paging", () => {
    // The reference: floor division by 2^(12 + 9(l-1)) of the signed-canonical number (exact for |va| < 2^53).
    const reference = (va: number, level: number): number => Math.floor(va / 2 ** (12 + 9 * (level - 1))) & 511;
    // The 57-bit canonical range of 5-level paging, as far as doubles are exact, and the 48-bit one.
    const va = fc.oneof(
      fc.integer({ min: -(2 ** 47), max: 2 ** 47 - 1 }),
      fc.integer({ min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER }),
      fc.integer({ min: 0, max: 2 ** 32 - 1 }),
    );
    fc.assert(
      fc.property(va, fc.integer({ min: 1, max: 5 }), (a, level) => {
        expect(levelIndex(a, level)).toBe(reference(a, level));
      }),
      { numRuns: 2000 },
    );
    // The kernel half of 4-level paging: 0xffff_8880_0000_0000 is PML4 index 273, PDPT 0.
    expect(levelIndex(-0x7780_0000_0000, 4)).toBe(273);
    expect(levelIndex(-0x7780_0000_0000, 3)).toBe(0);
    expect(levelIndex(-1, 5)).toBe(511);
  });
});
