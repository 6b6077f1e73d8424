import { explore, replaySchedule, runSequential } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { RACE_SCENARIOS, shadowRaceScenario } from '../src/index.js';

// Every interleaving of each small scenario up to 2 preemptions (core's explorer), on the shadow MMU as it
// is, and on deliberately broken ones that the explorer must catch. The counts are those of the machinery
// (deterministic: same scenario, same bound -> same interleavings); a change to them is a change in where
// the MMU's threads can race, to be reviewed.
const SMALL = [
  'fast-pf-vs-get-dirty-log',
  'tlb-fill-vs-get-dirty-log',
  'fast-pf-same-spte',
  'fast-pf-vs-zap',
  'fast-pf-vs-page-zap',
  'fault-vs-pte-write',
  'fast-pf-vs-shadowing',
];

describe('shadow MMU race scenarios', () => {
  it('lists the scenarios, and refuses an unknown name with the list', () => {
    expect(RACE_SCENARIOS).toEqual([...SMALL, 'two-vcpus-vs-two-harvests', 'fast-pf-vs-ring-reset']);
    expect(() => shadowRaceScenario('nope')).toThrow(/unknown race scenario 'nope' \(scenarios: fast-pf-vs-get-dirty-log, /);
  });

  it('a sequential run of each scenario passes every check', () => {
    for (const name of RACE_SCENARIOS) expect(runSequential(shadowRaceScenario(name)).problems, name).toEqual([]);
  });

  // The guest gained a third PD entry (va 4 MiB, its table inside the 2 MiB page) for fast-pf-vs-shadowing; no
  // other scenario touches it, so their counts stand. tlb-fill-vs-get-dirty-log: three threads of 14 to 23 steps;
  // fast-pf-vs-page-zap: fast-pf-vs-zap's shape (the flush waits for the walker), the zap now of a whole page;
  // fast-pf-vs-shadowing: two vCPUs, one of them under mmu_lock for a slow fault that shadows a page.
  it.each([
    ['fast-pf-vs-get-dirty-log', 78],
    ['tlb-fill-vs-get-dirty-log', 1685],
    ['fast-pf-same-spte', 128],
    ['fast-pf-vs-zap', 38],
    ['fast-pf-vs-page-zap', 38],
    ['fault-vs-pte-write', 53],
    ['fast-pf-vs-shadowing', 86],
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

  it('catches a KVM_GET_DIRTY_LOG that flushes before it re-protects (an entry refilled in between: a dirty page lost)', () => {
    // locking.rst, "flush tlbs due to spte updated": the flush must follow the write-protect. The broken harvest
    // flushes as its first step, then re-protects without a flush: a vCPU refills its TLB from the still writable
    // spte in between, and its next store after the copy hits the stale entry, unmarked. Two preemptions in both
    // scenarios. (A flush moved to after the bitmap read, inside GetDirtyLogOp, tried by a temporary edit of core,
    // needs three in fast-pf-vs-get-dirty-log but two in tlb-fill-vs-get-dirty-log, where vCPU 1 marked the page.)
    const one = explore(shadowRaceScenario('fast-pf-vs-get-dirty-log', { harvestFlushBefore: true }), { preemptions: 2 });
    expect([one.interleavings, one.violations]).toEqual([99, 2]);
    const r = explore(shadowRaceScenario('tlb-fill-vs-get-dirty-log', { harvestFlushBefore: true }), { preemptions: 2 });
    expect([r.interleavings, r.violations]).toEqual([1873, 6]);
    const v = r.examples[0]!;
    expect(v.problems).toEqual(['dirty page lost: the destination differs from the source in gfn 0x200']);
    const actions = v.steps.map((x) => `${x.thread}: ${x.action}`);
    expect(actions.slice(actions.indexOf('harvest: flush remote TLBs before get_dirty_log (broken)'))).toContain('vcpu0: write 0x200010 = 3 (TLB hit)');
  });

  it('catches a fast path that ignores MMU-writable (fast-pf-vs-shadowing: a guest page table made writable behind its shadow page)', () => {
    // KVM fast_page_fault sets W only "if (fault->write && is_mmu_writable_spte(spte))". No other scenario has an
    // spte without MMU-writable; here vCPU 1's slow fault shadows the page (rmap_write_protect, pt_protect).
    const r = explore(shadowRaceScenario('fast-pf-vs-shadowing', { ignoreMmuWritable: true }), { preemptions: 2 });
    expect([r.interleavings, r.violations]).toEqual([87, 66]);
    expect(r.examples[0]!.problems.join('\n')).toMatch(/audit: shadow MMU audit: W without MMU-writable .* direct=1/);
  });

  it('catches a fast path without the compare in fast-pf-vs-shadowing: the slow path write-protects between its read and its store', () => {
    const r = explore(shadowRaceScenario('fast-pf-vs-shadowing', { plainStore: true }), { preemptions: 2 });
    expect([r.interleavings, r.violations]).toEqual([86, 5]);
    const v = r.examples[0]!;
    expect(v.problems.join('\n')).toMatch(/audit: shadow MMU audit: a writable spte maps write-protected guest page table gfn 0x3ff/);
    const actions = v.steps.map((x) => `${x.thread}: ${x.action}`);
    const slow = actions.indexOf('vcpu1: page fault (slow path)');
    expect(actions.slice(0, slow)).toContain('vcpu0: fast: read spte');
    expect(actions.slice(slow)).toContain('vcpu0: fast: cmpxchg');
    expect(replaySchedule(shadowRaceScenario('fast-pf-vs-shadowing', { plainStore: true }), v.schedule).problems).toEqual(v.problems);
  });

  it('catches a remote flush that does not wait for a lockless walker (fast-pf-vs-page-zap: a freed shadow page read)', () => {
    // mmu.c walk_shadow_page_lockless_begin: "Prevent page table teardown by making any free-er wait during
    // kvm_flush_remote_tlbs() IPI". fast-pf-vs-zap zaps a leaf only, so the wait was never needed there.
    const r = explore(shadowRaceScenario('fast-pf-vs-page-zap', { flushWithoutWait: true }), { preemptions: 1 });
    expect([r.interleavings, r.violations]).toEqual([14, 1]);
    const v = r.examples[0]!;
    expect(v.problems).toEqual(['error: vCPU 0: the lockless walk read the freed shadow page of gfn 0x200']);
    expect(v.steps.map((x) => x.action)).toContain('prepare to zap the direct page of gfn 0x200');
    // The schedule reproduces it (replaySchedule lets the error through).
    expect(() => replaySchedule(shadowRaceScenario('fast-pf-vs-page-zap', { flushWithoutWait: true }), v.schedule)).toThrow(/read the freed shadow page/);
  });
});
