import { explore, replaySchedule, runSequential, type RaceScenario, type Vcpu } from '@vmexit/core';
import { VmxBackend } from '@vmexit/backend-vmx';
import { SvmBackend } from '@vmexit/backend-svm';
import { describe, expect, it } from 'vitest';
import { auditTdpMmu, TDP_RACE_SCENARIOS, TdpMapFault, tdpRaceScenario, type TdpMmu } from '../src/index.js';

const vmx = new VmxBackend();
const svm = new SvmBackend();

/**
 * The number of schedules of `scenario` with at most `bound` preemptions, by brute force (every runnable thread at
 * every step, each prefix replayed on a fresh instance), independent of the explorer's search: a switch away from a
 * thread that could have continued costs one preemption, from one that finished or waits on a lock none.
 */
function bruteForceInterleavings(scenario: RaceScenario, bound: number): number {
  let count = 0;
  const go = (prefix: number[], cur: number, pre: number): void => {
    const inst = scenario.create();
    for (const t of prefix) inst.threads[t]!.step();
    const en = inst.threads.flatMap((t, i) => (!t.done && t.runnable() ? [i] : []));
    if (en.length === 0) {
      count++;
      return;
    }
    for (const t of en) {
      const p = pre + (cur >= 0 && en.includes(cur) && t !== cur ? 1 : 0);
      if (p <= bound) go([...prefix, t], t, p);
    }
  };
  go([], -1, 0);
  return count;
}

describe('tdpRaceScenario', () => {
  it('lists the scenarios, and refuses an unknown name with the list', () => {
    expect(TDP_RACE_SCENARIOS).toEqual([
      'fast-pf-vs-get-dirty-log',
      'tlb-fill-vs-get-dirty-log',
      'fast-pf-same-spte',
      'fast-pf-vs-zap',
      'fast-pf-vs-ring-reset',
      'slow-pf-same-gfn',
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
    // 42 interleavings (26 while the slow path was one atomic step): each slow fault is now lock, read spte, cmpxchg
    // leaf, unlock (kvm_tdp_mmu_map under the read lock), so both vCPUs' reads may come before either cmpxchg. Per
    // interleaving one fault fixes the leaf (pf_fixed 42); the other vCPU's fault fails its cmpxchg in 12 (RET_PF_RETRY,
    // map_retry: no pf_fixed, the repeated store walks through the writable leaf), reads the writable leaf in 24
    // (pf_spurious), or never happens in 6 (its walk came after the fix): pf_taken 42 + 12 + 24 = 78 = 2 * 42 - 6.
    // 78 faults under the read lock plus one harvest each (78 + 42 = 120), none contended: readers share the lock.
    expect([off.interleavings, off.stats['mmu_lock.acquired'], off.stats['mmu_lock.contended'], off.stats['pf_fast'] ?? 0]).toEqual([42, 120, 0, 0]);
    expect(off.stats).toMatchObject({ pf_taken: 78, pf_fixed: 42, pf_spurious: 24, map_retry: 12 });
    // The explorer's count, against a brute-force enumeration of the same scenario's schedules.
    expect(bruteForceInterleavings(tdpRaceScenario('fast-pf-same-spte', vmx, { fastPageFault: false }), 2)).toBe(42);
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

  describe('slow-pf-same-gfn (kvm_tdp_mmu_map under the read lock: spte compare-and-swap, RET_PF_RETRY)', () => {
    // vCPU 0 writes gfn 0x11 at 0x11000, vCPU 1 at 0x11008; the gfn is not mapped (an EPT violation / #NPF on a
    // non-present spte: no fast page fault), so both take the slow path under mmu_lock held for read: lock, read spte,
    // cmpxchg leaf, unlock. The host harvests once (KVM_GET_DIRTY_LOG, mmu_lock for write: it waits for the readers)
    // and copies, then stops and copies the rest.
    it('keeps every invariant in all 680 interleavings with at most 2 preemptions, on EPT and NPT, with the same counts', () => {
      for (const b of [vmx, svm]) {
        const r = explore(tdpRaceScenario('slow-pf-same-gfn', b), { preemptions: 2 });
        expect(r.examples.flatMap((e) => e.problems)).toEqual([]);
        expect([r.interleavings, r.violations, r.complete]).toEqual([680, 0, true]);
        // One leaf per interleaving (pages_4k 680: never counted twice). 104 leaf cmpxchgs failed (map_retry: both
        // reads saw the empty spte; RET_PF_RETRY counts pf_taken and nothing else, and the store is repeated). Where
        // the harvest re-protected the page before a vCPU's store, that store faults again on the write-protected leaf
        // and takes the fast path (pf_fast 240; 4 of its cmpxchgs failed against the other vCPU's). pf_spurious 258:
        // faults (slow or fast) that found the spte already as they would make it. Every fault ends one way:
        // pf_taken 1,286 = pf_fixed 924 + pf_spurious 258 + map_retry 104.
        expect(r.stats).toMatchObject({
          pf_taken: 1286,
          pf_fixed: 924,
          pf_spurious: 258,
          map_retry: 104,
          pf_fast: 240,
          pf_fast_cmpxchg_fail: 4,
          pages_4k: 680,
        });
      }
      // The explorer's count at 1 preemption, against a brute-force enumeration (at 2, 680 too: 11 s, run by hand).
      expect([
        explore(tdpRaceScenario('slow-pf-same-gfn', vmx), { preemptions: 1 }).interleavings,
        bruteForceInterleavings(tdpRaceScenario('slow-pf-same-gfn', vmx), 1),
      ]).toEqual([86, 86]);
    });

    it("a failed leaf cmpxchg: RET_PF_RETRY, the store repeated through the other vCPU's leaf, the page in the log", () => {
      // Both vCPUs read the empty spte before either cmpxchg; vCPU 0's installs the leaf, vCPU 1's fails.
      const r = replaySchedule(tdpRaceScenario('slow-pf-same-gfn', vmx), [0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1]);
      expect(r.steps.map((x) => `${x.thread}: ${x.action}`).slice(0, 12)).toEqual([
        'vcpu0: write 0x1000: second-stage fault on gpa 0x11000, error code 2',
        'vcpu0: mmu_lock (read)',
        'vcpu0: page fault (slow path), slow: read spte',
        'vcpu1: write 0x1008: second-stage fault on gpa 0x11008, error code 2',
        'vcpu1: mmu_lock (read)',
        'vcpu1: page fault (slow path), slow: read spte',
        'vcpu0: slow: cmpxchg leaf -> fixed',
        'vcpu0: mmu_unlock (read)',
        'vcpu1: slow: cmpxchg leaf -> retry',
        'vcpu1: mmu_unlock (read)',
        'vcpu1: write 0x1008 = 2 (walk)',
        'vcpu0: write 0x1000 = 1 (walk)',
      ]);
      // Memory equals a sequential run's, and the destination the source: the page vCPU 0's leaf marked dirty was copied.
      expect(r.problems).toEqual([]);
    });

    it('two vCPUs link the same missing page table: one link cmpxchg fails (RET_PF_RETRY), its page never counted', () => {
      const inst = tdpRaceScenario('slow-pf-same-gfn', vmx).create() as unknown as {
        mmu: TdpMmu;
        host: { counters: Map<string, number> };
        machine: { vcpus: Vcpu[] };
      };
      const { mmu, host } = inst;
      const [v0, v1] = inst.machine.vcpus as [Vcpu, Vcpu];
      mmu.zapAll(); // every page below the root freed: the walk of gfn 0x11 finds the root's spte empty
      const before = host.counters.get('tdp_mmu_pages') ?? 0;
      const a = new TdpMapFault(mmu, 0);
      const b = new TdpMapFault(mmu, 1);
      expect([mmu.pageFaultStart(v0, 0x11000, 2, true, a), mmu.pageFaultStart(v1, 0x11008, 2, true, b)]).toEqual([null, null]);
      expect([a.phaseName, b.phaseName]).toEqual(['read spte', 'read spte']);
      expect([mmu.pageFaultStep(a), mmu.pageFaultStep(b)]).toEqual([null, null]); // both read the root's empty spte
      expect([a.phaseName, b.phaseName]).toEqual(['cmpxchg link', 'cmpxchg link']);
      expect(mmu.pageFaultStep(a)).toBeNull(); // tdp_mmu_link_sp: the PDPT linked
      expect(mmu.pageFaultStep(b)).toEqual({ kind: 'resume' }); // its cmpxchg fails: RET_PF_RETRY (tdp_mmu_free_sp)
      expect([b.resultName, b.retries]).toEqual(['retry', 1]);
      while (mmu.pageFaultStep(a) === null); // PD, PT, then the leaf
      expect(a.resultName).toBe('fixed');
      // The retried fault walks a's tables to its leaf: spurious. Three pages linked (PDPT, PD, PT), the loser's none.
      expect(mmu.pageFaultStart(v1, 0x11008, 2, true, b)).toBeNull();
      expect([mmu.pageFaultStep(b), b.resultName]).toEqual([{ kind: 'resume' }, 'spurious']);
      expect((host.counters.get('tdp_mmu_pages') ?? 0) - before).toBe(3);
      expect(() => auditTdpMmu(mmu, { full: true })).not.toThrow();
    });

    it('catches a slow path that stores the leaf without the compare (a leaf counted twice), on EPT and NPT', () => {
      for (const b of [vmx, svm]) {
        const r = explore(tdpRaceScenario('slow-pf-same-gfn', b, { slowPlainStore: true }), { preemptions: 2 });
        // Exactly the 104 interleavings where the unbroken MMU's cmpxchg fails: the plain store replaces the other
        // vCPU's leaf as if the spte were still empty, and counts a second leaf (KVM's handle_changed_spte from the
        // stale old_spte: pages_4k one too many).
        expect([r.interleavings, r.violations]).toEqual([680, 104]);
        const v = r.examples[0]!;
        expect(v.problems).toEqual(['audit: TDP MMU audit: 6 level-1 leaves in the tables, 7 counted']);
        expect(v.steps.filter((x) => x.action === 'slow: cmpxchg leaf -> fixed').length).toBe(2);
        expect(replaySchedule(tdpRaceScenario('slow-pf-same-gfn', b, { slowPlainStore: true }), v.schedule).problems).toEqual(v.problems);
      }
    });
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
      // 94 interleavings at 1 preemption (82 while the slow path was one atomic step: each slow fault now has a read
      // step and a cmpxchg step under the read lock, one more place for the preemption; checked by brute force below):
      // 200 faults under the read lock, every one fixed (the vCPUs fault on different sptes: no cmpxchg fails, no
      // RET_PF_RETRY); 26 acquisitions found the other side holding it.
      expect([r.interleavings, r.violations, r.stats['pf_taken'], r.stats['pf_fast'] ?? 0, r.stats['mmu_lock.contended']]).toEqual([94, 0, 200, 0, 26]);
      expect(r.stats).toMatchObject({ pf_fixed: 200, map_retry: 0 });
      expect(bruteForceInterleavings(tdpRaceScenario('fast-pf-vs-ring-reset', vmx, { fastPageFault: false }), 1)).toBe(94);
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
