import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PagingModeName } from '@vmexit/core';
import { parseWorkloadRef, type Personality } from '@vmexit/guest';
import { CellTraceLoader } from './cell-traces.js';
import { InputError, RunFailure } from './errors.js';
import { fileDigests } from './file-digests.js';
import { runVariant, type LabRunResult } from './run.js';
import { parseVariantSpec, variantInputFiles, type VariantOverrides } from './variant-spec.js';

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
  /**
   * The files the cell reads and their contents' SHA-256, in `cellInputFiles` order, as the sweep found them when
   * it planned the cell (`withInputDigests`); absent when it reads none. Part of the key: a changed config,
   * policy, cost model or trace is another cell. A worker refuses the cell when its files differ.
   */
  readonly inputs?: readonly CellInput[];
}
/** One file a cell reads: its absolute path where the sweep planned the cell, and the SHA-256 (hex) of its contents. */
export interface CellInput {
  readonly file: string;
  readonly sha256: string;
}
/** A sweep cell: a pure, serialisable spec of one experiment, keyed by `cellKey` (today only `run` cells). */
export type Cell = RunCell;

/** A cell's identity: a hash of everything that determines its result (not of where or when it runs). */
export function cellKey(c: Cell): string {
  const parts: unknown[] = [c.kind, c.workload, c.variant, c.mode, c.seed, c.personalities ?? [], c.overrides ?? {}];
  // Only when present: a cell that reads no file keeps the key it had before inputs were keyed.
  if (c.inputs !== undefined) parts.push(c.inputs.map((i) => [i.file, i.sha256]));
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 16);
}

/** The key of the cell whatever its files hold: a stored record with this key but another `cellKey` is an outdated run of the cell. */
export function cellBaseKey(c: Cell): string {
  const { inputs: _inputs, ...rest } = c;
  return cellKey(rest);
}

/**
 * The files a cell reads, as absolute paths resolved from `cwd` as its run resolves them: a `.vxt` trace workload,
 * and the variant's files (`variantInputFiles`: a config file, policy modules by path, a cost model's .json).
 * The bundled `kbuild` trace is part of the build, not an input.
 */
export async function cellInputFiles(c: Cell, cwd: string = process.cwd()): Promise<string[]> {
  return [...new Set([...traceFile(c, cwd), ...(await variantInputFiles(c.variant, c.overrides ?? {}, cwd))])];
}

/** A `.vxt` trace workload's file, resolved from `cwd` as the trace loader opens it (none for kbuild or a synthetic workload). */
function traceFile(c: Cell, cwd: string): string[] {
  let ref: ReturnType<typeof parseWorkloadRef>;
  try {
    ref = parseWorkloadRef(c.workload);
  } catch {
    return []; // not a workload: the run says so
  }
  return ref.kind === 'trace' && ref.path !== null ? [resolve(cwd, ref.path)] : [];
}

/**
 * The cells with the digests of the files each reads (`inputs`), found now (each file read once), so that their
 * keys cover what those files hold; a cell that reads no file is returned as it is (its key unchanged).
 */
export async function withInputDigests(cells: readonly Cell[], cwd: string = process.cwd()): Promise<Cell[]> {
  const digests = new Map<string, Promise<string>>();
  const digest = (f: string): Promise<string> => digests.get(f) ?? digests.set(f, fileDigests.sha256(f)).get(f)!;
  // Many cells share a variant: its files are found once (a config read once, not once per cell).
  const variants = new Map<string, Promise<string[]>>();
  const variantFiles = (c: Cell): Promise<string[]> => {
    const k = JSON.stringify([c.variant, c.overrides ?? {}]);
    return variants.get(k) ?? variants.set(k, variantInputFiles(c.variant, c.overrides ?? {}, cwd)).get(k)!;
  };
  return Promise.all(
    cells.map(async (c) => {
      const { inputs: _old, ...cell } = c;
      const files = [...new Set([...traceFile(cell, cwd), ...(await variantFiles(cell))])];
      if (files.length === 0) return cell;
      return { ...cell, inputs: await Promise.all(files.map(async (file) => ({ file, sha256: await digest(file) }))) };
    }),
  );
}

/**
 * Module files (a `.mjs` config, a policy) this thread has checked, with their digest then: Node imports a file
 * once per thread and keeps it, so once one was imported, a changed file would run as the old one.
 */
const modulesSeen = new Map<string, string>();

/**
 * Checks that the files `c` reads here hold what they held when the sweep planned it (`inputs`), so that no
 * result stands under its key for other inputs: an InputError names the first file that differs (it changed
 * since, or this machine's copy is another), or the module this thread already imported in another version.
 * Returns the files as resolved here (from `cwd`), in the order of `inputs` (none without `inputs`).
 */
export async function checkCellInputs(c: Cell, cwd: string = process.cwd()): Promise<string[]> {
  if (c.inputs === undefined) return [];
  const files = await cellInputFiles(c, cwd);
  const planned = c.inputs;
  if (files.length !== planned.length) {
    throw new InputError(
      `the cell reads ${files.length} files here (${files.join(', ') || 'none'}), where the sweep planned it with ${planned.length} (${planned.map((i) => i.file).join(', ')}): rerun the sweep`,
    );
  }
  for (const [i, file] of files.entries()) {
    const sha256 = await fileDigests.sha256(file); // a stat, once this thread hashed the file as it is
    if (sha256 !== planned[i]!.sha256) {
      throw new InputError(
        `${file} is not the file the sweep planned the cell with (sha256 ${sha256.slice(0, 12)}… here, ${planned[i]!.sha256.slice(0, 12)}… then): it changed since, or this machine has another copy; rerun the sweep (a queue's workers need the same files)`,
      );
    }
    if (/\.(json|vxt)$/i.test(file)) continue; // read again by every run
    const seen = modulesSeen.get(file);
    if (seen !== undefined && seen !== sha256)
      throw new InputError(
        `${file} changed after this thread imported it (Node keeps a module once imported): restart the worker, or run the sweep in a new process`,
      );
    modulesSeen.set(file, sha256);
  }
  return files;
}

/** A cell's result as a line of results.jsonl: the RunResult, with the cell it answers. */
export type CellRecord = LabRunResult & { readonly cell: Cell & { readonly key: string } };

/** What crosses a thread or the queue: a record, or the error a cell stopped with (classes do not survive the crossing). */
export type CellOutcome =
  { readonly ok: true; readonly record: CellRecord } | { readonly ok: false; readonly error: { name: string; message: string; exitCode?: number } };

/**
 * Runs one cell in this thread, once its files are checked against the digests it was planned with
 * (`checkCellInputs`). Its trace workload comes from `traces` with the digest its key names, so that the cell
 * replays that content and no other (InputError naming the file when the file changed since the sweep was planned).
 * The executors give each thread one `CellTraceLoader`, so that cells on one trace decode it once per thread.
 */
export async function runCell(cell: Cell, traces: CellTraceLoader = new CellTraceLoader()): Promise<CellRecord> {
  const files = await checkCellInputs(cell);
  const variant = await parseVariantSpec(cell.variant, cell.overrides ?? {});
  // Each file as this thread resolves it (its working directory may not be the planner's, whose absolute paths
  // `inputs` names), paired with its planned digest by position, as checkCellInputs checked it.
  const planned = new Map(files.map((f, i) => [f, cell.inputs![i]!.sha256]));
  const loadTrace = traces.forCell((file) => planned.get(file));
  const result = await runVariant(variant, cell.workload, { mode: cell.mode, seed: cell.seed, personalities: cell.personalities, loadTrace });
  return { ...result, cell: { ...cell, key: cellKey(cell) } };
}

/** runCell, with any error turned into data (for worker threads and queue workers). */
export async function runCellOutcome(cell: Cell, traces?: CellTraceLoader): Promise<CellOutcome> {
  try {
    return { ok: true, record: await runCell(cell, traces) };
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
