import type { MonoTypeOperatorFunction } from 'rxjs';
import type { Vcpu } from '../machine/vcpu.js';
import type { MmuEvent } from '../exits/mmu-events.js';
import type { VmExit } from '../exits/vm-exit.js';
import type { Backend } from './backend.js';
import type { Mmu } from './mmu.js';

/** A validator of a policy's options, shaped like zod's `safeParse` (zod schemas fit as they are). */
export interface OptionsSchema<O> {
  /** Checks `value`; on success returns the options with defaults applied, else the issues with their paths. */
  safeParse(value: unknown): { success: true; data: O } | { success: false; error: { issues: readonly { path: readonly PropertyKey[]; message: string }[] } };
}

/** What a policy sees once per VM, before any vCPU runs: where it programs backend and MMU capabilities. */
export interface PolicySetupContext<O> {
  readonly options: O;
  readonly backend: Backend;
  readonly mmu: Mmu;
  readonly vcpus: readonly Vcpu[];
  /** Each vCPU's backend control state (VMCS, VMCB), by vCPU id. */
  readonly backendStates: readonly unknown[];
  /** The capability object bound for `name` (one of the policy's `needs`). */
  capability<T>(name: string): T;
}

/** What a policy sees for one vCPU's streams. */
export interface PolicyVcpuContext<O> extends PolicySetupContext<O> {
  readonly vcpu: Vcpu;
  readonly backendState: unknown;
  /** Adds to a counter of this vCPU. */
  count(name: string, n?: number): void;
}

/**
 * A fault policy: a plugin that takes over some exits (or MMU decisions) before the MMU's handler does.
 * A package binds its policies to `TYPES.FaultPolicy` (multi-bound). Each exit stream gets its own operator
 * instance (per vCPU), so an operator may keep per-vCPU state.
 */
export interface FaultPolicy<O = Record<string, unknown>> {
  readonly name: string;
  readonly description: string;
  /** The capabilities it needs (keys of CAPABILITIES): composing it where one is missing fails. */
  readonly needs: readonly string[];
  readonly optionsSchema?: OptionsSchema<O>;
  /**
   * The counters (under their `--json` names, keys of `counters.total`) that show what this policy did, in the
   * order `vmexit run` prints them in its `policies` row (a result carries each composed policy's list as
   * `policyCounters`). First what its answers made the MMU count (mmu-shadow `mmu_flooded`: a shadow page zapped
   * on a pte write; `mmu_unsync`: a page let out of sync; `mmu_pte_updated`: an spte updated instead of
   * cleared), then `mmu_events.<kind>` for each kind of MMU event it takes: that counter counts every event of
   * the kind the MMU offered to the vCPU's policies, whatever they answered, so two policies that take one
   * kind show the same count. A counter the policy's own operators add to (`ctx.count(name)`) belongs here too.
   * Absent or empty: the policy counts nothing of its own (`vmexit run` shows `-`).
   *
   * @example
   * counters: ['mmu_flooded', 'mmu_events.flood']
   */
  readonly counters?: readonly string[];
  /** Runs once per VM before any vCPU does: programs backend and MMU capabilities (`ctx.capability`) for the whole VM. */
  setup?(ctx: PolicySetupContext<O>): void;
  /**
   * The operator on a vCPU's exit stream: resolve an exit (see `resolveExits`, exits/policy.ts) or pass it on
   * untouched. The exit object is lent for the push only (the VM may refill it for the next exit): keep copies of
   * its fields, never the object.
   */
  exits?(ctx: PolicyVcpuContext<O>): MonoTypeOperatorFunction<VmExit>;
  /** The operator on a vCPU's MMU-event stream (see `decideMmuEvents`). */
  mmuEvents?(ctx: PolicyVcpuContext<O>): MonoTypeOperatorFunction<MmuEvent>;
}
