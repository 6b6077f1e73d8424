import { existsSync, readFileSync } from 'node:fs';
import { dirname, extname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  COST_PROFILES,
  composeVariant,
  parseCostProfile,
  type CostProfile,
  DEFAULT_MODULE_SOURCES,
  isPathSpecifier,
  type ModuleSources,
  type Variant,
  type VariantProblem,
} from '@vmexit/core';
import type { Command } from 'commander';
import { InputError } from './errors.js';

/** The variant flags, as commander parses them (all optional: a config file or the schema's defaults fill the rest). */
export interface VariantOptions {
  backend?: string;
  mmu?: string;
  policy?: string;
  config?: string;
  costModel?: string;
  vcpus?: string;
  memory?: string;
}

/**
 * Adds the variant flags to `cmd`: `--backend vmx|svm|none --mmu shadow|tdp --policy a,b --config FILE --cost-model NAME --vcpus N --memory SIZE`.
 * `tdp` loads only where a package `@vmexit/mmu-tdp` is installed (this release has none).
 */
export function addVariantOptions(cmd: Command): Command {
  return cmd
    .option('--backend <name>', 'the hypervisor backend: vmx, svm or none (native)')
    .option(
      '--mmu <name>',
      'the MMU: shadow (tdp, two-dimensional paging, needs the @vmexit/mmu-tdp package, which this release does not include); not with --backend none',
    )
    .option('--policy <list>', 'fault policies in order, comma-separated: built-in names, package names or paths')
    .option('--config <file>', 'a variant file: vmexit.config.json or vmexit.config.mjs (flags override its fields)')
    .option('--cost-model <name|file>', `the cost model for modelled cycles: ${Object.keys(COST_PROFILES).join(', ')}, or a JSON file (docs/cost-models.md)`)
    .option('--vcpus <n>', 'number of vCPUs')
    .option('--memory <size>', 'guest RAM, e.g. 256M or 1G');
}

/** Where the variant's modules come from, and the directory relative names are resolved from (tests pass their own). */
export interface VariantContext {
  readonly cwd?: string;
  readonly sources?: ModuleSources;
}

/**
 * Builds the variant from `--config FILE` (if given) with the flags on top, then checks all of it: the
 * schema (unknown keys, wrong types), that every policy is known or loads from its package or path, its
 * options, and that the backend and MMU provide what each policy needs. Any problem is an InputError
 * (exit 2) with one line per problem, each with the path of the offending field; nothing runs.
 */
export async function variantFromOptions(opts: VariantOptions, context: VariantContext = {}): Promise<Variant> {
  const cwd = context.cwd ?? process.cwd();
  const raw = await rawVariant(opts, cwd);
  const comp = await composeVariant(raw, context.sources ?? DEFAULT_MODULE_SOURCES);
  if (comp.problems.length > 0 || comp.variant === null) throw variantInputError(comp.problems, opts.config);
  return comp.variant;
}

/** The variant as data, before validation: the config file's object with the flags applied. */
export async function rawVariant(opts: VariantOptions, cwd: string): Promise<Record<string, unknown>> {
  let raw: Record<string, unknown> = {};
  let from = cwd;
  if (opts.config !== undefined) {
    const file = resolve(cwd, opts.config);
    raw = await readConfig(file);
    from = dirname(file);
  }
  raw = { ...raw };
  if (raw.resolveFrom === undefined) raw.resolveFrom = from;
  if (opts.backend !== undefined) raw.backend = opts.backend;
  if (opts.mmu !== undefined) raw.mmu = opts.mmu;
  if (opts.costModel !== undefined) raw.costModel = opts.costModel;
  // A cost model from a file (`--cost-model ./mine.json`, or "costModel": "./mine.json" in a config, relative to it).
  if (typeof raw.costModel === 'string' && raw.costModel.endsWith('.json')) {
    const base = opts.costModel !== undefined ? cwd : from;
    raw.costModel = readCostModel(resolve(base, raw.costModel), opts.costModel !== undefined ? '--cost-model' : 'costModel');
  }
  if (opts.vcpus !== undefined) raw.vcpus = /^\d+$/.test(opts.vcpus) ? Number(opts.vcpus) : opts.vcpus;
  if (opts.memory !== undefined) raw.memory = /^\d+$/.test(opts.memory) ? Number(opts.memory) : opts.memory;
  if (opts.policy !== undefined) {
    // Paths on the command line are relative to the working directory, whatever the config's directory is.
    raw.policies = opts.policy
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s.length > 0)
      .map((use) => ({ use: isPathSpecifier(use) && !use.startsWith('file:') ? resolve(cwd, use) : use }));
  }
  return raw;
}

/**
 * Reads a custom cost model (a JSON file shaped as `CostProfile`, see docs/cost-models.md) and validates it:
 * an InputError (exit 2) names the file and each bad field's path.
 */
export function readCostModel(file: string, flag: string): CostProfile {
  if (!existsSync(file)) throw new InputError(`${flag} ${file}: no such file`);
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new InputError(`${flag} ${file}: not valid JSON: ${e instanceof Error ? e.message : String(e)}`);
  }
  const r = parseCostProfile(value);
  if (r.profile === null)
    throw new InputError(`${flag} ${file}: not a cost model:\n${r.problems.map((p) => `  ${p.path || '(model)'}: ${p.message}`).join('\n')}`);
  return r.profile;
}

/** Reads a variant file: JSON (`vmexit.config.json`) or an ES module whose default export is the variant (`.mjs`). */
export async function readConfig(file: string): Promise<Record<string, unknown>> {
  if (!existsSync(file)) throw new InputError(`--config ${file}: no such file`);
  const ext = extname(file);
  let value: unknown;
  if (ext === '.mjs' || ext === '.js') {
    try {
      const ns = (await import(pathToFileURL(file).href)) as { default?: unknown };
      value = typeof ns.default === 'function' ? await (ns.default as () => unknown)() : ns.default;
    } catch (e) {
      throw new InputError(`--config ${file}: cannot load: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (value === undefined) throw new InputError(`--config ${file}: the module has no default export (export default { backend: 'vmx', ... })`);
  } else if (ext === '.json') {
    try {
      value = JSON.parse(readFileSync(file, 'utf8'));
    } catch (e) {
      throw new InputError(`--config ${file}: not valid JSON: ${e instanceof Error ? e.message : String(e)}`);
    }
  } else {
    throw new InputError(`--config ${file}: expected a .json or .mjs file`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new InputError(`--config ${file}: the variant must be an object`);
  return value as Record<string, unknown>;
}

export function variantInputError(problems: readonly VariantProblem[], config?: string): InputError {
  const where = config !== undefined ? ` (${config})` : '';
  return new InputError(`invalid variant${where}:\n${problems.map((p) => `  ${p.path || '(variant)'}: ${p.message}`).join('\n')}`);
}
