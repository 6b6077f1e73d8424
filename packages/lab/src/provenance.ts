import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import { dirname, join } from 'node:path';
import { isPathSpecifier, type Variant } from '@vmexit/core';

/**
 * Where a result came from: the packages that ran (every `@vmexit/*` package and plugin, name -> version),
 * Node, the host, and when the run started. It is kept apart from what a result measures: counters, cycles
 * and digests are deterministic, provenance is not (the start time, and the host, differ from run to run).
 */
export interface Provenance {
  /** Package name -> version, sorted by name. A policy given as a path appears under its path with the version of the package.json above it, or `unversioned`. */
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

function nearestPackage(dir: string, name?: string): { name?: string; version?: string } | null {
  for (let d = dir; ; d = dirname(d)) {
    const f = join(d, 'package.json');
    if (existsSync(f)) {
      const pkg = JSON.parse(readFileSync(f, 'utf8')) as { name?: string; version?: string };
      if (name === undefined || pkg.name === name) return pkg;
    }
    if (dirname(d) === d) return null;
  }
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
        const pkg = nearestPackage(dirname(use.startsWith('file:') ? new URL(use).pathname : use));
        out[p.use] = pkg?.name !== undefined ? `${pkg.name}@${pkg.version ?? 'unversioned'}` : 'unversioned';
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
