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
  'walk-vs-gpte-store',
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
  // The slow page fault runs as KVM's FNAME(page_fault) (paging_tmpl.h): the guest walk (FNAME(walk_addr)) a step of
  // its own before mmu_lock, the rest under it. Each slow fault has one more step, a point where another thread can
  // run (between the walk and the lock), so the scenarios with slow faults have more interleavings: fast-pf-vs-zap and
  // fast-pf-vs-page-zap 38 -> 47 (vCPU 0's fault after the zap, or after the fast path gave up, is slow: the unmap
  // or the harvest may now run between its walk and its lock), fault-vs-pte-write 53 -> 69 (the emulated gpte store
  // and its kvm_mmu_track_write may run there too: 13 of them end in RET_PF_RETRY and a second fault, see below),
  // fast-pf-vs-shadowing 86 -> 107 (vCPU 1's slow fault that shadows PT2). The first three have no slow fault (the
  // fast path fixes every one): unchanged. walk-vs-gpte-store (new): fast-pf-vs-shadowing with vCPU 0 faulting on
  // the va whose table vCPU 1 stores to.
  // The last column: counters of all interleavings. `gpte_changed_retry` counts the slow faults that ended in
  // RET_PF_RETRY because a gpte changed since their walk (FNAME(gpte_changed)); only the two scenarios where a vCPU
  // stores to a guest page table have any. walk-vs-gpte-store: in 20 interleavings vCPU 1's store comes between vCPU
  // 0's walk and its fetch; the fetch shadows PT2 (write-protecting it), reads the level-1 gpte again, finds it
  // changed and returns RET_PF_RETRY; vCPU 0 repeats the store, faults again (pf_taken 203: 20 more than without the
  // check, below), walks the new gpte and maps MOVED_PA. A retry counts pf_taken only (kvm_mmu_do_page_fault): pf_fixed
  // is 232 with the check and without it.
  it.each([
    ['fast-pf-vs-get-dirty-log', 78, { gpte_changed_retry: 0 }],
    ['tlb-fill-vs-get-dirty-log', 1685, { gpte_changed_retry: 0 }],
    ['fast-pf-same-spte', 128, { gpte_changed_retry: 0 }],
    ['fast-pf-vs-zap', 47, { gpte_changed_retry: 0 }],
    ['fast-pf-vs-page-zap', 47, { gpte_changed_retry: 0 }],
    ['fault-vs-pte-write', 69, { gpte_changed_retry: 13 }],
    ['fast-pf-vs-shadowing', 107, { gpte_changed_retry: 0 }],
    ['walk-vs-gpte-store', 107, { gpte_changed_retry: 20, pf_taken: 203, pf_fixed: 232 }],
  ])('%s: all %i interleavings with at most 2 preemptions keep every invariant', (name, n, stats) => {
    const r = explore(shadowRaceScenario(name as string), { preemptions: 2 });
    expect(r.examples.flatMap((e) => e.problems)).toEqual([]);
    expect(r.interleavings).toBe(n);
    expect(r.complete).toBe(true);
    expect(r.stats).toMatchObject(stats as Record<string, number>);
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
    // scheduled), 90 acquisitions in 32 interleavings, 14 of them found the lock held. (16 interleavings, 42
    // acquisitions and 8 contended while the guest walk ran under the lock: each slow fault now walks first, a step
    // before the lock where the other vCPU may run.)
    const off = explore(shadowRaceScenario('fast-pf-same-spte', { fastPageFault: false }), { preemptions: 2 });
    expect(off.violations).toBe(0);
    expect([off.interleavings, off.stats['mmu_lock.acquired'], off.stats['mmu_lock.contended'], off.stats['pf_fast'] ?? 0]).toEqual([32, 90, 14, 0]);
    // 58 slow faults: the spte is made once per interleaving (32 pf_fixed); in the 26 interleavings where the
    // second vCPU took its exit before the first one's fault set the spte, its own fault, under the lock after
    // it, makes the very same spte: RET_PF_SPURIOUS (mmu.c mmu_set_spte), pf_spurious, and no prefetch. No gpte
    // changes: no retry.
    expect(off.stats).toMatchObject({ pf_taken: 58, pf_fixed: 32, pf_spurious: 26, gpte_changed_retry: 0 });
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
    // 106 interleavings, 75 caught (87 and 66 before the slow path's guest walk became a step of its own).
    const r = explore(shadowRaceScenario('fast-pf-vs-shadowing', { ignoreMmuWritable: true }), { preemptions: 2 });
    expect([r.interleavings, r.violations]).toEqual([106, 75]);
    expect(r.examples[0]!.problems.join('\n')).toMatch(/audit: shadow MMU audit: W without MMU-writable .* direct=1/);
  });

  it('catches a fast path without the compare in fast-pf-vs-shadowing: the slow path write-protects between its read and its store', () => {
    // 107 interleavings, 6 caught (86 and 5 before the slow path's guest walk became a step of its own: vCPU 0's
    // read may now also come between vCPU 1's walk and its lock).
    const r = explore(shadowRaceScenario('fast-pf-vs-shadowing', { plainStore: true }), { preemptions: 2 });
    expect([r.interleavings, r.violations]).toEqual([107, 6]);
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

  // paging_tmpl.h FNAME(fetch): "Verify that the gpte in the page we've just write protected is still there"
  // (FNAME(gpte_changed), after kvm_mmu_get_child_sp and before link_shadow_page; and the top-level gpte before the
  // loop): the guest walk ran without mmu_lock, and a gpte it read may have changed since.
  it('catches a slow path without FNAME(gpte_changed): an spte for the frame of a gpte that is gone', () => {
    const broken = explore(shadowRaceScenario('walk-vs-gpte-store', { noGpteChangedCheck: true }), { preemptions: 2 });
    // 107 interleavings again; in the 20 where vCPU 1's store comes between vCPU 0's walk and its fetch, the fetch
    // maps the old frame (the audit: the spte disagrees with its gpte), where the check returned RET_PF_RETRY. Guest
    // memory alone would not tell: vCPU 0's store reaches the old frame, as in the sequential run where vCPU 0 runs
    // first. No fault is repeated: pf_taken 183, 20 fewer than with the check.
    expect([broken.interleavings, broken.violations]).toEqual([107, 20]);
    expect(broken.stats).toMatchObject({ gpte_changed_retry: 0, pf_taken: 183, pf_fixed: 232 });
    const v = broken.examples[0]!;
    expect(v.problems.join('\n')).toMatch(/audit: shadow MMU audit: vCPU 0: va 0x400000 maps gpa 0x190000 in the guest tables but another frame in the shadow/);
    const actions = v.steps.map((x) => `${x.thread}: ${x.action}`);
    const walked = actions.indexOf('vcpu0: guest walk (lockless)');
    const stored = actions.indexOf(`vcpu1: write 0x3ff000 = ${0x190063} (walk)`);
    expect([walked >= 0, stored > walked, actions.indexOf('vcpu0: page fault (slow path)') > stored]).toEqual([true, true, true]);
    // The same schedule up to that fault, on the MMU with the check: the fault retries, and every check passes.
    const fault = actions.indexOf('vcpu0: page fault (slow path)');
    const fixed = replaySchedule(shadowRaceScenario('walk-vs-gpte-store'), v.schedule.slice(0, fault + 1));
    expect(fixed.problems).toEqual([]);
    const again = fixed.steps.map((x) => `${x.thread}: ${x.action}`);
    const retry = again.indexOf('vcpu0: page fault (slow path): gpte changed -> retry');
    expect(retry).toBeGreaterThan(again.indexOf(`vcpu1: write 0x3ff000 = ${0x190063} (walk)`));
    expect(again.slice(retry)).toContain('vcpu0: guest walk (lockless)');
    // fault-vs-pte-write (its table shadowed: the store is emulated, then kvm_mmu_track_write): 13 retries with the
    // check; without it, the one interleaving where the emulated store and its track_write both run between vCPU 0's
    // walk and its fetch is caught (60 interleavings: the retries' steps are gone). When the track_write comes after
    // the fetch, it rewrites the stale spte from the new gpte, and no check can tell.
    const pte = explore(shadowRaceScenario('fault-vs-pte-write', { noGpteChangedCheck: true }), { preemptions: 2 });
    expect([pte.interleavings, pte.violations]).toEqual([60, 1]);
    expect(pte.examples[0]!.problems.join('\n')).toMatch(/va 0x0 maps gpa 0x190000 in the guest tables but another frame in the shadow/);
  });
});
