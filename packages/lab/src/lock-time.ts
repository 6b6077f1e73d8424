import { pricedCounters, resolveCostProfile, type CostFigure, type CostProfile, type DirtyLogMmu, type Vm } from '@vmexit/core';
import { LockTimeline } from '@vmexit/core/mmu';

/**
 * Modelled cycles of one guest access that hits the TLB: 1 (an estimate: an L1 hit of a load or store; no
 * source gives a figure for "one access of the model", which may stand for several instructions). Used only for
 * the vCPU clocks of the lock timeline and for guest progress, never added to a run's `modelled cycles`.
 */
export const GUEST_ACCESS_CYCLES = 1;

/**
 * A vCPU's modelled clock: the cost model's cycles of its own counters (exits, handlers, the guest's own
 * faults, walk references, its spins on `mmu_lock`) plus GUEST_ACCESS_CYCLES per guest access.
 */
export function vcpuClock(vm: Vm, profile: CostProfile, vcpu: number): number {
  return vcpuClockOf(vm, pricedCounters(profile), vcpu);
}

/** vcpuClock over the profile's priced counters, looked up one by one (no snapshot: it runs at every lock acquisition). */
function vcpuClockOf(vm: Vm, priced: readonly (readonly [string, CostFigure])[], vcpu: number): number {
  const v = vm.vcpus[vcpu]!;
  const stats = vm.stats[vcpu]!;
  let cycles = v.accesses * GUEST_ACCESS_CYCLES;
  for (const [name, fig] of priced) {
    const n = name === 'guest.page_faults' ? v.pageFaultsDelivered : name === 'walk_refs' ? v.walkRefs : stats.get(name);
    cycles += n * fig.cycles;
  }
  return cycles;
}

/**
 * Puts the MMU's `mmu_lock` on a LockTimeline (core's race/lock.ts), so that a sequential run of several vCPUs
 * counts the contention the lock would have had with the vCPUs running in parallel (`mmu_lock.contended`) and
 * the cycles spun (`mmu_lock.spin_cycles`, priced by the cost model). Each vCPU's clock is `vcpuClock`; a
 * critical section lasts the cost model's `pf_fixed` handler figure (the slow path's work, all of it taken
 * as done under the lock). Nothing is done for one vCPU (it never spins) or an MMU whose lock has no timeline.
 * Returns whether the lock is timed.
 */
export function timeMmuLock(vm: Vm, mmu: Pick<DirtyLogMmu, 'mmuLock'>): boolean {
  const lock = mmu.mmuLock as { timeline?: LockTimeline | null };
  if (vm.vcpus.length < 2 || !('timeline' in lock)) return false;
  const profile = resolveCostProfile(vm.variant.costModel);
  const hold = profile.handler['pf_fixed']?.cycles ?? 0;
  if (!(hold > 0)) return false;
  const priced = pricedCounters(profile);
  lock.timeline = new LockTimeline(vm.vcpus.length, hold, (v) => vcpuClockOf(vm, priced, v));
  return true;
}

/**
 * Guest progress over a stretch of a run: guest accesses per 1000 modelled cycles, the cycles being the cost
 * model's (exits, handlers, the guest's own faults, walk references, spins on `mmu_lock`) plus
 * GUEST_ACCESS_CYCLES per access. 0 when no access was made.
 */
export function guestProgress(accesses: number, cycles: number): number {
  const total = cycles + accesses * GUEST_ACCESS_CYCLES;
  return total > 0 ? (accesses * 1000) / total : 0;
}
