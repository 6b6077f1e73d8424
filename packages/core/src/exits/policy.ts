import type { MonoTypeOperatorFunction } from 'rxjs';
import { ExitError } from './errors.js';
import { stepOperator } from './step.js';
import { describeExit, type ExitResolution, type VmExit } from './vm-exit.js';

/**
 * The operator a policy is made of: for each exit that nobody resolved yet, `decide` returns a resolution
 * (the exit is taken, and later links leave it alone) or null (passed on). Exits are never dropped.
 * An exception thrown by `decide` fails the pipeline with an error that names the policy and the exit.
 * The exit object is lent for the push only: a VM with no tracer, recorder or `exits$` subscriber refills one
 * exception exit per vCPU for every exit (VmHooks), so a policy that keeps something of an exit for later (the
 * previous fault's address, a window of recent exits) copies the fields it needs, never the object.
 *
 * @example
 * // reflect every non-#PF exception into the guest
 * const reflect = resolveExits('reflect', (e) => (e.kind === 'exception' && e.vector !== 14 ? { kind: 'inject', vector: e.vector, errorCode: e.errorCode } : null));
 */
export function resolveExits(name: string, decide: (exit: VmExit) => ExitResolution | null): MonoTypeOperatorFunction<VmExit> {
  return selfNaming(
    name,
    stepOperator((exit: VmExit) => {
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
    }),
  );
}

const POLICY_NAME = Symbol('vmexit.policyName');
const SELF_NAMING = Symbol('vmexit.selfNaming');

/** An operator marked with its policy's name (`namedPolicy`), and whether it names itself in its errors. */
type Marked<T> = MonoTypeOperatorFunction<T> & { [POLICY_NAME]?: string; [SELF_NAMING]?: true };

/** Marks `op` as policy `name`'s, whose errors already name it (resolveExits, decideMmuEvents). */
export function selfNaming<T>(name: string, op: MonoTypeOperatorFunction<T>): MonoTypeOperatorFunction<T> {
  const m = op as Marked<T>;
  m[POLICY_NAME] = name;
  m[SELF_NAMING] = true;
  return op;
}

/**
 * A policy's operator, marked with the policy's name, so that `exitPipeline` (and `mmuEventPipeline`) can name
 * the policy when the operator throws (E_POLICY_FAILED): what the VM does with every policy's `exits` and
 * `mmuEvents` operator. An operator from `resolveExits` or `decideMmuEvents` names itself and is returned as it is.
 *
 * @example
 * const op = namedPolicy(policy.name, policy.exits(ctx));
 */
export function namedPolicy<T>(name: string, operator: MonoTypeOperatorFunction<T>): MonoTypeOperatorFunction<T> {
  if ((operator as Marked<T>)[SELF_NAMING] === true) return operator;
  const op: Marked<T> = (source) => operator(source);
  op[POLICY_NAME] = name;
  // What else the operator says of itself (decideMmuEvents' `mmuEventKinds`) stays visible.
  for (const k of Object.keys(operator)) Object.defineProperty(op, k, { value: (operator as unknown as Record<string, unknown>)[k], enumerable: true });
  return op;
}

/** The policy name `op` was marked with (`namedPolicy`, `resolveExits`), and whether its errors name it already. */
export function policyMark(op: MonoTypeOperatorFunction<unknown>): { name: string | null; selfNaming: boolean } {
  const m = op as Marked<unknown>;
  return { name: m[POLICY_NAME] ?? null, selfNaming: m[SELF_NAMING] === true };
}
