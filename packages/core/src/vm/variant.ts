import { z } from 'zod';
import { PAGING_MODE_NAMES } from '../arch/modes.js';
import { builtInCostProfile, COST_PROFILES, DEFAULT_COST_PROFILE } from '../cost/profiles.js';
import { costProfileSchema } from '../cost/schema.js';

/** One problem with a variant: the path of the offending field (`policies.1.use`) and what is wrong. */
export interface VariantProblem {
  readonly path: string;
  readonly message: string;
}

/** A variant that cannot be composed. Its message has one line per problem, each with the field's path. */
export class VariantError extends Error {
  readonly code = 'E_VARIANT';
  constructor(readonly problems: readonly VariantProblem[]) {
    super(problems.map((p) => `${p.path || '(variant)'}: ${p.message}`).join('\n'));
    this.name = 'VariantError';
  }
}

const SIZE_RE = /^(\d+)\s*(K|M|G)(i?B)?$/i;

/** Guest RAM as a number of bytes or a string such as "256M", "1GiB". */
const memorySchema = z.union([z.number().int().positive(), z.string().regex(SIZE_RE, 'expected a size such as "256M" or "1G"')]).transform((v) => {
  if (typeof v === 'number') return v;
  const m = SIZE_RE.exec(v)!;
  const unit = m[2]!.toUpperCase() === 'K' ? 1024 : m[2]!.toUpperCase() === 'M' ? 1024 ** 2 : 1024 ** 3;
  return Number(m[1]) * unit;
});

/** Host page sizes that may back guest RAM (`--host-pages`): the largest leaf a TDP MMU may map (4 KiB, 2 MiB, 1 GiB). */
export const HOST_PAGE_SIZES = ['4k', '2m', '1g'] as const;
/** A host page size backing guest RAM: '4k', '2m' or '1g'. */
export type HostPages = (typeof HOST_PAGE_SIZES)[number];

export const policyUseSchema = z.strictObject({
  /** A built-in policy's name, a package name (`@acme/vmexit-policy`, optionally `#policyName`) or a path. */
  use: z.string().min(1),
  options: z.record(z.string(), z.unknown()).default({}),
});

/**
 * A variant: what runs below the guest, and the guest's shape. Unknown keys
 * are errors. `resolveFrom` is where package names and relative paths in `policies[].use` are resolved from
 * (the CLI sets it to the config file's directory, or the working directory).
 */
export const variantSchema = z.strictObject({
  backend: z.enum(['vmx', 'svm', 'none']).default('vmx'),
  mmu: z.enum(['shadow', 'tdp']).default('shadow'),
  policies: z.array(policyUseSchema).default([]),
  guest: z
    .strictObject({
      mode: z.enum(PAGING_MODE_NAMES as unknown as readonly ['legacy32', 'pae', 'long4', 'long5']).default('long4'),
      personality: z.string().min(1).default('linux'),
    })
    .default({ mode: 'long4', personality: 'linux' }),
  vcpus: z.number().int().min(1).max(256).default(1),
  memory: memorySchema.default(256 * 1024 * 1024),
  /**
   * The host page size backing guest RAM (`--host-pages`), for two-dimensional paging only (mmu 'tdp'): the
   * largest second-stage leaf the TDP MMU may build (KVM maps 2 MiB / 1 GiB where the host backing, THP or
   * hugetlbfs, and the memslot allow). Absent means 4 KiB pages, and is left out of results.
   */
  hostPages: z.enum(HOST_PAGE_SIZES, { error: "expected '4k', '2m' or '1g' (the host page size backing guest RAM)" }).optional(),
  /** A built-in cost model by name, or a whole profile (the CLI reads `--cost-model FILE.json` into one). */
  costModel: z
    .union([
      // Own keys only: `toString` is `in` every object.
      z.string().refine((n) => builtInCostProfile(n) !== undefined, {
        error: (iss) =>
          `unknown cost model '${String(iss.input)}' (expected one of ${Object.keys(COST_PROFILES).join(', ')}); a custom model is a .json file (--cost-model) or a profile object`,
      }),
      costProfileSchema,
    ])
    .default(DEFAULT_COST_PROFILE),
  resolveFrom: z.string().optional(),
});

/** A validated variant (defaults applied): backend, MMU, policies with their options, guest memory, vCPUs, cost model. */
export type Variant = z.output<typeof variantSchema>;
/** What `createVm` accepts: a variant as written in a config or built in code, before defaults (a misspelt field does not compile). */
export type VariantInput = z.input<typeof variantSchema>;
/** One entry of a variant's `policies`: the policy's name (`use`) and its options. */
export type PolicyUse = z.output<typeof policyUseSchema>;

/**
 * The fields of a variant that are valid on their own, when the variant as a whole may not be: each top-level
 * field parsed by itself (absent fields take their default), and each `policies` entry by itself (null where
 * the entry is invalid), so that the later checks (loading the backend, the MMU and each policy, the
 * policies' options and needs) run on everything that parsed and a config's problems are reported in one go.
 */
export interface VariantParts {
  readonly backend: Variant['backend'] | null;
  readonly mmu: Variant['mmu'] | null;
  /** Whether the input named an MMU (rather than taking the default). */
  readonly mmuGiven: boolean;
  /** Whether the input named a host page size (`hostPages`). */
  readonly hostPagesGiven: boolean;
  readonly policies: readonly (PolicyUse | null)[];
  readonly resolveFrom: string | undefined;
}

/** `parseVariant`, plus the fields that parsed on their own (see `VariantParts`); null parts when `raw` is not an object. */
export function parseVariantParts(raw: unknown): { variant: Variant | null; problems: VariantProblem[]; parts: VariantParts | null } {
  const whole = parseVariant(raw);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return { ...whole, parts: null };
  const r = raw as Record<string, unknown>;
  const shape = variantSchema.shape;
  const field = <S extends z.ZodType>(schema: S, value: unknown): z.output<S> | null => {
    const p = schema.safeParse(value);
    return p.success ? p.data : null;
  };
  const policies = Array.isArray(r.policies) ? r.policies.map((p) => field(policyUseSchema, p)) : (field(shape.policies, r.policies) ?? []);
  const parts: VariantParts = {
    backend: field(shape.backend, r.backend),
    mmu: field(shape.mmu, r.mmu),
    mmuGiven: r.mmu !== undefined,
    hostPagesGiven: r.hostPages !== undefined,
    policies,
    resolveFrom: field(shape.resolveFrom, r.resolveFrom) ?? undefined,
  };
  return { ...whole, parts };
}

/** Validates `raw` against the schema: the variant, or every problem found (one per field, unknown keys one each). */
export function parseVariant(raw: unknown): { variant: Variant; problems: [] } | { variant: null; problems: VariantProblem[] } {
  const r = variantSchema.safeParse(raw);
  if (r.success) return { variant: r.data, problems: [] };
  return { variant: null, problems: zodProblems(r.error.issues) };
}

/** zod issues as problems; an unrecognized key becomes one problem at its own path. */
export function zodProblems(issues: readonly z.core.$ZodIssue[], prefix: readonly PropertyKey[] = []): VariantProblem[] {
  const out: VariantProblem[] = [];
  for (const i of issues) {
    const path = [...prefix, ...i.path];
    if (i.code === 'unrecognized_keys') {
      for (const k of i.keys) out.push({ path: joinPath([...path, k]), message: 'unknown key' });
    } else {
      out.push({ path: joinPath(path), message: i.message });
    }
  }
  return out;
}

export function joinPath(path: readonly PropertyKey[]): string {
  return path.map((p) => String(p)).join('.');
}
