import { MODE_LEGACY32, PT_ACCESSED, roleQuadrant } from '@vmexit/core';
import { PROT_READ, PROT_WRITE, VMA_ANON } from '@vmexit/guest';
import type { ShadowMmu } from '@vmexit/mmu-shadow';
import { describe, expect, it } from 'vitest';
import { pteUpdate } from '../src/index.js';
import { decide, pick, pteWrite } from './helpers.js';
import { bootGuest, counterDelta } from './vm.js';

describe('pteUpdate', () => {
  describe('.mmuEvents', () => {
    it('answers update-spte to an aligned level-1 pte write, and passes on upper levels and misaligned writes', async () => {
      expect(await decide(pteUpdate, pteWrite(1, false), {})).toBe('update-spte');
      expect(await decide(pteUpdate, pteWrite(2, false), {})).toBeNull();
      expect(await decide(pteUpdate, pteWrite(1, true), {})).toBeNull();
    });
  });

  describe('on a 32-bit guest (createVm, the guest kernel)', () => {
    // A legacy32 guest table T has 1024 4-byte gptes and is shadowed by two level-1 shadow pages of 512
    // 8-byte sptes, quadrant 0 (gptes 0-511) and quadrant 1 (gptes 512-1023) (KVM role.quadrant,
    // arch/x86/kvm/mmu/mmu.c kvm_mmu_get_child_sp / get_written_sptes). The process maps page 0 of T's 4 MiB (gpte 0, quadrant 0) and page 512 (gpte 512, quadrant 1) and
    // writes both, so both quadrant pages exist. The kernel then stores gpte 1 (quadrant 0's spte 1; in
    // quadrant 1 the same spte index 1 shadows gpte 513) as present and accessed (A=1, so that an update
    // happens at all: an A=0 gpte must fault to get A set).
    async function writeGpte1(policies: { use: string }[]) {
      const g = await bootGuest(
        { backend: 'vmx', mmu: 'shadow', memory: 4 * 1024 * 1024, guest: { mode: 'legacy32', personality: 'linux' }, policies },
        MODE_LEGACY32,
        1,
      );
      const { v, kernel, proc, base } = g;
      const mmu = g.vm.mmu as ShadowMmu;
      expect(base % (4 * 1024 * 1024)).toBe(0);
      const high = kernel.mmap(v, proc, base + 512 * 4096, 4096, PROT_READ | PROT_WRITE, VMA_ANON);
      v.setCpl(3);
      v.write(high, 4, 9);
      v.setCpl(0);
      const pte0 = kernel.inspectPte(proc, base)!;
      const t = pte0.table / 4096;
      const quadrants = (): Record<number, { spte1: boolean; spte0: boolean }> =>
        Object.fromEntries(
          mmu
            .indirectPagesOf(t)
            .map((sp) => [
              roleQuadrant(sp.role),
              { spte0: mmu.isPresent(mmu.pool.lo(sp.base), mmu.pool.hi(sp.base)), spte1: mmu.isPresent(mmu.pool.lo(sp.base + 1), mmu.pool.hi(sp.base + 1)) },
            ]),
        );
      const before = quadrants();
      const delta = counterDelta(g.vm);
      // gpte 1 := gpte 0's frame (an alias of page 0), present, writable, user, accessed.
      v.write(kernel.directMap(pte0.table) + 4, 4, (pte0.lo | PT_ACCESSED) >>> 0);
      const d = delta();
      const after = quadrants();
      v.setCpl(3);
      const seen = v.read(base + 4096, 4);
      v.setCpl(0);
      const read = delta();
      mmu.audit();
      return { before, after, d, read, seen };
    }

    it("installs the spte in quadrant 0's page only, never in quadrant 1's alias", async () => {
      const r = await writeGpte1([{ use: 'pte-update' }]);
      expect(r.before).toEqual({ 0: { spte0: true, spte1: false }, 1: { spte0: true, spte1: false } });
      // Exit 1: the store hits write-protected T -> EXCEPTION_NMI (#PF P=1|W) -> emulated (mmu_pte_write), once per
      // shadow page of T: quadrant 0's page takes update-spte (mmu_pte_updated); for quadrant 1's page the write
      // is another quadrant's (get_written_sptes returns nothing), so its spte 1 (gpte 513) stays empty.
      expect(pick(r.d, ['exits', 'exits.EXCEPTION_NMI', 'insn_emulation', 'mmu_pte_write', 'mmu_pte_updated', 'mmu_shadow_zapped'])).toEqual({
        exits: 1,
        'exits.EXCEPTION_NMI': 1,
        insn_emulation: 1,
        mmu_pte_write: 1,
        mmu_pte_updated: 1,
        mmu_shadow_zapped: 0,
      });
      expect(r.after).toEqual({ 0: { spte0: true, spte1: true }, 1: { spte0: true, spte1: false } });
      // The user read of page 1 hits the installed spte: no exit, and it reads page 0's word (the alias).
      expect(r.read.exits ?? 0).toBe(0);
      expect(r.seen).toBe(1);
    });
    it('without it the write installs nothing and the read exits once', async () => {
      const r = await writeGpte1([]);
      expect(pick(r.d, ['exits', 'mmu_pte_write', 'mmu_pte_updated'])).toEqual({ exits: 1, mmu_pte_write: 1, mmu_pte_updated: 0 });
      expect(r.after).toEqual({ 0: { spte0: true, spte1: false }, 1: { spte0: true, spte1: false } });
      expect(pick(r.read, ['exits', 'pf_fixed'])).toEqual({ exits: 1, pf_fixed: 1 });
      expect(r.seen).toBe(1);
    });
  });
});
