import { map, type MonoTypeOperatorFunction } from 'rxjs';
import type { Backend } from '../vm/backend.js';
import type { Mmu } from '../vm/mmu.js';
import type { Vcpu } from '../machine/vcpu.js';
import { ExitError } from './errors.js';
import type { MmuEvent } from './mmu-events.js';
import { describeExit, type ExitResolution, type VmExit } from './vm-exit.js';

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
  /** The operator on a vCPU's exit stream: resolve an exit (see `resolveExits`) or pass it on untouched. */
  exits?(ctx: PolicyVcpuContext<O>): MonoTypeOperatorFunction<VmExit>;
  /** The operator on a vCPU's MMU-event stream (see `decideMmuEvents`). */
  mmuEvents?(ctx: PolicyVcpuContext<O>): MonoTypeOperatorFunction<MmuEvent>;
}

/**
 * The operator a policy is made of: for each exit that nobody resolved yet, `decide` returns a resolution
 * (the exit is taken, and later links leave it alone) or null (passed on). Exits are never dropped.
 * An exception thrown by `decide` fails the pipeline with an error that names the policy and the exit.
 *
 * @example
 * // reflect every non-#PF exception into the guest
 * const reflect = resolveExits('reflect', (e) => (e.kind === 'exception' && e.vector !== 14 ? { kind: 'inject', vector: e.vector, errorCode: e.errorCode } : null));
 */
export function resolveExits(name: string, decide: (exit: VmExit) => ExitResolution | null): MonoTypeOperatorFunction<VmExit> {
  return map((exit: VmExit) => {
    if (exit.resolution !== null) return exit;
    let r: ExitResolution | null;
    try {
      r = decide(exit);
    } catch (e) {
      if (e instanceof ExitError) throw e;
      throw new ExitError('E_POLICY_FAILED', `policy '${name}' failed on ${describeExit(exit)}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    if (r !== null) {
      exit.resolution = r;
      exit.resolvedBy = name;
    }
    return exit;
  });
}
