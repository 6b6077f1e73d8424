import { describe, expect, it } from 'vitest';
import { InputError, migrate, parseVariantSpec, type MigrateOptions } from '../src/index.js';
import { forgetfulSources } from './helpers/forgetful-mmu.js';

// Pre-copy migration of KVM's dirty_log_test (one vCPU writing 64 random pages of 512 per iteration, 40
// iterations) in a 16 MiB guest (4096 pages), the link at 1000 pages per 1000 guest accesses so that the run
// has several rounds.
const WORKLOAD = 'dirty-log-test:pages=512,iterations=40,writes=64';
async function run(spec: string, o: Partial<MigrateOptions> = {}) {
  const variant = await parseVariantSpec(spec, { memory: '16M' });
  return migrate({ workload: WORKLOAD, mode: 'long4', seed: 1, personalities: [], variant, copyRate: 1000, stopPages: 0, maxRounds: 20, ...o });
}

describe('migrate', () => {
  for (const dirtyLog of ['bitmap', 'clear'] as const) {
    it(`${dirtyLog}: the destination's memory equals the source's at the stop, after several rounds`, async () => {
      const r = await run('vmx shadow', { dirtyLog });
      expect(r.schema).toBe('vmexit.migrate/1');
      // Round 0 sends all 4096 pages; each later round sends what the guest dirtied while the previous one
      // was sent (shrinking as the rounds get shorter), the last is the stop-and-copy at the workload's end.
      expect(r.rounds.map((x) => x.dirtyPages)).toEqual([4096, 505, 186, 113, 62, 5]);
      expect(r.stoppedBy).toBe('workload-end');
      expect(r.digestMatch).toBe(true);
      expect(r.destination.memoryDigest).toBe(r.source.memoryDigest);
      expect(r.pagesSent).toBe(r.rounds.reduce((a, x) => a + x.pagesSent, 0));
    }, 60_000);
  }

  it('stops the guest when a round dirties few pages: that harvest is the stop-and-copy, the downtime its pages', async () => {
    // Rounds as above until 186 <= 200: the guest stops there, before its end; round 2 is sent while it is stopped.
    const r = await run('vmx shadow', { stopPages: 200 });
    expect(r.stoppedBy).toBe('dirty-set-small');
    expect(r.rounds.map((x) => x.dirtyPages)).toEqual([4096, 505, 186]);
    expect(r.rounds[2]!.guestAccesses).toBe(0);
    expect(r.modelled.downtimeCycles).toBe(186 * r.modelled.pageCopyCycles);
    expect(r.digestMatch).toBe(true);
    const m = await run('vmx shadow', { stopPages: 0, maxRounds: 1 });
    expect(m.stoppedBy).toBe('max-rounds');
    expect(m.rounds.map((x) => x.dirtyPages)).toEqual([4096, 505]);
    expect(m.digestMatch).toBe(true);
  }, 60_000);

  it('with fast-page-fault: the same memory and exits, part of the write faults fixed without mmu_lock', async () => {
    const slow = await run('vmx shadow');
    const fast = await run('vmx shadow fast-page-fault');
    expect(fast.source.memoryDigest).toBe(slow.source.memoryDigest);
    expect(fast.digestMatch).toBe(true);
    const sum = (r: typeof slow, k: string): number => r.rounds.reduce((a, x) => a + (x.counters[k] ?? 0), 0);
    expect(sum(fast, 'exits')).toBe(sum(slow, 'exits'));
    expect(sum(fast, 'pf_fast')).toBeGreaterThan(0);
    expect(sum(slow, 'pf_fast')).toBe(0);
    // Each fast fix is a slow fix less, and a lock acquisition less.
    expect(sum(slow, 'mmu_lock.acquired') - sum(fast, 'mmu_lock.acquired')).toBe(sum(fast, 'pf_fast') - sum(fast, 'pf_spurious'));
  }, 60_000);

  it('reports guest progress after logging started; with 2 vCPUs the lock is timed, and the fast path spins less', async () => {
    const sum = (r: Awaited<ReturnType<typeof run>>, k: string): number => r.rounds.reduce((a, x) => a + (x.counters[k] ?? 0), 0);
    // One vCPU: the fast path changes no priced counter (a fast fix is priced as a slow one) and nothing spins,
    // so the 4,992 guest accesses of the rounds before the stop take the same 8,130,240 modelled cycles.
    const slow1 = await run('vmx shadow');
    const fast1 = await run('vmx shadow fast-page-fault');
    expect(slow1.guestProgress).toEqual(fast1.guestProgress);
    expect(slow1.guestProgress).toMatchObject({ accesses: 4992, cycles: 8_130_240 });
    expect(sum(slow1, 'mmu_lock.contended') + sum(fast1, 'mmu_lock.contended')).toBe(0);
    // The guest ran in every round but the stop-and-copy: progress is over those rounds' accesses and cycles.
    const ran = slow1.rounds.slice(0, -1);
    expect(ran.reduce((a, r) => a + r.guestAccesses, 0)).toBe(4992);
    expect(ran.reduce((a, r) => a + r.modelledCycles, 0)).toBe(8_130_240);
    expect(slow1.guestProgress.accessesPerKcycle).toBeCloseTo((4992 * 1000) / (8_130_240 + 4992), 12);
    // Two vCPUs: the lock's critical sections (680 cycles each) overlap on the vCPUs' modelled clocks. Without the
    // fast path 3,641 acquisitions spin 390,526 cycles; with it 455 fewer acquisitions spin 390,476. The count of
    // contended acquisitions is not monotone in so small a run (518, then 765: the spins move the clocks, and
    // with them which sections meet), the cycles are. The modelled cycles differ by the spins alone.
    const slow2 = await run('vmx shadow', { variant: await parseVariantSpec('vmx shadow', { memory: '16M', vcpus: '2' }) });
    const fast2 = await run('vmx shadow fast-page-fault', { variant: await parseVariantSpec('vmx shadow fast-page-fault', { memory: '16M', vcpus: '2' }) });
    expect(fast2.source.memoryDigest).toBe(slow2.source.memoryDigest);
    expect([sum(slow2, 'mmu_lock.acquired'), sum(fast2, 'mmu_lock.acquired'), sum(fast2, 'pf_fast')]).toEqual([3641, 3186, 455]);
    expect([sum(slow2, 'mmu_lock.contended'), sum(fast2, 'mmu_lock.contended')]).toEqual([518, 765]);
    expect([sum(slow2, 'mmu_lock.spin_cycles'), sum(fast2, 'mmu_lock.spin_cycles')]).toEqual([390_526, 390_476]);
    expect([slow2.guestProgress.cycles, fast2.guestProgress.cycles]).toEqual([9_202_822, 9_202_772]);
    expect(slow2.guestProgress.cycles - fast2.guestProgress.cycles).toBe(sum(slow2, 'mmu_lock.spin_cycles') - sum(fast2, 'mmu_lock.spin_cycles'));
    expect(fast2.guestProgress.accesses).toBe(slow2.guestProgress.accesses);
    expect(fast2.guestProgress.accessesPerKcycle).toBeGreaterThan(slow2.guestProgress.accessesPerKcycle);
  }, 60_000);

  it('catches an MMU that does not re-protect harvested pages: the digests differ', async () => {
    const r = await run('vmx shadow', { sources: forgetfulSources });
    expect(r.digestMatch).toBe(false);
  }, 60_000);

  describe('ring (KVM_CAP_DIRTY_LOG_RING)', () => {
    it('with rings of 4096 entries: the same rounds as the bitmap, no ring ever soft-full, the digests match', async () => {
      // A round's dirty set is the same set whether it is read from bitmaps or rings; the largest round (505
      // pages) stays far below the soft limit (4096 - 64), so no vCPU exits for its ring.
      const r = await run('vmx shadow', { dirtyLog: 'ring' });
      expect(r.rounds.map((x) => x.dirtyPages)).toEqual([4096, 505, 186, 113, 62, 5]);
      expect(r.dirtyRing).toMatchObject({ entries: 4096, softLimit: 4032, fullExits: 0 });
      expect(r.digestMatch).toBe(true);
    }, 60_000);

    it('with rings of 256 entries: KVM_EXIT_DIRTY_RING_FULL exits, reaped by user space; the same dirty sets and memory', async () => {
      const bitmap = await run('vmx shadow');
      const r = await run('vmx shadow', { dirtyLog: 'ring', ringEntries: 256 });
      expect(r.rounds.map((x) => x.dirtyPages)).toEqual(bitmap.rounds.map((x) => x.dirtyPages));
      expect(r.source.memoryDigest).toBe(bitmap.source.memoryDigest);
      expect(r.digestMatch).toBe(true);
      // Every mark is a push (a ring has no bit to find already set): the guest kernel's page-zeroing faults
      // and the A/D bits its walks set in page tables push a gfn each time. While logging starts (round 0) the
      // guest sets its workload up and its vCPU fills the 192 entries of the soft limit 13 times; at each exit
      // user space harvests and resets, re-protecting pages the guest is still writing, which fault again:
      // 1,282 more exits than with the bitmap in round 0. 15 exits in all, each a user-space round trip.
      expect(r.dirtyRing).toMatchObject({ entries: 256, softLimit: 192, harvested: 3555, fullExits: 15 });
      expect(r.rounds.map((x) => x.counters['dirty_ring_full_exits'])).toEqual([13, 0, 0, 0, 2, 0]);
      expect(r.rounds[0]!.counters['exits']! - bitmap.rounds[0]!.counters['exits']!).toBe(1282);
    }, 60_000);

    it('catches an MMU that does not re-protect the pages a ring reset names: the digests differ', async () => {
      const r = await run('vmx shadow', { dirtyLog: 'ring', sources: forgetfulSources });
      expect(r.digestMatch).toBe(false);
    }, 60_000);
  });

  it('refuses bad options and a native variant with a clear message', async () => {
    await expect(run('vmx shadow', { maxRounds: -1 })).rejects.toThrow(/--max-rounds must be an integer of at least 0, not -1/);
    await expect(run('vmx shadow', { dirtyLog: 'pml' as never })).rejects.toThrow(InputError);
    await expect(run('vmx shadow', { dirtyLog: 'ring', ringEntries: 300 })).rejects.toThrow(/--dirty-ring-size: dirty ring: 300 entries is not a power of two/);
    await expect(run('native')).rejects.toThrow(/backend none runs natively/);
  });
});
