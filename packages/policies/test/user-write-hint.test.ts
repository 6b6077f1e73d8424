import { MODE_LONG4, PFERR_PRESENT, PFERR_USER, PFERR_WRITE, PT_ACCESSED, PT_PRESENT, PT_USER, PT_WRITABLE, type MmuEvent } from '@vmexit/core';
import { PROT_READ, PROT_WRITE, VMA_ANON } from '@vmexit/guest';
import type { ShadowMmu } from '@vmexit/mmu-shadow';
import { describe, expect, it } from 'vitest';
import { userWriteHint } from '../src/index.js';
import { base, decide, pick } from './helpers.js';
import { bootGuest, counterDelta } from './vm.js';

describe('userWriteHint', () => {
  describe('.mmuEvents', () => {
    it('unprotects on a user-mode write fault only', async () => {
      const tw = (errorCode: number): MmuEvent => ({ ...base, kind: 'tracked-write', gfn: 3, address: 0x1000, errorCode });
      expect(await decide(userWriteHint, tw(PFERR_PRESENT | PFERR_WRITE | PFERR_USER), {})).toBe(true);
      expect(await decide(userWriteHint, tw(PFERR_PRESENT | PFERR_WRITE), {})).toBeNull();
    });
  });

  describe('on a VM (createVm, the guest kernel)', () => {
    // A long4 guest process has touched page A (its page table T is shadowed, so T is write-protected) and
    // page B in another 2 MiB region (page table T2). The kernel maps B+4K to T's frame (a page table the
    // guest now uses as data too, as a recycled page would be); user mode then writes T's first gpte back
    // with the same value through B+4K, twice, and finally reads A.
    async function userWrites(policies: { use: string }[]) {
      const g = await bootGuest(
        { backend: 'vmx', mmu: 'shadow', memory: 4 * 1024 * 1024, guest: { mode: 'long4', personality: 'linux' }, policies },
        MODE_LONG4,
        1,
      );
      const { v, kernel, proc, base: a } = g;
      const mmu = g.vm.mmu as ShadowMmu;
      for (const h of g.vm.hooks) h.afterExit = () => mmu.audit();
      const b = kernel.mmap(v, proc, a + 0x200000, 2 * 4096, PROT_READ | PROT_WRITE, VMA_ANON);
      v.setCpl(3);
      v.write(b, 4, 7);
      v.setCpl(0);
      const pteA = kernel.inspectPte(proc, a)!;
      const pteB = kernel.inspectPte(proc, b)!;
      const t = pteA.table / 4096;
      expect(pteB.table).not.toBe(pteA.table);
      v.write(kernel.directMap(pteB.table) + 8, 8, (pteA.table | PT_PRESENT | PT_WRITABLE | PT_USER | PT_ACCESSED) >>> 0, 0);
      const delta = counterDelta(g.vm);
      const names = ['exits', 'exits.EXCEPTION_NMI', 'insn_emulation', 'mmu_shadow_zapped', 'mmu_cache_miss', 'pf_fixed'];
      const steps: Record<string, number>[] = [];
      const pages: number[] = [];
      for (const step of ['write', 'write', 'read A']) {
        v.setCpl(3);
        if (step === 'write') v.write(b + 4096, 4, pteA.lo);
        else v.read(a, 4);
        v.setCpl(0);
        steps.push(pick(delta(), names));
        pages.push(mmu.indirectPagesOf(t).length);
      }
      return { steps, pages };
    }

    it('a user-mode write fault on a shadowed gfn zaps its shadow pages and maps it writable', async () => {
      const r = await userWrites([{ use: 'user-write-hint' }]);
      // Write 1: exit 1, EXCEPTION_NMI (no spte for B+4K yet) -> the guest walk allows a user write to T's
      // gfn, which is write-protected -> tracked-write with U=1 in the error code -> user-write-hint: zap
      // every shadow page of T (mmu_shadow_zapped; KVM mmu_unshadow) and map B+4K writable (pf_fixed), no emulation.
      // Write 2: the writable spte: no exit.
      // Read A: T has no shadow page, so A's walk re-faults -> exit 1, a new shadow page for T (mmu_cache_miss),
      // which write-protects T again.
      expect(r.steps).toEqual([
        { exits: 1, 'exits.EXCEPTION_NMI': 1, insn_emulation: 0, mmu_shadow_zapped: 1, mmu_cache_miss: 0, pf_fixed: 1 },
        { exits: 0, 'exits.EXCEPTION_NMI': 0, insn_emulation: 0, mmu_shadow_zapped: 0, mmu_cache_miss: 0, pf_fixed: 0 },
        { exits: 1, 'exits.EXCEPTION_NMI': 1, insn_emulation: 0, mmu_shadow_zapped: 0, mmu_cache_miss: 1, pf_fixed: 1 },
      ]);
      expect(r.pages).toEqual([0, 0, 1]);
    });
    it('without it every such user write exits and is emulated, and T stays shadowed', async () => {
      const r = await userWrites([]);
      const emulated = { exits: 1, 'exits.EXCEPTION_NMI': 1, insn_emulation: 1, mmu_shadow_zapped: 0, mmu_cache_miss: 0, pf_fixed: 0 };
      expect(r.steps).toEqual([
        emulated,
        emulated,
        { exits: 1, 'exits.EXCEPTION_NMI': 1, insn_emulation: 0, mmu_shadow_zapped: 0, mmu_cache_miss: 0, pf_fixed: 1 },
      ]);
      expect(r.pages).toEqual([1, 1, 1]);
    });
  });
});
