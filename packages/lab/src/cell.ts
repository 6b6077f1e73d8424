import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { PagingModeName } from '@vmexit/core';
import type { Personality, TraceLoader } from '@vmexit/guest';
import { InputError, RunFailure } from './errors.js';
import { runVariant, type LabRunResult } from './run.js';
import { parseVariantSpec, type VariantOverrides } from './variant-spec.js';

/**
 * One cell of a sweep: a pure, serialisable description of one run, so that it runs the same on any thread
 * or machine (each worker composes its own VM from it). `kind` leaves room for other experiments (a
 * migration, an exploration) as further members of the union.
 */
export interface RunCell {
  readonly kind: 'run';
  /** The workload spec with its parameters (`fork-cow:pages=16,forks=1`). */
  readonly workload: string;
  /** A variant spec: words (`vmx shadow pte-update`) or an absolute path to a config file. */
  readonly variant: string;
  readonly mode: PagingModeName;
  readonly seed: number;
  readonly personalities?: readonly Personality[];
  readonly overrides?: VariantOverrides;
}
/** A sweep cell: a pure, serialisable spec of one experiment, keyed by `cellKey` (today only `run` cells). */
export type Cell = RunCell;

/** A cell's identity: a hash of everything that determines its result (not of where or when it runs). */
export function cellKey(c: Cell): string {
  const canonical = JSON.stringify([c.kind, c.workload, c.variant, c.mode, c.seed, c.personalities ?? [], c.overrides ?? {}]);
  return createHash('sha256').update(canonical).digest('hex').slice(0, 16);
}

/** A cell's result as a line of results.jsonl: the RunResult, with the cell it answers. */
export type CellRecord = LabRunResult & { readonly cell: Cell & { readonly key: string } };

/** What crosses a thread or the queue: a record, or the error a cell stopped with (classes do not survive the crossing). */
export type CellOutcome =
  { readonly ok: true; readonly record: CellRecord } | { readonly ok: false; readonly error: { name: string; message: string; exitCode?: number } };

/**
 * Runs one cell in this thread. `loadTrace` loads a trace workload (default: read and decode the file); the
 * executors give each thread one `createTraceLoader`, so that cells on one trace decode it once per thread.
 */
export async function runCell(cell: Cell, loadTrace?: TraceLoader): Promise<CellRecord> {
  const variant = await parseVariantSpec(cell.variant, cell.overrides ?? {});
  const result = await runVariant(variant, cell.workload, { mode: cell.mode, seed: cell.seed, personalities: cell.personalities, loadTrace });
  return { ...result, cell: { ...cell, key: cellKey(cell) } };
}

/** runCell, with any error turned into data (for worker threads and queue workers). */
export async function runCellOutcome(cell: Cell, loadTrace?: TraceLoader): Promise<CellOutcome> {
  try {
    return { ok: true, record: await runCell(cell, loadTrace) };
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    const code = (err as { code?: unknown }).code;
    const message =
      err instanceof InputError || err instanceof RunFailure ? err.message : `${err.name}${typeof code === 'string' ? ` ${code}` : ''}: ${err.message}`;
    return { ok: false, error: { name: err.name, message, exitCode: (err as { exitCode?: number }).exitCode } };
  }
}

/** The error of a failed outcome, as the class it was (InputError for bad input, else RunFailure), naming the cell. */
export function outcomeError(cell: Cell, error: { name: string; message: string; exitCode?: number }): Error {
  const where = `cell ${cellKey(cell)} (${cell.workload} on "${cell.variant}", ${cell.mode}, seed ${cell.seed})`;
  return error.exitCode === 2 ? new InputError(`${where}: ${error.message}`) : new RunFailure(`${where}: ${error.message}`);
}

/**
 * The compiled file of a module of this package, for worker threads and BullMQ's sandboxed processors,
 * which load plain JavaScript: the sibling `.js` when this code runs from dist, else the one in dist (when it
 * runs from source, under vitest).
 */
export function compiledFile(name: string): string {
  const sibling = fileURLToPath(new URL(`./${name}.js`, import.meta.url));
  if (existsSync(sibling) && import.meta.url.endsWith('.js')) return sibling;
  return fileURLToPath(new URL(`../dist/${name}.js`, import.meta.url));
}

/** The axes of a sweep; the cells are their cross product. */
export interface SweepGrid {
  readonly workloads: readonly string[];
  readonly variants: readonly string[];
  readonly modes: readonly PagingModeName[];
  readonly seeds: readonly number[];
  /** Workload parameters to expand: name -> values (each value is a cell of its own). */
  readonly params?: Readonly<Record<string, readonly string[]>>;
  readonly personalities?: readonly Personality[];
  readonly overrides?: VariantOverrides;
}

/** `fork-cow` + {pages: 16} -> `fork-cow:pages=16`; `fork-cow:forks=1` + {pages: 16} -> `fork-cow:forks=1,pages=16`. */
export function withParams(workload: string, params: Readonly<Record<string, string>>): string {
  const extra = Object.entries(params).map(([k, v]) => `${k}=${v}`);
  if (extra.length === 0) return workload;
  return workload.includes(':') ? `${workload},${extra.join(',')}` : `${workload}:${extra.join(',')}`;
}

/** The cells of a grid, in order: workload, parameter values, variant, mode, seed (seeds innermost). */
export function expandGrid(g: SweepGrid): Cell[] {
  let paramSets: Record<string, string>[] = [{}];
  for (const [k, values] of Object.entries(g.params ?? {})) {
    if (values.length === 0) throw new InputError(`--param ${k}: give at least one value`);
    paramSets = paramSets.flatMap((s) => values.map((v) => ({ ...s, [k]: v })));
  }
  const cells: Cell[] = [];
  for (const w of g.workloads)
    for (const ps of paramSets)
      for (const variant of g.variants)
        for (const mode of g.modes)
          for (const seed of g.seeds)
            cells.push({
              kind: 'run',
              workload: withParams(w, ps),
              variant,
              mode,
              seed,
              ...(g.personalities !== undefined && g.personalities.length > 0 ? { personalities: g.personalities } : {}),
              ...(g.overrides !== undefined && Object.values(g.overrides).some((x) => x !== undefined) ? { overrides: g.overrides } : {}),
            });
  return cells;
}
