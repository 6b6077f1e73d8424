import { connect, filter, identity, merge, pipe, tap, type MonoTypeOperatorFunction } from 'rxjs';
import { PF_VECTOR, type FaultPolicy, type MmuEvent, type OptionsSchema, type PolicySetupContext, type PolicyVcpuContext, type VmExit } from '@vmexit/core';
import { PolicyError } from './errors.js';

/**
 * Where `splitPolicy` sends things: by the VM's backend (the whole policy is the `true` branch on that
 * backend, the `false` branch elsewhere), or exit by exit (the exits for which `exit` holds go through the
 * `true` branch, the others through the `false` branch).
 */
export type SplitCondition =
  | { readonly backend: 'vmx' | 'svm' }
  | {
      /** Whether `exit` goes through the `true` branch. */
      readonly exit: (exit: VmExit) => boolean;
    };

/** `#PF` exits whose error code has (errorCode & mask) === match: a condition for `splitPolicy`. */
export function errorCodeMatches(mask: number, match: number): (exit: VmExit) => boolean {
  return (exit) => exit.kind === 'exception' && exit.vector === PF_VECTOR && (exit.errorCode & mask) === match;
}

// Branches are policies of any options type; the split hands each its own options object.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyPolicy = FaultPolicy<any>;

/** What `splitPolicy` composes: the new policy's name and description, the condition, and the policies of its `true` and `false` branches. */
export interface SplitPolicyConfig {
  readonly name: string;
  readonly description?: string;
  readonly condition: SplitCondition;
  readonly true: AnyPolicy;
  /** Default: nothing (exits and events pass on untouched). */
  readonly false?: AnyPolicy;
}

/** A split's options: each branch's own options, validated by that branch's schema. */
export interface SplitOptions {
  readonly true: unknown;
  readonly false: unknown;
}

/**
 * Routes to one of two policies, as tRPC's `splitLink` routes to one of two links (links/splitLink.ts): by
 * backend (`{ backend: 'vmx' }`), or exit by exit (`{ exit: errorCodeMatches(PFERR_PRESENT, 0) }`).
 *
 * - By backend, the split needs only what both branches need; the chosen branch's other needs are checked
 *   when the VM is built (a PolicyError names the missing capability). Setup, exits and MMU events are the
 *   chosen branch's.
 * - Exit by exit, the split needs what either branch needs, sets both up, routes each exit to one branch's
 *   operator (the order of exits is kept), and passes MMU events (which are not exits) through both
 *   branches, `true` first.
 *
 * Options: `{ "true": {...}, "false": {...} }`, each validated by its branch's schema.
 *
 * @example
 * // not-present faults bypass the hypervisor on VMX; SVM, which cannot filter #PF by error code, gets pte-update
 * const fastFaults = splitPolicy({ name: 'fast-faults', condition: { backend: 'vmx' }, true: bypassGuestPf, false: pteUpdate });
 */
export function splitPolicy(config: SplitPolicyConfig): FaultPolicy<SplitOptions> {
  const t = config.true;
  const f = config.false ?? null;
  const cond = config.condition;
  const byBackend = 'backend' in cond;
  const needs = byBackend ? t.needs.filter((n) => f === null || f.needs.includes(n)) : [...new Set([...t.needs, ...(f?.needs ?? [])])];
  const branchOf = (backend: string): AnyPolicy | null => (byBackend && backend === cond.backend ? t : byBackend ? f : null);
  const sub = <C extends { options: SplitOptions }>(ctx: C, which: 'true' | 'false'): C => ({ ...ctx, options: ctx.options[which] });
  return {
    name: config.name,
    description:
      config.description ?? `${config.true.name} ${byBackend ? `on ${cond.backend}` : 'for the exits that match'}, otherwise ${f?.name ?? 'nothing'}`,
    needs,
    optionsSchema: splitOptionsSchema(config.name, t, f),
    // Both branches' counters, `true`'s first.
    counters: [...new Set([...(t.counters ?? []), ...(f?.counters ?? [])])],
    setup(ctx: PolicySetupContext<SplitOptions>) {
      if (byBackend) {
        const b = branchOf(ctx.backend.name);
        if (b === null) return;
        for (const need of b.needs) {
          try {
            ctx.capability(need);
          } catch {
            throw new PolicyError(
              `policy '${config.name}' chose '${b.name}' on backend ${ctx.backend.name}, which needs ${need}, and this VM does not provide it`,
            );
          }
        }
        b.setup?.(sub(ctx, b === t ? 'true' : 'false'));
        return;
      }
      t.setup?.(sub(ctx, 'true'));
      f?.setup?.(sub(ctx, 'false'));
    },
    exits(ctx: PolicyVcpuContext<SplitOptions>): MonoTypeOperatorFunction<VmExit> {
      if (byBackend) {
        const b = branchOf(ctx.backend.name);
        return b?.exits?.(sub(ctx, b === t ? 'true' : 'false')) ?? identity;
      }
      const pred = cond.exit;
      const tOp: MonoTypeOperatorFunction<VmExit> = t.exits?.(sub(ctx, 'true')) ?? identity;
      const fOp: MonoTypeOperatorFunction<VmExit> = f?.exits?.(sub(ctx, 'false')) ?? identity;
      // The predicate is asked once per exit, before the exit is shared out to both branches (the pipeline is
      // synchronous: both filters see this exit before the next one comes): asked once per branch, an impure
      // predicate (a counter, a sample) could send an exit down both branches or neither.
      let toTrue = false;
      return pipe(
        tap((e: VmExit) => {
          toTrue = pred(e);
        }),
        connect((shared) =>
          merge(
            shared.pipe(
              filter(() => toTrue),
              tOp,
            ),
            shared.pipe(
              filter(() => !toTrue),
              fOp,
            ),
          ),
        ),
      );
    },
    mmuEvents(ctx: PolicyVcpuContext<SplitOptions>): MonoTypeOperatorFunction<MmuEvent> {
      if (byBackend) {
        const b = branchOf(ctx.backend.name);
        return b?.mmuEvents?.(sub(ctx, b === t ? 'true' : 'false')) ?? identity;
      }
      return pipe(t.mmuEvents?.(sub(ctx, 'true')) ?? identity, f?.mmuEvents?.(sub(ctx, 'false')) ?? identity);
    },
  };
}

type Issue = { path: readonly PropertyKey[]; message: string };

/** Validates `{ true?: {...}, false?: {...} }` with each branch's schema (a branch without one takes no options). */
function splitOptionsSchema(name: string, t: AnyPolicy, f: AnyPolicy | null): OptionsSchema<SplitOptions> {
  return {
    safeParse(value: unknown) {
      const issues: Issue[] = [];
      const v = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
      if (typeof value !== 'object' || value === null || Array.isArray(value))
        issues.push({ path: [], message: `policy '${name}' takes an object { "true": {...}, "false": {...} }` });
      for (const k of Object.keys(v))
        if (k !== 'true' && k !== 'false')
          issues.push({ path: [k], message: `unknown key (policy '${name}' takes options for its branches "true" and "false")` });
      const out: { true: unknown; false: unknown } = { true: {}, false: {} };
      for (const [which, b] of [
        ['true', t],
        ['false', f],
      ] as const) {
        const raw = v[which] ?? {};
        if (b === null) {
          if (Object.keys(raw as object).length > 0) issues.push({ path: [which], message: `policy '${name}' has no '${which}' branch` });
          continue;
        }
        if (b.optionsSchema === undefined) {
          if (typeof raw !== 'object' || raw === null || Object.keys(raw).length > 0)
            issues.push({ path: [which], message: `policy '${b.name}' takes no options` });
          continue;
        }
        const r = b.optionsSchema.safeParse(raw);
        if (r.success) out[which] = r.data;
        else for (const i of r.error.issues) issues.push({ path: [which, ...i.path], message: i.message });
      }
      return issues.length > 0 ? { success: false, error: { issues } } : { success: true, data: out };
    },
  };
}
