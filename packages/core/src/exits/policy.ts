import { map, type MonoTypeOperatorFunction } from 'rxjs';
import { ExitError } from './errors.js';
import { describeExit, type ExitResolution, type VmExit } from './vm-exit.js';

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
