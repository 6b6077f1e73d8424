import { existsSync, readFileSync } from 'node:fs';
import { dirname, extname, isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { composeVariant, DEFAULT_MODULE_SOURCES, isPathSpecifier, type ModuleSources, type Variant, type VariantProblem } from '@vmexit/core';
import { InputError } from './errors.js';

/** What a spec may override in every variant (as the CLI's flags give them: strings). */
export interface VariantOverrides {
  readonly vcpus?: string;
  readonly memory?: string;
  readonly costModel?: string;
}

/** Where relative names are resolved from, and where the variant's modules come from (tests pass their own). */
export interface VariantContext {
  readonly cwd?: string;
  readonly sources?: ModuleSources;
}

/**
 * A variant spec: a config file (`.json`/`.mjs`, which must exist), or words: a backend (`vmx`, `svm`,
 * `none`/`native`), an MMU (`shadow`, `tdp`) and comma-separated policies, in any order
 * (`"vmx shadow pte-update,bypass-guest-pf"`). The composed variant is checked in full (schema, policies,
 * capabilities); any problem is an InputError naming the spec and each offending field.
 */
export async function parseVariantSpec(spec: string, overrides: VariantOverrides = {}, context: VariantContext = {}): Promise<Variant> {
  const cwd = context.cwd ?? process.cwd();
  const trimmed = spec.trim();
  if (/\.(json|mjs|js)$/.test(trimmed)) {
    const file = resolve(cwd, trimmed);
    if (!existsSync(file)) throw new InputError(`--variant ${spec}: no such config file`);
    const raw = { ...(await readVariantFile(file)) };
    if (raw.resolveFrom === undefined) raw.resolveFrom = dirname(file);
    return compose(applyOverrides(raw, overrides), context, ` (${trimmed})`, '');
  }
  const raw: Record<string, unknown> = { resolveFrom: cwd };
  const policies: string[] = [];
  for (const word of trimmed.split(/\s+/).filter((w) => w.length > 0)) {
    if (word === 'vmx' || word === 'svm' || word === 'none') raw.backend = word;
    else if (word === 'native') raw.backend = 'none';
    else if (word === 'shadow' || word === 'tdp') raw.mmu = word;
    else policies.push(...word.split(',').filter((p) => p.length > 0));
  }
  if (raw.backend === undefined) throw new InputError(`--variant "${spec}": name a backend (vmx, svm, or native)`);
  // Paths on the command line are relative to the working directory.
  if (policies.length > 0) raw.policies = policies.map((use) => ({ use: isPathSpecifier(use) && !use.startsWith('file:') ? resolve(cwd, use) : use }));
  return compose(applyOverrides(raw, overrides), context, '', `--variant "${spec}": `);
}

function applyOverrides(raw: Record<string, unknown>, o: VariantOverrides): Record<string, unknown> {
  const out = { ...raw };
  if (o.costModel !== undefined) out.costModel = o.costModel;
  if (o.vcpus !== undefined) out.vcpus = /^\d+$/.test(o.vcpus) ? Number(o.vcpus) : o.vcpus;
  if (o.memory !== undefined) out.memory = /^\d+$/.test(o.memory) ? Number(o.memory) : o.memory;
  return out;
}

async function compose(raw: Record<string, unknown>, context: VariantContext, where: string, prefix: string): Promise<Variant> {
  const comp = await composeVariant(raw, context.sources ?? DEFAULT_MODULE_SOURCES);
  if (comp.problems.length > 0 || comp.variant === null) throw new InputError(`${prefix}${variantProblems(comp.problems, where)}`);
  return comp.variant;
}

function variantProblems(problems: readonly VariantProblem[], where: string): string {
  return `invalid variant${where}:\n${problems.map((p) => `  ${p.path || '(variant)'}: ${p.message}`).join('\n')}`;
}

/** Reads a variant file: JSON (`vmexit.config.json`) or an ES module whose default export is the variant (`.mjs`). */
export async function readVariantFile(file: string): Promise<Record<string, unknown>> {
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

/** A spec with any config-file path made absolute, so that a worker elsewhere (another thread, directory) reads the same file. */
export function absoluteSpec(spec: string, cwd: string = process.cwd()): string {
  const t = spec.trim();
  return /\.(json|mjs|js)$/.test(t) && !isAbsolute(t) ? resolve(cwd, t) : t;
}
