import { Container, type ContainerModule } from 'inversify';
import type { FaultPolicy } from './policy.js';
import { CAPABILITIES } from './backend.js';
import {
  importContainerModule,
  isModuleSourceInstalled,
  isPathSpecifier,
  loadModuleSource,
  ModuleLoadError,
  type ModuleSource,
  type ModuleSources,
  UNRELEASED_MMU_PACKAGES,
} from './modules.js';
import { TYPES } from './tokens.js';
import { joinPath, parseVariantParts, zodProblems, type Variant, type VariantProblem } from './variant.js';

/** A policy available to variants, with where it came from. */
export interface AvailablePolicy {
  readonly policy: FaultPolicy<unknown>;
  /** The package or path that binds it ('built-in' sources give their package name). */
  readonly source: string;
}

/** The result of composing a variant: the container with everything loaded, the selected policies, the problems. */
export interface Composition {
  readonly variant: Variant | null;
  readonly container: Container;
  readonly policies: readonly { policy: FaultPolicy<unknown>; options: unknown }[];
  readonly problems: readonly VariantProblem[];
}

function newContainer(): Container {
  return new Container({ defaultScope: 'Singleton' });
}

/** The policies bound to TYPES.FaultPolicy after loading `module` into `c` that were not bound before. */
function loadAndDiff(c: Container, module: ContainerModule): FaultPolicy<unknown>[] {
  const before = c.isBound(TYPES.FaultPolicy) ? c.getAll<FaultPolicy<unknown>>(TYPES.FaultPolicy) : [];
  c.load(module);
  const after = c.isBound(TYPES.FaultPolicy) ? c.getAll<FaultPolicy<unknown>>(TYPES.FaultPolicy) : [];
  return after.filter((p) => !before.includes(p));
}

/** Every built-in policy of `sources` (for `vmexit policies`). Sources that fail to load are reported in `errors`. */
export async function listPolicies(
  sources: ModuleSources,
  from: string,
  extra: readonly string[] = [],
): Promise<{ policies: AvailablePolicy[]; errors: string[] }> {
  const c = newContainer();
  const policies: AvailablePolicy[] = [];
  const errors: string[] = [];
  for (const src of [...sources.policies, ...extra]) {
    const name = typeof src === 'string' ? src : `module #${src.id}`;
    try {
      for (const p of loadAndDiff(c, await loadModuleSource(src, from))) policies.push({ policy: p, source: name });
    } catch (e) {
      // A built-in policy package that binds nothing yet is not an error; anything else is reported.
      if (!(e instanceof ModuleLoadError && /exports no inversify ContainerModule/.test(e.message) && sources.policies.includes(src))) {
        errors.push(`${name}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
  }
  return { policies, errors };
}

/** For each capability, the backends and MMUs of `sources` whose modules bind it ("backend vmx"). Unavailable modules provide nothing. */
export async function capabilityProviders(sources: ModuleSources, from: string): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>(Object.keys(CAPABILITIES).map((k) => [k, []]));
  const kinds: ['backend' | 'mmu', Readonly<Record<string, ModuleSource>>][] = [
    ['backend', sources.backends],
    ['mmu', sources.mmus],
  ];
  for (const [kind, table] of kinds) {
    for (const [name, src] of Object.entries(table)) {
      let c: Container;
      try {
        c = newContainer();
        c.load(await loadModuleSource(src, from));
      } catch {
        continue;
      }
      for (const cap of Object.values(CAPABILITIES)) if (cap.providedBy === kind && c.isBound(cap.token)) out.get(cap.name)!.push(`${kind} ${name}`);
    }
  }
  return out;
}

/** What each MMU name stands for, in the words of a message (an MMU a variant names but no package provides). */
const MMU_TITLES: Readonly<Record<string, string>> = {
  shadow: 'shadow paging',
  tdp: 'two-dimensional paging',
};

/**
 * Validates and composes a variant: the schema, then the backend's and the MMU's modules, the built-in policy
 * packages and every package or path named in `policies[].use`, the policies' options, and the capabilities
 * each policy needs. Every problem is collected (with the path of its field), also when the schema fails:
 * the fields and policy entries that are valid on their own are still checked (see `parseVariantParts`), so
 * an unknown key does not hide an unknown package or a missing capability. Nothing is created.
 */
export async function composeVariant(raw: unknown, sources: ModuleSources): Promise<Composition> {
  const container = newContainer();
  const parsed = parseVariantParts(raw);
  const problems: VariantProblem[] = [...parsed.problems];
  const parts = parsed.parts;
  if (parts === null) return { variant: null, container, policies: [], problems };
  const from = parts.resolveFrom ?? process.cwd();
  const { coreModule } = await import('./defaults.js');
  container.load(coreModule);

  const loaded = { backend: false, mmu: false };
  // Host huge pages back guest RAM for the TDP MMU's second-stage leaves; shadow paging here maps 4 KiB sptes
  // only, and natively nothing maps guest RAM at all: a host page size there would be silently ignored.
  if (parts.hostPagesGiven && (parts.backend === 'none' || (parts.mmu !== null && parts.mmu !== 'tdp'))) {
    problems.push({
      path: 'hostPages',
      message:
        parts.backend === 'none'
          ? "host pages (--host-pages) apply to two-dimensional paging (mmu 'tdp'), and backend is 'none' (native): leave hostPages out"
          : `host pages (--host-pages) apply to two-dimensional paging (mmu 'tdp') only; mmu '${parts.mmu}' maps guest RAM with 4 KiB pages: leave hostPages out, or use mmu 'tdp'`,
    });
  }
  if (parts.backend === 'none') {
    // Native: nothing runs below the guest, so an MMU named with it would be silently ignored.
    if (parts.mmuGiven && parts.mmu !== null)
      problems.push({
        path: 'mmu',
        message: `mmu '${parts.mmu}' needs a hypervisor below it, and backend is 'none' (native): leave mmu out, or name backend vmx or svm`,
      });
  } else {
    if (parts.backend !== null) {
      const b = sources.backends[parts.backend];
      if (b === undefined) problems.push({ path: 'backend', message: `no module for backend '${parts.backend}'` });
      else {
        try {
          container.load(await loadModuleSource(b, from));
          loaded.backend = true;
        } catch (e) {
          problems.push({ path: 'backend', message: `backend '${parts.backend}' is not available: ${messageOf(e)}` });
        }
      }
    }
    if (parts.mmu !== null) {
      const m = sources.mmus[parts.mmu];
      const unreleased = UNRELEASED_MMU_PACKAGES[parts.mmu];
      if (m === undefined && unreleased !== undefined) problems.push({ path: 'mmu', message: notInThisRelease(parts.mmu, unreleased, sources, from) });
      else if (m === undefined) problems.push({ path: 'mmu', message: `no module for mmu '${parts.mmu}'${installedMmus(sources, from)}` });
      else {
        try {
          container.load(await loadModuleSource(m, from));
          loaded.mmu = true;
        } catch (e) {
          if (e instanceof ModuleLoadError && e.notInstalled && typeof m === 'string') {
            // Not a broken install: the package the sources name is not installed. A package of that name
            // that does resolve is loaded as any other.
            problems.push({ path: 'mmu', message: notInThisRelease(parts.mmu, m, sources, from) });
          } else problems.push({ path: 'mmu', message: `mmu '${parts.mmu}' is not available: ${messageOf(e)}` });
        }
      }
    }
  }

  // Built-in policies, by name: loaded only when the variant names a policy, so that a VM without policies
  // needs no policy package (the backend and the MMU are all it needs). A built-in package that is not
  // installed is no problem unless a policy is looked for in it (the message on that policy says so).
  const byName = new Map<string, FaultPolicy<unknown>>();
  const notInstalled: string[] = [];
  for (const src of parts.policies.length > 0 ? sources.policies : []) {
    try {
      for (const p of loadAndDiff(container, await loadModuleSource(src, from))) byName.set(p.name, p);
    } catch (e) {
      if (e instanceof ModuleLoadError && e.notInstalled && typeof src === 'string') notInstalled.push(src);
      else if (!(e instanceof ModuleLoadError && typeof src === 'string' && /exports no inversify ContainerModule/.test(e.message))) {
        problems.push({ path: 'policies', message: `built-in policies '${typeof src === 'string' ? src : 'module'}' failed to load: ${messageOf(e)}` });
      }
    }
  }

  const selected: { policy: FaultPolicy<unknown>; options: unknown }[] = [];
  const loadedPackages = new Map<string, FaultPolicy<unknown>[]>();
  for (const [i, use] of parts.policies.entries()) {
    if (use === null) continue; // its problems came from the schema
    const path = `policies.${i}.use`;
    let policy = byName.get(use.use);
    if (policy === undefined) {
      const hash = use.use.lastIndexOf('#');
      const spec = hash > 0 ? use.use.slice(0, hash) : use.use;
      const want = hash > 0 ? use.use.slice(hash + 1) : null;
      let bound = loadedPackages.get(spec);
      if (bound === undefined) {
        try {
          bound = loadAndDiff(container, await importContainerModule(spec, from));
        } catch (e) {
          const known = ([...byName.keys()].join(', ') || 'none') + (notInstalled.length > 0 ? `, as ${notInstalled.join(', ')} is not installed` : '');
          problems.push({
            path,
            message: isPathSpecifier(spec)
              ? `cannot load policy from '${spec}': ${loadErrorMessage(e)}`
              : `unknown policy or package '${use.use}' (built-in policies: ${known}; ${loadErrorMessage(e)})`,
          });
          continue;
        }
        // What it binds must be a policy, under a name of its own: results, traces and `resolvedBy` tell
        // policies apart by name, so a plugin may not take a built-in policy's name.
        const wrong = bound.map((p) => notAPolicy(p, byName)).find((m) => m !== null);
        if (wrong !== undefined) {
          problems.push({ path, message: `'${spec}' ${wrong}` });
          continue;
        }
        loadedPackages.set(spec, bound);
      }
      if (want !== null) policy = bound.find((p) => p.name === want);
      else if (bound.length === 1) policy = bound[0];
      if (policy === undefined) {
        problems.push({
          path,
          message:
            bound.length === 0
              ? `'${spec}' binds no policy to Symbol.for('vmexit.FaultPolicy')`
              : want !== null
                ? `'${spec}' binds no policy named '${want}' (it binds ${bound.map((p) => p.name).join(', ')})`
                : `'${spec}' binds ${bound.length} policies (${bound.map((p) => p.name).join(', ')}): name one as '${spec}#<name>'`,
        });
        continue;
      }
    }
    // Options.
    let options: unknown = use.options;
    if (policy.optionsSchema !== undefined) {
      const r = policy.optionsSchema.safeParse(use.options);
      if (r.success) options = r.data;
      else {
        for (const issue of r.error.issues) {
          if ((issue as { code?: string }).code === 'unrecognized_keys') {
            problems.push(...zodProblems([issue as never], ['policies', i, 'options']));
          } else problems.push({ path: joinPath(['policies', i, 'options', ...issue.path]), message: issue.message });
        }
      }
    } else if (Object.keys(use.options).length > 0) {
      problems.push({ path: `policies.${i}.options`, message: `policy '${policy.name}' takes no options` });
    }
    // Capabilities (not checked against a backend or MMU that is itself invalid).
    if (parts.backend === 'none') {
      problems.push({ path, message: `policy '${policy.name}' needs a hypervisor, and backend is 'none'` });
    } else {
      for (const need of policy.needs) {
        const cap = CAPABILITIES[need];
        if (cap === undefined) {
          problems.push({
            path,
            message: `policy '${policy.name}' needs '${need}', which is not a known capability (known: ${Object.keys(CAPABILITIES).join(', ')})`,
          });
        } else if (loaded[cap.providedBy] && !container.isBound(cap.token)) {
          const who = cap.providedBy === 'backend' ? `backend '${parts.backend}'` : `mmu '${parts.mmu}'`;
          problems.push({ path, message: `policy '${policy.name}' needs ${cap.name} (${cap.description}), which ${who} does not provide` });
        }
      }
    }
    selected.push({ policy, options });
  }
  return { variant: parsed.variant, container, policies: selected, problems };
}

/** ` (installed mmus: shadow)`: the MMUs of `sources` whose packages resolve from `from`. */
function notInThisRelease(mmu: string, pkg: string, sources: ModuleSources, from: string): string {
  const title = MMU_TITLES[mmu] ?? `mmu '${mmu}'`;
  return `${title} (mmu '${mmu}') is not available in this release: no ${pkg} package is installed${installedMmus(sources, from)}`;
}

function installedMmus(sources: ModuleSources, from: string): string {
  const names = Object.entries(sources.mmus)
    .filter(([, src]) => isModuleSourceInstalled(src, from))
    .map(([name]) => name);
  return ` (installed mmus: ${names.length > 0 ? names.join(', ') : 'none'})`;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Why a value bound to TYPES.FaultPolicy by a plugin cannot be composed (`binds ...`), or null: it is not a
 * FaultPolicy (a name, a description, `needs`, operators that are functions), or it has a built-in policy's name.
 */
function notAPolicy(p: unknown, builtIn: ReadonlyMap<string, FaultPolicy<unknown>>): string | null {
  const bad = (why: string): string => `binds a value to Symbol.for('vmexit.FaultPolicy') that is not a FaultPolicy: ${why}`;
  if (typeof p !== 'object' || p === null) return bad(`it is ${p === null ? 'null' : typeof p}`);
  const q = p as Record<string, unknown>;
  if (typeof q['name'] !== 'string' || q['name'].length === 0) return bad("it has no 'name'");
  if (!Array.isArray(q['needs']) || !q['needs'].every((n) => typeof n === 'string'))
    return bad(`'needs' of '${q['name']}' is not an array of capability names`);
  for (const f of ['setup', 'exits', 'mmuEvents'] as const) {
    if (q[f] !== undefined && typeof q[f] !== 'function') return bad(`'${f}' of '${q['name']}' is not a function`);
  }
  if (builtIn.has(q['name'])) return `binds a policy named '${q['name']}', the name of a built-in policy: give it a name of its own`;
  return null;
}

/** A load error's message, with what to do when inversify could not build a class bound without its decorators. */
function loadErrorMessage(e: unknown): string {
  const m = messageOf(e);
  if (!/missing metadata|Missing required @injectable/i.test(m)) return m;
  return `${m.split('\n')[0]} (a class bound to a token is @injectable() and takes each constructor argument with an explicit @inject(TOKEN); TypeScript needs "experimentalDecorators" for that)`;
}
