import { describe, expect, it } from 'vitest';
import { modelCycles, pricedCounters } from '../../src/cost/model.js';
import { COST_PROFILES, PROFILE_2007, PROFILE_SERVER } from '../../src/cost/profiles.js';
import { VM_EXIT_KINDS } from '../../src/exits/vm-exit.js';

describe('modelCycles', () => {
  it('prices exits by kind, user-space exits, handler work, guest faults and walk references', () => {
    const counters = {
      'exits.kind.exception': 3,
      'exits.kind.cr-write': 1,
      mmio_exits: 1,
      pf_fixed: 2,
      insn_emulation: 1,
      'guest.page_faults': 5,
      walk_refs: 100,
      unpriced: 9,
    };
    const r = modelCycles(PROFILE_SERVER, counters);
    expect(r.breakdown).toEqual({
      'exits.kind.exception': 3 * 1360,
      'exits.kind.cr-write': 1360,
      mmio_exits: 1168,
      pf_fixed: 2 * 680,
      insn_emulation: 1360,
      'guest.page_faults': 5 * 3780,
      walk_refs: 100 * 12,
    });
    expect(r.cycles).toBe(Object.values(r.breakdown).reduce((a, b) => a + b, 0));
    expect(modelCycles(PROFILE_2007, counters).cycles).toBeGreaterThan(r.cycles);
  });

  it('prices the cycles spun on mmu_lock one for one, under every profile, and nothing for the acquisitions', () => {
    for (const p of Object.values(COST_PROFILES)) {
      const r = modelCycles(p, { 'mmu_lock.spin_cycles': 1234, 'mmu_lock.acquired': 10, 'mmu_lock.contended': 2 });
      expect(r.breakdown).toEqual({ 'mmu_lock.spin_cycles': 1234 });
      expect(r.cycles).toBe(1234);
    }
  });
});

describe('pricedCounters', () => {
  it('lists what modelCycles prices: a counter of each at 1 costs the sum of the figures', () => {
    const priced = pricedCounters(PROFILE_SERVER);
    const ones = Object.fromEntries(priced.map(([k]) => [k, 1]));
    expect(modelCycles(PROFILE_SERVER, ones).cycles).toBe(priced.reduce((a, [, f]) => a + f.cycles, 0));
    expect(priced.map(([k]) => k)).toContain('mmu_lock.spin_cycles');
  });
});

describe('COST_PROFILES', () => {
  it('cites a source for every figure', () => {
    for (const p of Object.values(COST_PROFILES)) {
      const figs = [...Object.values(p.exitRoundTrip), p.userspaceExit, ...Object.values(p.handler), p.guestFault, p.walkReference];
      for (const f of figs) {
        expect(f.source.length).toBeGreaterThan(20);
        expect(f.cycles).toBeGreaterThan(0);
        // A figure no source gives says so in its own words.
        if (f.basis === 'estimate') expect(f.source).toMatch(/estimate/);
      }
    }
  });

  it('prices every exit kind, and says so where no source gives a figure per kind', () => {
    for (const p of Object.values(COST_PROFILES)) {
      expect(Object.keys(p.exitRoundTrip).sort()).toEqual([...VM_EXIT_KINDS].sort());
      const distinct = new Set(Object.values(p.exitRoundTrip).map((f) => f.cycles));
      if (distinct.size === 1) for (const f of Object.values(p.exitRoundTrip)) expect(f.source).toMatch(/no source on record gives a round trip per exit kind/);
    }
  });

  it('labels the handler figures as estimates: SplitX gives no handler cost', () => {
    for (const p of Object.values(COST_PROFILES)) {
      for (const f of Object.values(p.handler)) {
        expect(f.basis).toBe('estimate');
        if (/SplitX/.test(f.source)) expect(f.source).toMatch(/no source gives the cycles of a shadow page-fault handler/);
      }
    }
  });
});
