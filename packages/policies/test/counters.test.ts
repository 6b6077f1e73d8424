import type { MmuEventOperator, PolicyVcpuContext } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { BUILT_IN_POLICIES, pteUpdate, splitPolicy, unsync, writeFlood } from '../src/index.js';

/** The MMU event kinds a policy's `mmuEvents` operator takes (`decideMmuEvents(..., kinds)`), [] without one. */
function kindsOf(p: (typeof BUILT_IN_POLICIES)[number]): readonly string[] {
  if (p.mmuEvents === undefined) return [];
  const options = p.optionsSchema?.safeParse({});
  const ctx = { options: options?.success === true ? options.data : {} } as unknown as PolicyVcpuContext<unknown>;
  const kinds = (p.mmuEvents(ctx) as MmuEventOperator).mmuEventKinds;
  if (kinds === undefined) throw new Error(`${p.name} takes every kind of MMU event`);
  return kinds;
}

describe('FaultPolicy.counters (built-in policies)', () => {
  it('declares what `vmexit run` shows for each built-in policy, in print order', () => {
    // What each one's answers make the MMU count, then mmu_events.<kind> for the kinds it takes. misaligned-write's
    // zap counts as mmu_flooded, as in KVM kvm_mmu_pte_write (mmu-shadow pte-write.ts: a 'zap-page' decision,
    // whoever took it). bypass-guest-pf and pml program the hardware and count nothing of their own.
    expect(Object.fromEntries(BUILT_IN_POLICIES.map((p) => [p.name, p.counters]))).toEqual({
      'bypass-guest-pf': [],
      'pte-update': ['mmu_pte_updated', 'mmu_events.pte-write'],
      unsync: ['mmu_unsync', 'mmu_events.unsync'],
      'write-flood': ['mmu_flooded', 'mmu_events.flood'],
      'misaligned-write': ['mmu_flooded', 'mmu_events.pte-write'],
      prefetch: ['mmu_events.prefetch'],
      'user-write-hint': ['mmu_events.tracked-write'],
      'fast-page-fault': ['pf_fast', 'pf_fast_indirect', 'pf_fast_cmpxchg_fail'],
      pml: [],
    });
  });

  it('names mmu_events.<kind> for exactly the kinds of MMU event each policy takes', () => {
    for (const p of BUILT_IN_POLICIES) {
      const declared = (p.counters ?? []).filter((c) => c.startsWith('mmu_events.')).map((c) => c.slice('mmu_events.'.length));
      expect(declared, p.name).toEqual(kindsOf(p));
    }
  });
});

describe('splitPolicy counters', () => {
  it("declares both branches' counters, the true branch's first, each once", () => {
    expect(splitPolicy({ name: 's', condition: { backend: 'vmx' }, true: writeFlood, false: unsync }).counters).toEqual([
      'mmu_flooded',
      'mmu_events.flood',
      'mmu_unsync',
      'mmu_events.unsync',
    ]);
    // pte-update's mmu_events.pte-write is named once although both branches take pte-write events.
    expect(
      splitPolicy({ name: 's', condition: { exit: () => true }, true: pteUpdate, false: BUILT_IN_POLICIES.find((p) => p.name === 'misaligned-write')! })
        .counters,
    ).toEqual(['mmu_pte_updated', 'mmu_events.pte-write', 'mmu_flooded']);
    expect(splitPolicy({ name: 's', condition: { backend: 'svm' }, true: writeFlood }).counters).toEqual(['mmu_flooded', 'mmu_events.flood']);
  });
});
