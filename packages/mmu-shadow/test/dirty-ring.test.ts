import { DirtyLog, DirtyRingError, explore, replaySchedule, runSequential } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { shadowRaceScenario } from '../src/index.js';
import { A, D, P, setup, U, W } from './harness.js';

/** A 4-level guest: 4 KiB pages over 0-4 MiB (indirect shadow pages), a 2 MiB page at 8 MiB (direct: the fast path's); a dirty ring per vCPU. */
function ringed(vcpus = 1, entries = 256) {
  const t = setup('long4', { fastPageFault: true, vcpus });
  t.pt.map(0x800000, 0x800000, P | W | A | D, 2);
  const log = new DirtyLog(t.machine.memory);
  t.mmu.attachDirtyLog(log);
  log.enableRing(vcpus, entries);
  return { ...t, log };
}

/** The gfns user space harvests from every ring, in ring order. */
function harvest(log: DirtyLog): number[] {
  const out: number[] = [];
  log.collectRings((_slot, gfn) => out.push(gfn));
  return out;
}

describe('ShadowMmu with dirty rings (KVM_CAP_DIRTY_LOG_RING)', () => {
  it('the slow path and the fast path push to the ring of the vCPU that dirtied the page; the host writes go to the bitmap', () => {
    const { machine, log, h } = ringed(2);
    const [v0, v1] = machine.vcpus;
    // Before logging starts: both pages mapped writable, and the guest walk's A/D bits all set (a walk that sets
    // them while a slot logs marks the page-table page dirty too, FNAME(update_accessed_dirty_bits)).
    v0!.write(0x800000, 4, 1);
    v0!.write(0x200000, 4, 1);
    log.enable(0);
    h.reset();
    // vCPU 0 writes a 4 KiB page (indirect: slow path, make_spte marks it); vCPU 1 writes the write-protected
    // large page (direct, MMU-writable: the fast path's cmpxchg marks it).
    v0!.write(0x200000, 4, 2);
    v1!.write(0x800000, 4, 3);
    expect([h.e('pf'), h.c('pf_fast'), h.c('mmu_lock.acquired')]).toEqual([2, 1, 1]);
    expect(log.rings!.map((r) => r.used())).toEqual([1, 1]);
    // A host write (no running vCPU) goes to the bitmap (KVM's dirty_ring_with_bitmap).
    log.markPageDirty(0x300);
    expect(harvest(log)).toEqual([0x200, 0x800]);
    expect(DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0))).toEqual([0x300]);
    expect(log.resetDirtyRings()).toBe(2);
    // Reset re-protected both pages and flushed: each vCPU's next write faults and pushes again.
    v0!.write(0x200004, 4, 4);
    v1!.write(0x800004, 4, 5);
    expect(h.e('pf')).toBe(4);
    expect(harvest(log)).toEqual([0x200, 0x800]);
  });

  it('exits with KVM_EXIT_DIRTY_RING_FULL at the soft limit; user space harvests and resets; exact counts', () => {
    const { vcpu, log, h, mmu } = ringed(1, 256);
    // Map 200 pages of the 2 MiB page writable, then start logging (every spte write-protected, MMU-writable).
    for (let i = 0; i < 200; i++) vcpu.write(0x800000 + i * 4096, 4, 1);
    log.enable(0);
    const harvested: number[][] = [];
    log.onRingFull = () => {
      harvested.push(harvest(log));
      log.resetDirtyRings();
    };
    h.reset();
    const lock0 = mmu.mmuLock.acquired;
    // Pass 1: 200 writes, each a write-protect fault fixed by the fast path and one push. The ring has 256
    // entries, 64 reserved: the soft limit is 192. The 192nd push (page 191) makes the request; before the vCPU
    // enters the guest again it exits to user space (1 exit), which harvests the 192 entries and resets them:
    // 192 consecutive offsets coalesce into 6 runs of 32, so 6 mmu_lock acquisitions, then 1 remote flush. The
    // reset re-protected page 191 too, whose store has not executed yet: it faults again and pushes again (as on
    // KVM, where the exit comes after the fault is fixed and before the instruction re-executes). Then pages
    // 192..199 fault once each: 201 faults, and 1 + 8 = 9 entries left in the ring.
    for (let i = 0; i < 200; i++) vcpu.write(0x800000 + i * 4096, 4, 2);
    expect([h.e('pf'), h.c('pf_fast'), h.c('dirty_ring_full_exits'), h.c('mmu_lock.acquired')]).toEqual([201, 201, 1, 0]);
    expect(mmu.mmuLock.acquired - lock0).toBe(6);
    expect(harvested.map((x) => x.length)).toEqual([192]);
    expect(harvested[0]!.slice(0, 3)).toEqual([0x800, 0x801, 0x802]);
    expect(log.rings![0]!.used()).toBe(9);
    // Pass 2 over pages 0..191, the ring holding 9 entries (191, 192..199): pages 0..190 were re-protected by the
    // reset and fault; the 183rd push (page 182) reaches 192: the 2nd exit harvests the 192 entries (191 among
    // them) and re-protects them, so page 182 faults once more; pages 183..190 fault, and so does 191, harvested
    // and re-protected by this 2nd reset. 183 + 1 + 8 + 1 = 193 faults, 1 + 8 + 1 = 10 entries left, 201 + 193 =
    // 394 pushes in all.
    for (let i = 0; i < 192; i++) vcpu.write(0x800000 + i * 4096, 4, 3);
    expect([h.e('pf'), h.c('dirty_ring_full_exits')]).toEqual([394, 2]);
    expect(harvested.map((x) => x.length)).toEqual([192, 192]);
    expect(harvested[1]!.slice(0, 2)).toEqual([0x800 + 191, 0x800 + 192]);
    expect(log.rings![0]!.used()).toBe(10);
    expect(log.rings![0]!.pushes).toBe(394);
  });

  it('a CR3 write whose sync of an unsync page reaches the soft limit exits with KVM_EXIT_DIRTY_RING_FULL before the guest re-enters', () => {
    const { vcpu, log, h, mmu, pt } = ringed(1, 256);
    h.decider = (ev) => (ev.kind === 'unsync' ? true : null);
    const va = 0x600000;
    const e = pt.map(va, 0xc00000, P | W | U | A | D);
    log.enable(0);
    let harvested: number[] = [];
    log.onRingFull = () => {
      harvested = harvest(log);
      log.resetDirtyRings();
    };
    vcpu.write(va, 4, 1); // maps va writable (marked dirty)
    // The kernel's store of a second gpte into the PT page faults on its write-protected spte; the page's only
    // shadow is level 1: it goes unsync, no emulation.
    vcpu.write(e + 8, 8, 0xc01000 | P | W | U | A | D, 0);
    expect(mmu.unsyncPages.size).toBe(1);
    const ring = log.rings![0]!;
    while (ring.used() < 191) log.markPageDirty(0x300, 0); // one entry below the soft limit (256 - 64 = 192)
    h.reset();
    // MOV to CR3 exits; the sync of the unsync page (kvm_mmu_sync_roots, syncPage) rebuilds its one present spte,
    // va's (gpte 0: gfn 0xc00, writable), and the writable spte marks gfn 0xc00 (unsync.ts: the FNAME(sync_page)
    // whose set_spte marks; the second gpte has no spte yet, nothing to sync): the 192nd entry, the soft-full
    // request. KVM checks it before the vCPU re-enters (vcpu_enter_guest -> kvm_dirty_ring_check_request): 1
    // KVM_EXIT_DIRTY_RING_FULL at this exit (it used to wait for the vCPU's next fault), whose handler harvests the
    // 192 entries, the last 0xc00.
    vcpu.movToCr3(pt.root);
    expect([mmu.unsyncPages.size, h.c('dirty_ring_full_exits'), harvested.length, harvested[191]]).toEqual([0, 1, 192, 0xc00]);
    expect(ring.used()).toBe(0);
  });

  it('a full exit with no user space handler, or one that leaves the ring soft-full, is an error naming the vCPU', () => {
    const { vcpu, log } = ringed(1, 256);
    for (let i = 0; i < 192; i++) vcpu.write(0x800000 + i * 4096, 4, 1);
    log.enable(0);
    for (let i = 0; i < 191; i++) vcpu.write(0x800000 + i * 4096, 4, 2);
    expect(() => vcpu.write(0x800000 + 191 * 4096, 4, 2)).toThrow(/vCPU 0: KVM_EXIT_DIRTY_RING_FULL \(192 entries not reset\) and no user space handler/);
    log.onRingFull = () => {};
    expect(() => vcpu.write(0x200000, 4, 2)).toThrow(DirtyRingError);
  });

  it('refuses a ring enabled twice, after logging started, or of a size KVM refuses', () => {
    const { log } = ringed(1);
    expect(() => log.enableRing(1, 256)).toThrow(/already enabled/);
    const t = setup('long4');
    const l2 = new DirtyLog(t.machine.memory);
    t.mmu.attachDirtyLog(l2);
    expect(() => l2.enableRing(1, 100)).toThrow(/not a power of two/);
    expect(() => l2.enableRing(1, 128)).toThrow(/smaller than the 64 reserved entries or one 4 KiB page/);
    expect(() => l2.enableRing(1, 131072)).toThrow(/KVM_DIRTY_RING_MAX_ENTRIES/);
    l2.enable(0);
    expect(() => l2.enableRing(1, 256)).toThrow(/before any memslot logs/);
  });
});

describe('race scenario fast-pf-vs-ring-reset', () => {
  // Two vCPUs and the host's harvest (collect the rings, KVM_RESET_DIRTY_RINGS, copy), every interleaving with
  // at most 1 preemption (140; 2 preemptions give 2,223, for the script). The counts are the machinery's.
  it('keeps every invariant in all 140 interleavings with at most 1 preemption, and sequentially', () => {
    expect(runSequential(shadowRaceScenario('fast-pf-vs-ring-reset')).problems).toEqual([]);
    const r = explore(shadowRaceScenario('fast-pf-vs-ring-reset'), { preemptions: 1 });
    expect([r.interleavings, r.violations, r.complete]).toEqual([140, 0, true]);
    // Every write-protect fault took the fast path; mmu_lock is the host's only (reset runs and the final harvest).
    expect(r.stats).toMatchObject({ pf_fast: 300, pf_fixed: 300, 'mmu_lock.contended': 0 });
  });

  it('catches a reset that does not write-protect the harvested pages again (a writable spte outside the log)', () => {
    const r = explore(shadowRaceScenario('fast-pf-vs-ring-reset', { resetWithoutProtect: true }), { preemptions: 1 });
    expect(r.violations).toBe(83);
    const v = r.examples[0]!;
    expect(v.problems).toContain('writable spte for gfn 0x200 in a logged slot, page not marked dirty');
    expect(replaySchedule(shadowRaceScenario('fast-pf-vs-ring-reset', { resetWithoutProtect: true }), v.schedule).problems).toEqual(v.problems);
  });

  it('catches a reset that re-protects without flushing (a stale writable TLB entry: a dirty page lost)', () => {
    const r = explore(shadowRaceScenario('fast-pf-vs-ring-reset', { resetWithoutFlush: true }), { preemptions: 1 });
    expect(r.violations).toBe(4);
    expect(r.examples[0]!.problems.join('\n')).toMatch(/^dirty page lost/);
    expect(r.examples[0]!.steps.map((s) => s.action)).toContain('reset_dirty_rings: no flush (broken)');
  });
});
