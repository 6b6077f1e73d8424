import { describe, expect, it } from 'vitest';
import { modelCycles, pricedCounters, type CostProfile } from '../../src/cost/model.js';
import { COST_PROFILES, PROFILE_2007, PROFILE_SERVER } from '../../src/cost/profiles.js';

describe('modelCycles', () => {
  describe('pf_spurious', () => {
    it("prices a fault the MMU found already fixed at the pf_fixed handler's figure, under every built-in model", () => {
      // KVM runs the whole handler for such a fault and only then finds nothing to do: FNAME(page_fault)
      // (paging_tmpl.h) walks the guest tables, faults the pfn in, takes mmu_lock and calls FNAME(fetch), whose
      // mmu_set_spte (mmu.c) returns RET_PF_SPURIOUS when the new spte equals the old one; kvm_mmu_do_page_fault
      // (mmu_internal.h) then counts pf_spurious instead of pf_fixed. The same holds for the TDP MMU
      // (tdp_mmu_map_handle_target_level) and the fast path (fast_page_fault), whose fixed faults are priced at pf_fixed.
      // server-2020s: 9 spurious faults x 680 = 6,120 cycles (before: nothing).
      const r = modelCycles(PROFILE_SERVER, { pf_spurious: 9 });
      expect(r.breakdown).toEqual({ pf_spurious: 6120 });
      expect(r.cycles).toBe(6120);
      // core2-2007: 9 x 1,650 = 14,850.
      expect(modelCycles(PROFILE_2007, { pf_spurious: 9 }).cycles).toBe(14_850);
      for (const p of Object.values(COST_PROFILES)) {
        const fixed = modelCycles(p, { pf_fixed: 5 }).cycles;
        expect(modelCycles(p, { pf_spurious: 5 }).cycles, p.name).toBe(fixed);
        expect(pricedCounters(p).find(([c]) => c === 'pf_spurious')?.[1], p.name).toBe(p.handler.pf_fixed);
      }
    });

    it('costs nothing under a custom model that prices no pf_fixed handler', () => {
      const { pf_fixed: _unused, ...handler } = PROFILE_SERVER.handler;
      const noFixed: CostProfile = { ...PROFILE_SERVER, name: 'no-fixed', handler };
      expect(modelCycles(noFixed, { pf_spurious: 9, pf_fixed: 2 })).toEqual({ profile: 'no-fixed', cycles: 0, breakdown: {} });
    });
  });
});
