import { explore, replaySchedule, runSequential } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { RACE_SCENARIOS, shadowRaceScenario } from '../src/index.js';

// Every interleaving of each small scenario up to 2 preemptions (core's explorer), on the shadow MMU as it
// is, and on deliberately broken ones that the explorer must catch. The counts are those of the machinery
// (deterministic: same scenario, same bound -> same interleavings); a change to them is a change in where
// the MMU's threads can race, to be reviewed.
const SMALL = ['fast-pf-vs-get-dirty-log', 'fast-pf-same-spte', 'fast-pf-vs-zap', 'fault-vs-pte-write'];

describe('shadow MMU race scenarios', () => {
  it('lists the scenarios, and refuses an unknown name with the list', () => {
    expect(RACE_SCENARIOS).toEqual([...SMALL, 'two-vcpus-vs-two-harvests', 'fast-pf-vs-ring-reset']);
    expect(() => shadowRaceScenario('nope')).toThrow(/unknown race scenario 'nope' \(scenarios: fast-pf-vs-get-dirty-log, /);
  });

  it('a sequential run of each scenario passes every check', () => {
    for (const name of RACE_SCENARIOS) expect(runSequential(shadowRaceScenario(name)).problems, name).toEqual([]);
  });

  it.each([
    ['fast-pf-vs-get-dirty-log', 78],
    ['fast-pf-same-spte', 128],
    ['fast-pf-vs-zap', 38],
    ['fault-vs-pte-write', 53],
  ])('%s: all %i interleavings with at most 2 preemptions keep every invariant', (name, n) => {
    const r = explore(shadowRaceScenario(name as string), { preemptions: 2 });
    expect(r.examples.flatMap((e) => e.problems)).toEqual([]);
    expect(r.interleavings).toBe(n);
    expect(r.complete).toBe(true);
  });

  it('two vCPUs on one spte: the fast path fixes it without mmu_lock, and some interleaving sees a cmpxchg fail or a spurious fault', () => {
    const r = explore(shadowRaceScenario('fast-pf-same-spte'), { preemptions: 2 });
    expect(r.stats['pf_fast']).toBeGreaterThan(0);
    expect((r.stats['pf_fast_cmpxchg_fail'] ?? 0) + (r.stats['pf_spurious'] ?? 0)).toBeGreaterThan(0);
    // Only the final harvest takes mmu_lock (one acquisition per interleaving): no vCPU took the slow path.
    expect(r.stats['mmu_lock.acquired']).toBe(r.interleavings);
  });

  it('with the fast path off, the two vCPUs take mmu_lock for their faults and contend for it; with it on, neither does', () => {
    // Fast path on: per interleaving one acquisition (the final harvest), never contended; 128 fixes, and the
    // vCPU that comes second sees the spte already writable (spurious) or loses the cmpxchg and walks again.
    const on = explore(shadowRaceScenario('fast-pf-same-spte'), { preemptions: 2 });
    expect(on.stats).toMatchObject({ 'mmu_lock.acquired': 128, 'mmu_lock.contended': 0, pf_fixed: 128, pf_spurious: 120, pf_fast_cmpxchg_fail: 20 });
    // Fast path off: the slow faults serialize on the lock: fewer interleavings (a vCPU that would spin is not
    // scheduled), 42 acquisitions in 16 interleavings, 8 of them found the lock held.
    const off = explore(shadowRaceScenario('fast-pf-same-spte', { fastPageFault: false }), { preemptions: 2 });
    expect(off.violations).toBe(0);
    expect([off.interleavings, off.stats['mmu_lock.acquired'], off.stats['mmu_lock.contended'], off.stats['pf_fast'] ?? 0]).toEqual([16, 42, 8, 0]);
    // 26 slow faults: the spte is made once per interleaving (16 pf_fixed); in the 10 interleavings where the
    // second vCPU took its exit before the first one's fault set the spte, its own fault, under the lock after
    // it, makes the very same spte: RET_PF_SPURIOUS (mmu.c mmu_set_spte), pf_spurious, and no prefetch.
    expect(off.stats).toMatchObject({ pf_taken: 26, pf_fixed: 16, pf_spurious: 10 });
  });

  it('catches a fast path that stores the spte without the compare (fast-pf-vs-zap: a zapped spte comes back, out of the rmap)', () => {
    const r = explore(shadowRaceScenario('fast-pf-vs-zap', { plainStore: true }), { preemptions: 2 });
    expect(r.violations).toBeGreaterThan(0);
    const v = r.examples[0]!;
    expect(v.problems.join('\n')).toMatch(/audit: .*no rmap for the leaf spte \(gfn 0x200\)/);
    // The schedule reproduces it: the vCPU reads the spte, the host zaps it, the vCPU's store brings it back.
    expect(replaySchedule(shadowRaceScenario('fast-pf-vs-zap', { plainStore: true }), v.schedule).problems).toEqual(v.problems);
    expect(v.steps.map((s) => s.action)).toContain('zap the 1 sptes of gfn 0x200');
  });

  it('catches a KVM_GET_DIRTY_LOG that re-protects without flushing (a stale writable TLB entry: a dirty page lost)', () => {
    const r = explore(shadowRaceScenario('fast-pf-vs-get-dirty-log', { harvestWithoutFlush: true }), { preemptions: 2 });
    expect(r.violations).toBe(2);
    expect(r.examples[0]!.problems).toEqual(['dirty page lost: the destination differs from the source in gfn 0x200']);
  });
});
