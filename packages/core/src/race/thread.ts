/**
 * One thread of a race scenario: a vCPU's guest accesses and the MMU operations they cause, or the host's
 * dirty-log harvester, split into steps at the points where KVM's threads race (Documentation/virt/kvm/
 * locking.rst): taking and releasing `mmu_lock`, `walk_shadow_page_lockless_begin/end`, each spte read, each
 * spte compare-and-swap, a guest store, a remote TLB flush. A step is atomic; between two steps the scheduler
 * may run another thread.
 */
export interface RaceThread {
  /** A short name for schedules and reports ("vcpu0", "harvest"). */
  readonly name: string;
  /** True when the thread has finished. */
  readonly done: boolean;
  /** False while the thread cannot make progress (it spins on a held lock): the scheduler picks another. */
  runnable(): boolean;
  /** Performs one atomic step; returns a label of what it did (for the reproducing schedule). */
  step(): string;
}

/** A scenario instance: its threads, and the check after all of them ran (a list of violations, empty when none). */
export interface RaceInstance {
  readonly threads: readonly RaceThread[];
  /** Runs after every thread finished: the violations of the scenario's invariants (empty when none). */
  check(): string[];
  /** Counters of this interleaving (lock acquisitions, contentions, fast fixes...), summed by the explorer. */
  stats?(): Record<string, number>;
}

/** A named small scenario: `create()` builds a fresh instance (the explorer replays schedules from the start). */
export interface RaceScenario {
  readonly name: string;
  readonly description: string;
  /** A fresh instance, in the scenario's initial state. */
  create(): RaceInstance;
}
