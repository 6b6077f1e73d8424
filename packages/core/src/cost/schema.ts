import { z } from 'zod';
import { VM_EXIT_KINDS } from '../exits/vm-exit.js';
import type { CostProfile } from './model.js';
import { COST_PROFILES } from './profiles.js';

const figureSchema = z.strictObject({
  cycles: z.number().finite().nonnegative(),
  basis: z.enum(['published', 'measured', 'derived', 'estimate']),
  source: z.string().min(1, 'say where the figure comes from'),
});

/**
 * A cost model as data (a custom one from a JSON file: `vmexit run --cost-model ./mine.json`): the shape of
 * `CostProfile`, every exit kind priced (`exitRoundTrip` has one figure per kind), unknown keys errors.
 */
export const costProfileSchema = z.strictObject({
  name: z.string().min(1),
  description: z.string(),
  exitRoundTrip: z.record(z.enum(VM_EXIT_KINDS as unknown as [string, ...string[]]), figureSchema),
  userspaceExit: figureSchema,
  handler: z.record(z.string().min(1), figureSchema),
  guestFault: figureSchema,
  walkReference: figureSchema,
});

/** A cost model in a variant: a built-in one by name, or a whole profile. */
export type CostModelInput = string | CostProfile;

/** Validates `raw` as a cost profile: the profile, or each problem with the path of its field (`exitRoundTrip.exception.cycles`). */
export function parseCostProfile(raw: unknown): { profile: CostProfile; problems: [] } | { profile: null; problems: { path: string; message: string }[] } {
  const r = costProfileSchema.safeParse(raw);
  if (r.success) return { profile: r.data, problems: [] };
  return { profile: null, problems: r.error.issues.map((i) => ({ path: i.path.map(String).join('.'), message: i.message })) };
}

/** The profile a variant's `costModel` stands for (a built-in name or a profile); RangeError for an unknown name. */
export function resolveCostProfile(model: CostModelInput): CostProfile {
  if (typeof model !== 'string') return model;
  const p = COST_PROFILES[model];
  if (p === undefined) throw new RangeError(`unknown cost model '${model}' (expected one of ${Object.keys(COST_PROFILES).join(', ')}, or a profile)`);
  return p;
}
