import { z } from 'zod';
import { VM_EXIT_KINDS } from '../exits/vm-exit.js';
import { COST_HANDLER_COUNTERS, type CostProfile } from './model.js';
import { builtInCostProfile, COST_PROFILES } from './profiles.js';

/**
 * The most cycles one figure may price an event at: 1e9, a third of a second at 3 GHz, about 265,000 times
 * the largest built-in figure (3,780). A larger figure is a mistake (1e308 would make a run's modelled cycles infinite),
 * and is refused with its field's path.
 */
export const MAX_FIGURE_CYCLES = 1e9;

const figureSchema = z.strictObject({
  cycles: z
    .number()
    .finite()
    .nonnegative()
    .max(MAX_FIGURE_CYCLES, {
      error: (iss) => `${String(iss.input)} cycles is over the limit of ${MAX_FIGURE_CYCLES.toExponential().replace('+', '')} cycles per event`,
    }),
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
  handler: z.strictObject(
    Object.fromEntries(COST_HANDLER_COUNTERS.map((c) => [c, figureSchema.optional()])) as Record<
      (typeof COST_HANDLER_COUNTERS)[number],
      z.ZodOptional<typeof figureSchema>
    >,
  ),
  guestFault: figureSchema,
  walkReference: figureSchema,
});

/** A cost model in a variant: a built-in one by name, or a whole profile. */
export type CostModelInput = string | CostProfile;

/**
 * Validates `raw` as a cost profile: the profile, or each problem with the path of its field
 * (`exitRoundTrip.exception.cycles`); an unknown key is a problem of its own path (`handler.bogus: unknown key`).
 */
export function parseCostProfile(raw: unknown): { profile: CostProfile; problems: [] } | { profile: null; problems: { path: string; message: string }[] } {
  const r = costProfileSchema.safeParse(raw);
  if (r.success) return { profile: r.data, problems: [] };
  return {
    profile: null,
    problems: r.error.issues.flatMap((i) => {
      const path = i.path.map(String).join('.');
      if (i.code !== 'unrecognized_keys') return [{ path, message: i.message }];
      const expected = path === 'handler' ? ` (expected ${COST_HANDLER_COUNTERS.join(', ')})` : '';
      return i.keys.map((k) => ({ path: path === '' ? k : `${path}.${k}`, message: `unknown key${expected}` }));
    }),
  };
}

/** The profile a variant's `costModel` stands for (a built-in name or a profile); RangeError for an unknown name. */
export function resolveCostProfile(model: CostModelInput): CostProfile {
  if (typeof model !== 'string') return model;
  const p = builtInCostProfile(model);
  if (p === undefined) throw new RangeError(`unknown cost model '${model}' (expected one of ${Object.keys(COST_PROFILES).join(', ')}, or a profile)`);
  return p;
}
