import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { isPathSpecifier, resolveSpecifier, type Variant } from '@vmexit/core';
import { fileDigests } from './file-digests.js';

/**
 * Where a result came from: the packages that ran (every `@vmexit/*` package and plugin, name -> version),
 * Node, the host, and when the run started. It is kept apart from what a result measures: counters, cycles
 * and digests are deterministic, provenance is not (the start time, and the host, differ from run to run).
 */
export interface Provenance {
  /**
   * Package name -> version, sorted by name. A policy given as a path appears under that path: as
   * `name@version` when the module it loads is the entry (or an `exports` target) of the package around it,
   * else as `unpackaged sha256:…`, the hash of the module file (a plugin in a plain directory has no version).
   */
  readonly packages: Readonly<Record<string, string>>;
  readonly node: string;
  readonly host: { readonly os: string; readonly release: string; readonly arch: string; readonly cpu: string; readonly cpus: number };
  /** ISO 8601, UTC. */
  readonly startedAt: string;
}

const here = createRequire(import.meta.url);

/** The version in `name`'s package.json, resolved from `from` (a directory), or null when it is not installed there. */
export function packageVersion(name: string, from?: string): string | null {
  const req = from === undefined ? here : createRequire(join(from, 'noop.js'));
  try {
    return (JSON.parse(readFileSync(req.resolve(`${name}/package.json`), 'utf8')) as { version?: string }).version ?? null;
  } catch {
    // A package whose exports map hides package.json: walk up from its entry point.
    try {
      return nearestPackage(dirname(req.resolve(name)), name)?.version ?? null;
    } catch {
      return null;
    }
  }
}

/** The package.json named `name` nearest above `dir`, or null. */
function nearestPackage(dir: string, name: string): { name?: string; version?: string } | null {
  for (let d = dir; ; d = dirname(d)) {
    const f = join(d, 'package.json');
    if (existsSync(f)) {
      const pkg = JSON.parse(readFileSync(f, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === name) return pkg;
    }
    if (dirname(d) === d) return null;
  }
}

/**
 * The package whose module `file` is: the nearest package.json above it, only when `file` is that package's entry
 * or one of its `exports` targets. A file that merely sits below some package.json (a policy in a folder of a
 * project, or of a test tree) is not that package's.
 */
function owningPackage(file: string): { name?: string; version?: string } | null {
  let dir = dirname(file);
  while (!existsSync(join(dir, 'package.json'))) {
    if (dirname(dir) === dir) return null;
    dir = dirname(dir);
  }
  let pkg: { name?: string; version?: string; exports?: unknown; module?: unknown; main?: unknown };
  try {
    pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as typeof pkg;
  } catch {
    return null;
  }
  const targets: string[] = [];
  const collect = (e: unknown): void => {
    if (typeof e === 'string') targets.push(e);
    else if (typeof e === 'object' && e !== null) for (const v of Object.values(e)) collect(v);
  };
  collect(pkg.exports);
  for (const f of [pkg.module, pkg.main]) if (typeof f === 'string') targets.push(f);
  if (targets.length === 0) targets.push('index.js');
  const owns = targets.some((t) => {
    try {
      return realpathSync(resolve(dir, t)) === file;
    } catch {
      return false;
    }
  });
  return owns ? { name: pkg.name, version: pkg.version } : null;
}

/** What provenance records for a policy given as a path (see `Provenance.packages`), resolved from `from` as the VM resolves it. */
function pathPolicyVersion(use: string, from: string): string {
  let file: string;
  try {
    file = resolveSpecifier(use, from);
  } catch {
    return 'not found';
  }
  const pkg = owningPackage(file);
  if (pkg !== null && pkg.name !== undefined) return `${pkg.name}@${pkg.version ?? 'unversioned'}`;
  return `unpackaged sha256:${fileDigests.sha256Sync(file).slice(0, 16)}`; // hashed once per thread while the file is unchanged
}

/**
 * The packages a run of `variant` loads: core, guest and lab always; the backend and MMU packages it names;
 * `@vmexit/policies` when it uses a built-in policy; and each policy given by package name or path.
 */
export function packagesOf(variant: Variant | null): Record<string, string> {
  const names = new Set(['@vmexit/core', '@vmexit/guest', '@vmexit/lab']);
  const out: Record<string, string> = {};
  if (variant !== null && variant.backend !== 'none') {
    names.add(`@vmexit/backend-${variant.backend}`);
    names.add(`@vmexit/mmu-${variant.mmu}`);
    for (const p of variant.policies) {
      const use = p.use.split('#')[0]!;
      if (isPathSpecifier(use)) {
        out[p.use] = pathPolicyVersion(use, variant.resolveFrom ?? process.cwd());
        continue;
      }
      const v = packageVersion(use, variant.resolveFrom);
      if (v !== null) out[use] = v;
      else names.add('@vmexit/policies'); // a built-in policy's name
    }
  }
  for (const n of names) out[n] = packageVersion(n) ?? 'not installed';
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** The provenance of a run of `variant` starting now. */
export function provenance(variant: Variant | null, startedAt: Date = new Date()): Provenance {
  const cpus = os.cpus();
  return {
    packages: packagesOf(variant),
    node: process.version,
    host: { os: os.platform(), release: os.release(), arch: os.arch(), cpu: cpus[0]?.model.trim() ?? 'unknown', cpus: cpus.length },
    startedAt: startedAt.toISOString(),
  };
}
