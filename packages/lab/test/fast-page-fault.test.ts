import { describe, expect, it } from 'vitest';
import { guestProgress, runVariant } from '../src/index.js';

// The seed's result (KVM "fast path of handling guest page fault", 2012) on a small dirty_log_test: each vCPU
// writes 64 random pages of 512 per iteration, 8 iterations, the host harvests (KVM_GET_DIRTY_LOG) after each
// iteration of vCPU 0's thread. Pinned so that the README's account of the fast page fault cannot silently rot.
const WL = 'dirty-log-test:pages=512,iterations=8,writes=64,harvest=bitmap';
async function pair(vcpus: number) {
  const o = { seed: 1, overrides: { memory: '16M', vcpus: String(vcpus) } };
  const slow = await runVariant('vmx shadow', WL, o);
  const fast = await runVariant('vmx shadow fast-page-fault', WL, o);
  const c = (r: typeof slow, k: string): number => r.counters.total[k] ?? 0;
  const progress = (r: typeof slow): number => guestProgress(c(r, 'guest.accesses'), r.cycles.cycles);
  return { slow, fast, c, progress };
}

describe('the fast page fault under dirty logging (shadow paging)', () => {
  it('1 vCPU: each fast fix is one mmu_lock acquisition less; nothing spins, so guest progress is the same', async () => {
    const { slow, fast, c, progress } = await pair(1);
    // The same guest, the same exits: the fast path changes how 316 write-protect faults are fixed, not whether
    // they exit. Those 316 are on direct shadow pages (the guest kernel's 2 MiB direct map, with which it zeroes
    // and copies pages); 160 more were MMU-writable but on indirect pages (the test area, mapped by 4 KiB guest
    // ptes), which KVM leaves to the slow path (pf_fast_indirect).
    expect(c(fast, 'exits')).toBe(c(slow, 'exits'));
    expect(c(fast, 'pf_fixed')).toBe(c(slow, 'pf_fixed'));
    expect(c(fast, 'pf_fast')).toBe(316);
    expect(c(fast, 'pf_fast_indirect')).toBe(160);
    expect([c(slow, 'mmu_lock.acquired'), c(fast, 'mmu_lock.acquired')]).toEqual([2352, 2036]);
    expect(c(slow, 'mmu_lock.acquired') - c(fast, 'mmu_lock.acquired')).toBe(c(fast, 'pf_fast'));
    // One vCPU never meets another at the lock, and the cost model prices a fast fix as a slow one (pf_fixed):
    // the modelled cycles, and so guest progress, are equal.
    expect(c(slow, 'mmu_lock.contended') + c(fast, 'mmu_lock.contended')).toBe(0);
    expect(fast.cycles.cycles).toBe(slow.cycles.cycles);
    expect(progress(fast)).toBe(progress(slow));
    expect(fast.memoryDigest).toBe(slow.memoryDigest);
  }, 30_000);

  it('4 vCPUs: the lock is contended on the vCPUs modelled clocks; the fast path removes part of it', async () => {
    const { slow, fast, c, progress } = await pair(4);
    expect(c(fast, 'exits')).toBe(c(slow, 'exits'));
    expect(c(fast, 'pf_fast')).toBe(506);
    expect(c(fast, 'pf_fast_indirect')).toBe(935);
    expect(c(slow, 'mmu_lock.acquired') - c(fast, 'mmu_lock.acquired')).toBe(506);
    // Critical sections of 680 cycles (server-2020s' pf_fixed) placed on each vCPU's modelled clock: 874 of the
    // slow variant's 4,457 acquisitions overlap another vCPU's; with the fast path 636 of 3,951, since 506
    // sections are gone but the 935 indirect write-protect faults and the guest's own faults still lock.
    expect([c(slow, 'mmu_lock.contended'), c(fast, 'mmu_lock.contended')]).toEqual([874, 636]);
    expect([c(slow, 'mmu_lock.spin_cycles'), c(fast, 'mmu_lock.spin_cycles')]).toEqual([976781, 706407]);
    // The spins are all the cycles the fast path saves: 10,910,421 - 10,640,047 = 270,374 = 976,781 - 706,407.
    expect(slow.cycles.cycles - fast.cycles.cycles).toBe(c(slow, 'mmu_lock.spin_cycles') - c(fast, 'mmu_lock.spin_cycles'));
    // Guest progress (accesses per 1000 modelled cycles): 24.018 -> 24.613, 2.5% faster.
    expect(progress(slow).toFixed(3)).toBe('24.018');
    expect(progress(fast).toFixed(3)).toBe('24.613');
    expect(fast.memoryDigest).toBe(slow.memoryDigest);
  }, 30_000);
});
