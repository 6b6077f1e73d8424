import { MODE_LONG4 } from '@vmexit/core';
import { PROT_READ } from '@vmexit/guest';
import type { ShadowMmu } from '@vmexit/mmu-shadow';
import { describe, expect, it } from 'vitest';
import { prefetch } from '../src/index.js';
import { SHADOW_TRAP_NONPRESENT_PTE_HI, SHADOW_TRAP_NONPRESENT_PTE_LO } from '../src/bypass-guest-pf.js';
import { base, decide, leafSpte, pick, pteWrite } from './helpers.js';
import { bootGuest, counterDelta } from './vm.js';

describe('prefetch', () => {
  describe('.mmuEvents', () => {
    it('asks for the prefetch of the group', async () => {
      expect(await decide(prefetch, { ...base, kind: 'prefetch', gfn: 3, address: 0x1000, direct: false }, {})).toBe(true);
      expect(await decide(prefetch, pteWrite(1, false), {})).toBeNull();
    });
  });

  describe('with bypass-guest-pf, on a VM (createVm, the guest kernel)', () => {
    // A long4 guest process has written 8 pages: gptes 0-7 of its page table T (an aligned group of 8) are
    // present, accessed and dirty, and mapped by sptes. mprotect(PROT_READ) rewrites the 8 gptes as Linux's
    // change_pte_range does, each twice (ptep_modify_prot_start stores 0, ptep_modify_prot_commit the read-only
    // value: 16 stores, each exits and is emulated; the MMU clears each spte) and INVLPGs each page (8 INVLPG
    // exits). The process
    // then reads the 8 pages. The MMU is audited after every exit (the trap / notrap invariants among them:
    // no notrap spte where the gpte is present, mmu-shadow/src/audit.ts check 6).
    async function mprotectThenRead(policies: string[]) {
      const g = await bootGuest(
        { backend: 'vmx', mmu: 'shadow', memory: 4 * 1024 * 1024, guest: { mode: 'long4', personality: 'linux' }, policies: policies.map((use) => ({ use })) },
        MODE_LONG4,
        8,
      );
      const { v, kernel, proc, base: a } = g;
      const mmu = g.vm.mmu as ShadowMmu;
      for (const h of g.vm.hooks) h.afterExit = () => mmu.audit();
      const t = kernel.inspectPte(proc, a)!.table / 4096;
      const first = (a / 4096) % 512;
      expect(first % 8).toBe(0);
      const delta = counterDelta(g.vm);
      kernel.mprotect(v, proc, a, 8 * 4096, PROT_READ);
      const mprotect = pick(delta(), ['exits', 'exits.EXCEPTION_NMI', 'exits.INVLPG', 'insn_emulation']);
      const cleared = Array.from({ length: 8 }, (_, i) => leafSpte(mmu, t, first + i));
      v.setCpl(3);
      for (let i = 0; i < 8; i++) expect(v.read(a + i * 4096, 4)).toBe(i + 1);
      v.setCpl(0);
      const reads = pick(delta(), ['exits', 'exits.EXCEPTION_NMI', 'pf_fixed']);
      const mapped = Array.from({ length: 8 }, (_, i) => mmu.isPresent(leafSpte(mmu, t, first + i).lo, leafSpte(mmu, t, first + i).hi));
      mmu.audit();
      return { mprotect, cleared, reads, mapped, faults: kernel.events.length };
    }
    const trap = { lo: SHADOW_TRAP_NONPRESENT_PTE_LO | 0, hi: SHADOW_TRAP_NONPRESENT_PTE_HI | 0 };

    it('the cleared sptes of present gptes are trap; the first read maps all 8 (1 exit), with the guest seeing no fault', async () => {
      const r = await mprotectThenRead(['bypass-guest-pf', 'prefetch']);
      expect(r.mprotect).toEqual({ exits: 24, 'exits.EXCEPTION_NMI': 16, 'exits.INVLPG': 8, insn_emulation: 16 });
      // Each spte cleared under a present gpte is trap (P=1|RSVD: its fault has P=1 and still exits), never
      // notrap (P=0, a fault that PFEC_MASK = PFEC_MATCH = P would send to the guest, which has no fault to see).
      expect(r.cleared.map((s) => ({ lo: s.lo | 0, hi: s.hi | 0 }))).toEqual(Array.from({ length: 8 }, () => trap));
      // Read 0: exit 1 (P=1|RSVD) -> gpte 0 is present -> spte 0 installed, and prefetch maps gptes 1-7 of the
      // group (present and accessed; read-only now). Reads 1-7: no exit.
      expect(r.reads).toEqual({ exits: 1, 'exits.EXCEPTION_NMI': 1, pf_fixed: 1 });
      expect(r.mapped).toEqual(Array.from({ length: 8 }, () => true));
      expect(r.faults).toBe(8); // the guest saw only its 8 demand faults, none of the trap faults
    });
    it('bypass-guest-pf alone: the same trap sptes, and each read exits', async () => {
      const r = await mprotectThenRead(['bypass-guest-pf']);
      expect(r.cleared.map((s) => ({ lo: s.lo | 0, hi: s.hi | 0 }))).toEqual(Array.from({ length: 8 }, () => trap));
      expect(r.reads).toEqual({ exits: 8, 'exits.EXCEPTION_NMI': 8, pf_fixed: 8 });
      expect(r.faults).toBe(8);
    });
  });
});
