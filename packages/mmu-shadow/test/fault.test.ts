import { RESUME } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { RETRY, SlowPageFault } from '../src/fault.js';
import { A, D, P, setup, W, type Mode } from './harness.js';

// SlowPageFault: KVM's FNAME(page_fault) in its two parts (paging_tmpl.h): the guest walk without mmu_lock, then the
// rest under it, where FNAME(fetch) re-reads each gpte the walk used (FNAME(gpte_changed)) and returns RET_PF_RETRY when
// one changed. The tests change guest memory between the two parts, as another vCPU's store would.

/** The faulting va (a 4 KiB guest page outside the harness's identity-mapped first 4 MiB) and its frames. */
const VA = 0x600000;
const FRAME = 0x900000;
const MOVED = 0xa00000;
/** A write, not present (PFERR_W). */
const WRITE = 2;
/** Bit 9 of a gpte: ignored by the processor (SDM Vol. 3A §4.3-4.5 tables: "Ignored"), so the walk is the same. */
const AVL = 0x200;

function faultSetup(mode: Mode) {
  const t = setup(mode);
  const gpte = t.pt.map(VA, FRAME, P | W | A | D);
  const f = new SlowPageFault(t.mmu, t.vcpu);
  return { ...t, gpte, f };
}

/** The gpa of the gpte of `level` for VA (the tables exist: `faultSetup` mapped VA). */
function gpteAt(t: ReturnType<typeof faultSetup>, level: number): number {
  return t.pt.entryAddr(VA, level);
}

describe('SlowPageFault', () => {
  describe('.locked', () => {
    for (const mode of ['legacy32', 'pae', 'long4'] as const) {
      it(`${mode}: a leaf gpte changed since the walk (its table not shadowed yet): RET_PF_RETRY, counted as pf_taken only; the next fault maps the new frame`, () => {
        const t = faultSetup(mode);
        const { f, h, machine, vcpu } = t;
        expect(f.walk(VA, WRITE)).toBeNull();
        // Another vCPU moves VA to MOVED between the walk and mmu_lock (a plain store: the table is no shadow page yet).
        t.pt.map(VA, MOVED, P | W | A | D);
        expect(f.locked()).toBe(RETRY);
        expect(f.retries).toBe(1);
        // kvm_mmu_do_page_fault: pf_taken for every fault; pf_fixed, pf_spurious, pf_emulate not for RET_PF_RETRY.
        expect([h.c('pf_taken'), h.c('pf_fixed'), h.c('pf_spurious'), h.c('pf_emulate')]).toEqual([1, 0, 0, 0]);
        t.mmu.audit();
        // The guest repeats the access: it faults again, the walk sees the new gpte, and the fetch maps MOVED.
        expect(f.walk(VA, WRITE)).toBeNull();
        expect(f.locked()).toBe(RESUME);
        expect([h.c('pf_taken'), h.c('pf_fixed'), f.retries]).toEqual([2, 1, 1]);
        t.mmu.audit();
        machine.memory.write32(MOVED + 8, 0x1234);
        expect(vcpu.read(VA + 8, 4)).toBe(0x1234);
        expect(h.e('pf')).toBe(0); // through the spte the second fault built: no exit
      });
    }

    it('long4: every level is checked, the top one (the PML4E) before the loop, each other one before its page is linked', () => {
      for (const level of [4, 3, 2, 1]) {
        const t = faultSetup('long4');
        expect(t.f.walk(VA, WRITE)).toBeNull();
        const pa = gpteAt(t, level);
        t.machine.memory.write32(pa, t.machine.memory.read32(pa) | AVL);
        expect(t.f.locked(), `level ${level}`).toBe(RETRY);
        expect(t.h.c('pf_fixed'), `level ${level}`).toBe(0);
      }
    });

    it('long4: a level whose shadow page is linked already is checked too (kvm_mmu_get_child_sp -> -EEXIST)', () => {
      const t = faultSetup('long4');
      // An access to va 0 (same PML4E, PDPTE and PD as VA) links the shadow pages of the PDPT and the PD.
      expect(t.vcpu.read(0, 4)).toBe(0);
      expect(t.h.c('pf_fixed')).toBe(1);
      expect(t.f.walk(VA, WRITE)).toBeNull();
      // The PDPTE changes (a store the MMU does not see, as one into a table not shadowed): the check at level 3
      // runs on the present spte of the root that links the PDPT's page.
      const pa = gpteAt(t, 3);
      t.machine.memory.write32(pa, t.machine.memory.read32(pa) | AVL);
      expect(t.f.locked()).toBe(RETRY);
    });

    it('long4: the high half of a gpte is compared too (8-byte gptes)', () => {
      const t = faultSetup('long4');
      expect(t.f.walk(VA, WRITE)).toBeNull();
      // Bit 52: ignored in a PTE (SDM Vol. 3A §4.5.4, Table 4-20, bits 58:52).
      t.machine.memory.write32(t.gpte + 4, 1 << 20);
      expect(t.f.locked()).toBe(RETRY);
    });

    it('pae: the PDPTEs are registers (loaded with CR3), so a PDPTE changed in memory is no retry; the PDE is the top check', () => {
      // KVM FNAME(fetch): top_level PT32E_ROOT_LEVEL is mapped to PT32_ROOT_LEVEL (the PD), SDM Vol. 3A §4.4.1.
      const t = faultSetup('pae');
      const m = t.machine.memory;
      expect(t.f.walk(VA, WRITE)).toBeNull();
      const pdpte = t.pt.root + (VA >>> 30) * 8;
      m.write32(pdpte, m.read32(pdpte) | AVL);
      expect(t.f.locked()).toBe(RESUME);
      expect([t.h.c('pf_fixed'), t.f.retries]).toEqual([1, 0]);
      const u = faultSetup('pae');
      expect(u.f.walk(VA, WRITE)).toBeNull();
      const pde = gpteAt(u, 2);
      u.machine.memory.write32(pde, u.machine.memory.read32(pde) | AVL);
      expect(u.f.locked()).toBe(RETRY);
    });

    it('legacy32: gptes are 4 bytes: the neighbouring gpte changed is no retry, the PDE and the PTE are', () => {
      const t = faultSetup('legacy32');
      const m = t.machine.memory;
      expect(t.f.walk(VA, WRITE)).toBeNull();
      m.write32(t.gpte + 4, MOVED | P | W | A | D); // the gpte of VA + 4 KiB
      expect(t.f.locked()).toBe(RESUME);
      expect(t.f.retries).toBe(0);
      for (const level of [2, 1]) {
        const u = faultSetup('legacy32');
        expect(u.f.walk(VA, WRITE)).toBeNull();
        const pa = gpteAt(u, level);
        u.machine.memory.write32(pa, u.machine.memory.read32(pa) | AVL);
        expect(u.f.locked(), `level ${level}`).toBe(RETRY);
      }
    });

    it('without the check (a deliberately broken MMU), the fetch maps the frame the walk read, not the one the gpte names', () => {
      const t = faultSetup('long4');
      const f = new SlowPageFault(t.mmu, t.vcpu, false);
      expect(f.walk(VA, WRITE)).toBeNull();
      t.pt.map(VA, MOVED, P | W | A | D);
      expect(f.locked()).toBe(RESUME);
      expect(() => t.mmu.audit()).toThrow(/va 0x600000 maps gpa 0xa00000 in the guest tables but another frame in the shadow/);
    });
  });
});
