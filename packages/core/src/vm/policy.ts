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
