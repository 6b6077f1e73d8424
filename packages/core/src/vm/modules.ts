import { existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { ContainerModule } from 'inversify';

/** Where a ContainerModule comes from: the module itself, or a package name / path to import. */
export type ModuleSource = ContainerModule | string;

/**
 * Where createVm finds the packages a variant names. Core never imports a leaf package: the caller (the CLI)
 * passes the modules it has, or package names that are imported when needed.
 */
export interface ModuleSources {
  readonly backends: Readonly<Record<string, ModuleSource>>;
  readonly mmus: Readonly<Record<string, ModuleSource>>;
  /** Packages whose policies are built in (listed by `vmexit policies`, named by policy name). */
  readonly policies: readonly ModuleSource[];
}

/** The monorepo's own packages, by package name (the CLI passes these). */
export const DEFAULT_MODULE_SOURCES: ModuleSources = {
  backends: { vmx: '@vmexit/backend-vmx', svm: '@vmexit/backend-svm' },
  mmus: { shadow: '@vmexit/mmu-shadow', tdp: '@vmexit/mmu-tdp' },
  policies: ['@vmexit/policies'],
};

/**
 * MMUs that the variant schema names but this release does not ship, with the package that is to provide
 * each: composing one says which package is missing, instead of "no module". When that package is
 * released, its entry moves from here to `DEFAULT_MODULE_SOURCES.mmus`. Empty: every MMU the schema names
 * (shadow, tdp) is released; a source that names a package that is not installed still says so.
 */
export const UNRELEASED_MMU_PACKAGES: Readonly<Record<string, string>> = {};

/** A module that could not be loaded: the message says which and why. */
export class ModuleLoadError extends Error {
  readonly code = 'E_MODULE_LOAD';
  /** True when the module is a package name that no node_modules on the way holds (rather than one that fails to load). */
  readonly notInstalled: boolean;
  constructor(message: string, options?: { cause?: unknown; notInstalled?: boolean }) {
    super(message, options);
    this.name = 'ModuleLoadError';
    this.notInstalled = options?.notInstalled ?? false;
  }
}

/**
 * Whether a `use` string is a path (rather than a policy or package name): `.` or `..`, it starts with `./`,
 * `../`, `/` or `file:`, ends in .js/.mjs/.cjs, or has a `/` without being a scoped package name (`@scope/name`).
 */
export function isPathSpecifier(s: string): boolean {
  return (
    s === '.' ||
    s === '..' ||
    s.startsWith('./') ||
    s.startsWith('../') ||
    s.startsWith('/') ||
    s.startsWith('file:') ||
    isAbsolute(s) ||
    /\.(m?js|cjs)$/.test(s) ||
    (s.includes('/') && !s.startsWith('@'))
  );
}

function looksLikeContainerModule(x: unknown): x is ContainerModule {
  return typeof x === 'object' && x !== null && typeof (x as { load?: unknown }).load === 'function' && typeof (x as { id?: unknown }).id === 'number';
}

/**
 * Imports `specifier` (a package name or a path) and returns the ContainerModule it exports as `default`,
 * `containerModule` or `module`. Package names are resolved from `from` (a directory) upwards through
 * node_modules, then from core's own location; paths relative to `from`.
 */
export async function importContainerModule(specifier: string, from: string): Promise<ContainerModule> {
  const file = resolveSpecifier(specifier, from);
  // The specifier as given, then the file it resolved to (once, when they are the same).
  const where = specifier === file ? `'${file}'` : `'${specifier}' (${file})`;
  let ns: Record<string, unknown>;
  try {
    ns = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (e) {
    throw new ModuleLoadError(`cannot load ${where}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  for (const key of ['default', 'containerModule', 'module']) {
    const m = ns[key];
    if (looksLikeContainerModule(m)) return m;
  }
  throw new ModuleLoadError(
    `${where} exports no inversify ContainerModule (expected a default export, or 'containerModule')${policyInsteadOfModule(ns['default'])}`,
  );
}

/** The hint for a default export that is a policy itself (a FaultPolicy's name and operators) instead of a module binding it. */
function policyInsteadOfModule(x: unknown): string {
  if (typeof x !== 'object' || x === null) return '';
  const p = x as { name?: unknown; exits?: unknown; mmuEvents?: unknown; setup?: unknown };
  if (typeof p.name !== 'string' || ![p.exits, p.mmuEvents, p.setup].some((f) => typeof f === 'function')) return '';
  return `; its default export is a policy ('${p.name}'), not a module: export default new ContainerModule(({ bind }) => { bind(Symbol.for('vmexit.FaultPolicy')).toConstantValue(policy); })`;
}

export async function loadModuleSource(source: ModuleSource, from: string): Promise<ContainerModule> {
  return typeof source === 'string' ? importContainerModule(source, from) : source;
}

/** Whether `source` is there to load: a module, or a package name or path that resolves (nothing is imported). */
export function isModuleSourceInstalled(source: ModuleSource, from: string): boolean {
  if (typeof source !== 'string') return true;
  try {
    resolveSpecifier(source, from);
    return true;
  } catch {
    return false;
  }
}

/**
 * The file to import for `specifier`, with symbolic links resolved (as Node resolves a module: a linked
 * package's own imports are then found from where it really is, as `npm link` and workspaces expect).
 */
export function resolveSpecifier(specifier: string, from: string): string {
  return realpathSync(resolveSpecifierPath(specifier, from));
}

function resolveSpecifierPath(specifier: string, from: string): string {
  if (specifier.startsWith('file:')) return fileURLToPath(specifier);
  if (isPathSpecifier(specifier)) {
    const p = resolve(from, specifier);
    if (!existsSync(p)) throw new ModuleLoadError(`no such file or directory: ${p}`);
    return statSync(p).isDirectory() ? packageEntry(p, specifier) : p;
  }
  const here = dirname(fileURLToPath(import.meta.url));
  for (const start of [resolve(from), here]) {
    for (let dir = start; ; dir = dirname(dir)) {
      // The package itself, as Node's self-reference resolves it: `vmexit run --policy my-policy` inside my-policy.
      if (start !== here && ownPackageName(dir) === specifier) return packageEntry(dir, specifier);
      const pkg = join(dir, 'node_modules', specifier);
      if (existsSync(join(pkg, 'package.json'))) return packageEntry(pkg, specifier);
      if (dirname(dir) === dir) break;
    }
  }
  throw new ModuleLoadError(`package '${specifier}' is not installed (looked in node_modules from ${resolve(from)} upwards)`, { notInstalled: true });
}

/** The `name` of `dir/package.json`, or null (no such file, or not readable JSON). */
function ownPackageName(dir: string): string | null {
  try {
    const name = (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: unknown }).name;
    return typeof name === 'string' ? name : null;
  } catch {
    return null;
  }
}

/** A package directory's ESM entry: exports["."] (import / default / node), else module, else main, else index.js. */
function packageEntry(dir: string, specifier: string): string {
  const pj = join(dir, 'package.json');
  if (!existsSync(pj)) {
    const idx = ['index.mjs', 'index.js'].map((f) => join(dir, f)).find((f) => existsSync(f));
    if (idx !== undefined) return idx;
    throw new ModuleLoadError(`'${specifier}' (${dir}) has no package.json and no index.mjs`);
  }
  let pkg: { exports?: unknown; module?: string; main?: string };
  try {
    pkg = JSON.parse(readFileSync(pj, 'utf8')) as typeof pkg;
  } catch (e) {
    throw new ModuleLoadError(`'${specifier}': cannot read ${pj}: ${e instanceof Error ? e.message : String(e)}`);
  }
  const pick = (e: unknown): string | null => {
    if (typeof e === 'string') return e;
    if (typeof e === 'object' && e !== null) {
      const o = e as Record<string, unknown>;
      if ('.' in o) return pick(o['.']);
      for (const k of ['import', 'node', 'default']) if (k in o) return pick(o[k]);
    }
    return null;
  };
  const entry = pick(pkg.exports) ?? pkg.module ?? pkg.main ?? 'index.js';
  const file = join(dir, entry);
  if (!existsSync(file)) throw new ModuleLoadError(`'${specifier}': its entry ${file} does not exist (is the package built?)`);
  return file;
}
