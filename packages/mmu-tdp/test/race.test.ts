import { explore, replaySchedule, runSequential } from '@vmexit/core';
import { VmxBackend } from '@vmexit/backend-vmx';
import { SvmBackend } from '@vmexit/backend-svm';
import { describe, expect, it } from 'vitest';
import { TDP_RACE_SCENARIOS, tdpRaceScenario } from '../src/index.js';

const vmx = new VmxBackend();
const svm = new SvmBackend();

describe('tdpRaceScenario', () => {
  it('lists the scenarios, and refuses an unknown name with the list', () => {
    expect(TDP_RACE_SCENARIOS).toEqual([
      'fast-pf-vs-get-dirty-log',
      'tlb-fill-vs-get-dirty-log',
      'fast-pf-same-spte',
      'fast-pf-vs-zap',
      'fast-pf-vs-ring-reset',
    ]);
    expect(() => tdpRaceScenario('nope', vmx)).toThrow(/unknown TDP race scenario 'nope' \(scenarios: fast-pf-vs-get-dirty-log, /);
  });

  it('a sequential run of each scenario passes every check, on EPT and on NPT', () => {
    for (const b of [vmx, svm]) for (const name of TDP_RACE_SCENARIOS) expect(runSequential(tdpRaceScenario(name, b)).problems, name).toEqual([]);
  });

  // Exhaustive at 2 preemptions (the explorer's `complete`): the interleavings counted are every schedule with at
  // most 2 switches away from a thread that could have continued.
  // tlb-fill-vs-get-dirty-log: the shadow MMU's scenario of the same name and shape has as many.
  for (const [name, n] of [
    ['fast-pf-vs-get-dirty-log', 78],
    ['tlb-fill-vs-get-dirty-log', 1685],
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

  it('catches a KVM_GET_DIRTY_LOG that flushes before it re-protects (tlb-fill-vs-get-dirty-log: an entry refilled in between)', () => {
    // locking.rst, "flush tlbs due to spte updated": the flush follows the write-protect. The broken harvest flushes
    // first, vCPU 0 refills its TLB from the writable leaf, the harvest re-protects and copies, and vCPU 0's second
    // store hits the stale entry (two preemptions; fast-pf-vs-get-dirty-log catches it too, in 2 of 99).
    const r = explore(tdpRaceScenario('tlb-fill-vs-get-dirty-log', vmx, { harvestFlushBefore: true }), { preemptions: 2 });
    expect([r.interleavings, r.violations]).toEqual([1873, 6]);
    expect(r.examples[0]!.problems).toEqual(['dirty page lost: the destination differs from the source in gfn 0x10']);
  });

  describe('fast-pf-vs-ring-reset (dirty rings: KVM_CAP_DIRTY_LOG_RING, KVM_RESET_DIRTY_RINGS)', () => {
    // vCPU 0 writes gfn 0x10 twice, vCPU 1 writes gfn 0x11, both write-protected for logging; the host (core's
    // RingHarvester) collects both rings, resets them (ResetDirtyRingsOp: mmu_lock for write, re-protect each
    // run, one flush) and copies, then stops the guest and copies the rest. Exhaustive at 2 preemptions: 2,223
    // interleavings (the shadow MMU's scenario of the same shape has as many); at 3, 24,558, 0 violations (18 to 27 s: run by hand, not here).
    it('keeps every invariant in all 2,223 interleavings with at most 2 preemptions (EPT)', () => {
      const r = explore(tdpRaceScenario('fast-pf-vs-ring-reset', vmx), { preemptions: 2 });
      expect(r.examples.flatMap((e) => e.problems)).toEqual([]);
      expect([r.interleavings, r.violations, r.complete]).toEqual([2223, 0, true]);
      // Every write-protect fault took the fast path (no read lock); mmu_lock is the host's only, for write (the
      // reset's runs and the final harvest), so it is never contended. A page re-protected by a reset faults again.
      expect(r.stats).toMatchObject({ pf_fast: 4943, pf_fixed: 4943, 'mmu_lock.acquired': 7166, 'mmu_lock.contended': 0 });
    });

    it('keeps every invariant in the same 2,223 interleavings on NPT, with the same counts as on EPT', () => {
      const r = explore(tdpRaceScenario('fast-pf-vs-ring-reset', svm), { preemptions: 2 });
      expect(r.examples.flatMap((e) => e.problems)).toEqual([]);
      expect([r.interleavings, r.violations, r.complete]).toEqual([2223, 0, true]);
      expect(r.stats).toMatchObject({ pf_fast: 4943, pf_fixed: 4943, 'mmu_lock.acquired': 7166, 'mmu_lock.contended': 0 });
    });

    it('with the fast path off, the reset waits for the vCPUs holding mmu_lock for read (and they for it), and no page is lost', () => {
      const r = explore(tdpRaceScenario('fast-pf-vs-ring-reset', vmx, { fastPageFault: false }), { preemptions: 1 });
      // 82 interleavings at 1 preemption: 176 faults under the read lock; 22 acquisitions found the other side holding it.
      expect([r.interleavings, r.violations, r.stats['pf_taken'], r.stats['pf_fast'] ?? 0, r.stats['mmu_lock.contended']]).toEqual([82, 0, 176, 0, 22]);
    });

    it('catches a reset that does not write-protect the harvested pages again (a writable leaf outside the log), on EPT and NPT', () => {
      for (const b of [vmx, svm]) {
        const r = explore(tdpRaceScenario('fast-pf-vs-ring-reset', b, { resetWithoutProtect: true }), { preemptions: 1 });
        expect([r.interleavings, r.violations]).toEqual([140, 83]);
        const v = r.examples[0]!;
        expect(v.problems).toContain('writable spte for gfn 0x10 in a logged slot, page not marked dirty');
        expect(v.steps.map((x) => x.action)).toContain('reset_dirty_rings: no write-protect (broken) slot 0 offset 16 mask 0x1, mmu_unlock');
        expect(replaySchedule(tdpRaceScenario('fast-pf-vs-ring-reset', b, { resetWithoutProtect: true }), v.schedule).problems).toEqual(v.problems);
      }
    });

    it('catches a reset that re-protects without flushing (a stale writable TLB entry: a dirty page lost), on EPT and NPT', () => {
      for (const b of [vmx, svm]) {
        const r = explore(tdpRaceScenario('fast-pf-vs-ring-reset', b, { resetWithoutFlush: true }), { preemptions: 1 });
        expect([r.interleavings, r.violations]).toEqual([140, 4]);
        const v = r.examples[0]!;
        expect(v.problems).toEqual(['dirty page lost: the destination differs from the source in gfn 0x10']);
        // The schedule: vCPU 0's first write is fixed by the fast path and pushed; the host harvests, re-protects,
        // does not flush and copies; vCPU 0's second write hits its stale writable TLB entry (no fault, no push).
        const actions = v.steps.map((x) => `${x.thread}: ${x.action}`);
        const i = actions.indexOf('harvest: reset_dirty_rings: no flush (broken)');
        expect(i).toBeGreaterThan(0);
        expect(actions.slice(i)).toContain('vcpu0: write 0x8 = 2 (TLB hit)');
        expect(replaySchedule(tdpRaceScenario('fast-pf-vs-ring-reset', b, { resetWithoutFlush: true }), v.schedule).problems).toEqual(v.problems);
      }
    });
  });
});
