/**
 * The cost model: cycles per counted event, so that a run can report modelled cycles beside its counts.
 * Every figure names where it comes from (`source`); `basis` says whether it is a published measurement,
 * one measured on this project's machine, derived from those by arithmetic (shown in the source text), or an
 * estimate: a number no source gives, chosen by this project (the source text says what it rests on).
 */
export interface CostFigure {
  readonly cycles: number;
  readonly basis: 'published' | 'measured' | 'derived' | 'estimate';
  readonly source: string;
}

/** The counters a `handler` figure may price: the hypervisor's work per KVM event (docs/cost-models.md). */
export const COST_HANDLER_COUNTERS = ['pf_fixed', 'pf_guest', 'insn_emulation'] as const;

/**
 * The events a profile prices, each applied to a counter:
 * - `exitRoundTrip[kind]`: VM exit + VM entry for an exit of that kind (counter `exits.kind.<kind>`);
 * - `userspaceExit`: the extra round trip to user space of an MMIO exit (`mmio_exits`) and of a dirty ring's
 *   KVM_EXIT_DIRTY_RING_FULL (`dirty_ring_full_exits`: KVM_RUN returns and is called again, no VM exit of its own);
 * - `handler`: the hypervisor's work per KVM event (`pf_fixed`, `pf_guest`, `insn_emulation`: COST_HANDLER_COUNTERS);
 *   `handler.pf_fixed` also prices `pf_spurious`, a fault that ran the same handler and found its spte already made;
 * - `guestFault`: the guest kernel's own #PF handling, per fault delivered to the guest (`guest.page_faults`);
 * - `walkReference`: one memory reference of a hardware page walk (`walk_refs`);
 * - and, in every profile, the cycles vCPUs spun on a contended `mmu_lock` (`mmu_lock.spin_cycles`), one for one.
 */
export interface CostProfile {
  readonly name: string;
  readonly description: string;
  readonly exitRoundTrip: Readonly<Record<string, CostFigure>>;
  readonly userspaceExit: CostFigure;
  readonly handler: Readonly<Partial<Record<(typeof COST_HANDLER_COUNTERS)[number], CostFigure>>>;
  readonly guestFault: CostFigure;
  readonly walkReference: CostFigure;
}

/** Modelled cycles of a run: the total and the part of each priced counter. */
export interface CostReport {
  readonly profile: string;
  readonly cycles: number;
  readonly breakdown: Readonly<Record<string, number>>;
}

const SPIN_CYCLE: CostFigure = {
  cycles: 1,
  basis: 'derived',
  source: "mmu_lock.spin_cycles counts modelled cycles (core's LockTimeline: the overlap of two vCPUs' critical sections on their modelled clocks)",
};

/**
 * The counters `profile` prices, each with its figure, in the order modelCycles adds them: exits by kind, the
 * user-space exits, the handlers (`pf_spurious` at the `pf_fixed` figure), the guest's own faults, walk
 * references, and the cycles spun on `mmu_lock`.
 */
export function pricedCounters(profile: CostProfile): [counter: string, figure: CostFigure][] {
  const out: [string, CostFigure][] = [];
  for (const [kind, fig] of Object.entries(profile.exitRoundTrip)) out.push([`exits.kind.${kind}`, fig]);
  out.push(['mmio_exits', profile.userspaceExit], ['dirty_ring_full_exits', profile.userspaceExit]);
  for (const [counter, fig] of Object.entries(profile.handler)) out.push([counter, fig]);
  // A spurious fault runs a fixed fault's handler and finds nothing left to do at its end: FNAME(page_fault)
  // (paging_tmpl.h) walks the guest tables, faults the pfn in and takes mmu_lock before FNAME(fetch)'s
  // mmu_set_spte (mmu.c) sees the spte it would make already there (RET_PF_SPURIOUS; tdp_mmu.c
  // tdp_mmu_map_handle_target_level and mmu.c fast_page_fault likewise), and kvm_mmu_do_page_fault
  // (mmu_internal.h) counts pf_spurious instead of pf_fixed. So it costs what a fixed fault's handler does.
  const fixed = profile.handler.pf_fixed;
  if (fixed !== undefined) out.push(['pf_spurious', fixed]);
  out.push(['guest.page_faults', profile.guestFault], ['walk_refs', profile.walkReference]);
  // Cycles a vCPU spun on a contended mmu_lock (LockTimeline): already cycles, priced one for one.
  out.push(['mmu_lock.spin_cycles', SPIN_CYCLE]);
  return out;
}

/** Prices `counters` (a VM's or one vCPU's snapshot) under `profile`. Counters the profile does not price cost nothing. */
export function modelCycles(profile: CostProfile, counters: Readonly<Record<string, number>>): CostReport {
  const breakdown: Record<string, number> = {};
  let total = 0;
  for (const [counter, fig] of pricedCounters(profile)) {
    const n = counters[counter] ?? 0;
    if (n === 0) continue;
    const c = n * fig.cycles;
    breakdown[counter] = (breakdown[counter] ?? 0) + c;
    total += c;
  }
  return { profile: profile.name, cycles: total, breakdown };
}
