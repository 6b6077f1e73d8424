import { explore, replaySchedule, runSequential } from '@vmexit/core';
import { VmxBackend } from '@vmexit/backend-vmx';
import { SvmBackend } from '@vmexit/backend-svm';
import { describe, expect, it } from 'vitest';
import { TDP_RACE_SCENARIOS, tdpRaceScenario } from '../src/index.js';

const vmx = new VmxBackend();
const svm = new SvmBackend();

describe('tdpRaceScenario', () => {
  it('lists the scenarios, and refuses an unknown name with the list', () => {
    expect(TDP_RACE_SCENARIOS).toEqual(['fast-pf-vs-get-dirty-log', 'fast-pf-same-spte', 'fast-pf-vs-zap']);
    expect(() => tdpRaceScenario('nope', vmx)).toThrow(/unknown TDP race scenario 'nope' \(scenarios: fast-pf-vs-get-dirty-log, /);
  });

  it('a sequential run of each scenario passes every check, on EPT and on NPT', () => {
    for (const b of [vmx, svm]) for (const name of TDP_RACE_SCENARIOS) expect(runSequential(tdpRaceScenario(name, b)).problems, name).toEqual([]);
  });

  // Exhaustive at 2 preemptions (the explorer's `complete`): the interleavings counted are every schedule with at
  // most 2 switches away from a thread that could have continued.
  for (const [name, n] of [
    ['fast-pf-vs-get-dirty-log', 78],
    ['fast-pf-same-spte', 128],
    ['fast-pf-vs-zap', 50],
  ] as const) {
    it(`${name}: all ${n} interleavings with at most 2 preemptions keep every invariant`, () => {
      const r = explore(tdpRaceScenario(name, vmx), { preemptions: 2 });
      expect(r.examples.flatMap((e) => e.problems)).toEqual([]);
      expect([r.interleavings, r.complete]).toEqual([n, true]);
    });
  }

  it('two vCPUs on one spte: the fast path fixes it without mmu_lock; some interleavings see a cmpxchg fail or a spurious fault', () => {
    const r = explore(tdpRaceScenario('fast-pf-same-spte', vmx), { preemptions: 2 });
    // Per interleaving: one fix (pf_fixed 128 = one per interleaving), the other vCPU spurious (its walk found W
    // set) or, in 20, its cmpxchg failed and the retried walk found W set; the only lock taken is the harvester's.
    expect(r.stats).toMatchObject({ 'mmu_lock.acquired': 128, 'mmu_lock.contended': 0, pf_fixed: 128, pf_spurious: 120, pf_fast_cmpxchg_fail: 20 });
  });

  it('with the fast path off, the two vCPUs take mmu_lock for READ and never contend (the shadow MMU spinlock makes them)', () => {
    const off = explore(tdpRaceScenario('fast-pf-same-spte', vmx, { fastPageFault: false }), { preemptions: 2 });
    expect(off.violations).toBe(0);
    // 26 interleavings: 46 faults under the read lock plus one harvest each (46 + 26 = 72), none contended:
    // readers share the lock. Where both walks saw the write-protected spte, the second fault finds the leaf
    // writable already: pf_spurious 20.
    expect([off.interleavings, off.stats['mmu_lock.acquired'], off.stats['mmu_lock.contended'], off.stats['pf_spurious'], off.stats['pf_fast'] ?? 0]).toEqual([
      26, 72, 0, 20, 0,
    ]);
  });

  it('catches a fast path that stores the spte without the compare (fast-pf-vs-zap: a zapped leaf comes back behind the counts)', () => {
    for (const b of [vmx, svm]) {
      const s = tdpRaceScenario('fast-pf-vs-zap', b, { plainStore: true });
      const r = explore(s, { preemptions: 2 });
      expect(r.violations).toBe(4);
      const v = r.examples[0]!;
      expect(v.problems).toEqual(['audit: TDP MMU audit: 5 level-1 leaves in the tables, 4 counted']);
      expect(v.steps.map((x) => x.action)).toContain('zap the leaf of gfn 0x10');
      expect(replaySchedule(tdpRaceScenario('fast-pf-vs-zap', b, { plainStore: true }), v.schedule).problems).toEqual(v.problems);
    }
  });

  it('catches a KVM_GET_DIRTY_LOG that re-protects without flushing (a stale writable TLB entry: a dirty page lost)', () => {
    const r = explore(tdpRaceScenario('fast-pf-vs-get-dirty-log', vmx, { harvestWithoutFlush: true }), { preemptions: 2 });
    expect(r.violations).toBe(2);
    expect(r.examples[0]!.problems).toEqual(['dirty page lost: the destination differs from the source in gfn 0x10']);
  });
});
