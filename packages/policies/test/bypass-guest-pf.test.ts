import { PFERR_PRESENT } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { bypassGuestPf } from '../src/index.js';
import { SHADOW_TRAP_NONPRESENT_PTE_HI, SHADOW_TRAP_NONPRESENT_PTE_LO } from '../src/bypass-guest-pf.js';

describe('bypassGuestPf', () => {
  describe('.setup', () => {
    it('programs PFEC_MASK = PFEC_MATCH = P on every vCPU and KVM trap / notrap sptes', () => {
      const calls: unknown[][] = [];
      const filter = { setPfecMaskMatch: (...a: unknown[]) => calls.push(['pfec', ...a]) };
      const enc = { setNonPresentSptes: (...a: unknown[]) => calls.push(['spte', ...a]) };
      bypassGuestPf.setup!({
        options: {},
        mmu: { name: 'shadow' },
        backendStates: ['s0', 's1'],
        capability: (n: string) => (n === 'PageFaultFilter' ? filter : enc),
      } as never);
      expect(calls).toEqual([
        ['pfec', 's0', PFERR_PRESENT, PFERR_PRESENT],
        ['pfec', 's1', PFERR_PRESENT, PFERR_PRESENT],
        ['spte', SHADOW_TRAP_NONPRESENT_PTE_LO, SHADOW_TRAP_NONPRESENT_PTE_HI, 0, 0],
      ]);
      expect(SHADOW_TRAP_NONPRESENT_PTE_HI * 2 ** 32 + SHADOW_TRAP_NONPRESENT_PTE_LO).toBe(2 ** 64 - 0xfff); // ~0xffe: 0xfffffffffffff001 (rounded as a double)
    });
    it('refuses two-dimensional paging with a message that says why', () => {
      expect(() => bypassGuestPf.setup!({ options: {}, mmu: { name: 'tdp' }, backendStates: [], capability: () => ({}) } as never)).toThrow(
        /needs shadow paging.*bypass_guest_pf = 0 with EPT/,
      );
    });
    it('needs the VMX filter and the MMU encoding', () => {
      expect([...bypassGuestPf.needs].sort()).toEqual(['NonPresentSpteEncoding', 'PageFaultFilter']);
    });
  });
});
