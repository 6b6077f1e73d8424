import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Piscina } from 'piscina';
import { CellTraceLoader } from './cell-traces.js';
import { cellBaseKey, cellKey, compiledFile, outcomeError, runCellOutcome, withInputDigests, type Cell, type CellOutcome, type CellRecord } from './cell.js';
import { InputError } from './errors.js';
import { readResults, ResultStore, writeAtomically } from './store.js';
import { reportHtml } from './report.js';
import { cellSettings, summaryCsv } from './summary.js';
import { parseVariantSpec } from './variant-spec.js';
import type { SweepProgressInfo } from './progress.js';

/**
 * Runs cells somewhere: in this process, on worker threads, or on the machines of a queue. It calls
 * `onOutcome` once per cell as each finishes, and starts no new cell once `signal` aborts.
 */
export interface CellExecutor {
  /** Runs `cells`, calling `onOutcome` once per cell as it finishes; starts no new cell once `signal` aborts. */
  run(cells: readonly Cell[], onOutcome: (cell: Cell, outcome: CellOutcome) => void, signal?: AbortSignal): Promise<void>;
  /** Releases what the executor holds (threads, connections). */
  close(): Promise<void>;
}

/** One cell at a time in this thread; cells on one trace decode it once (`traces`: by default a `CellTraceLoader` of the executor's own). */
export class InProcessExecutor implements CellExecutor {
  private traces: CellTraceLoader;
  constructor(traces?: CellTraceLoader) {
    this.traces = traces ?? new CellTraceLoader();
  }
  async run(cells: readonly Cell[], onOutcome: (cell: Cell, outcome: CellOutcome) => void, signal?: AbortSignal): Promise<void> {
    for (const c of cells) {
      if (signal?.aborted === true) return;
      onOutcome(c, await runCellOutcome(c, this.traces));
    }
  }
  /** Lets the last trace go. */
  async close(): Promise<void> {
    this.traces = new CellTraceLoader();
  }
}

/**
 * `jobs` worker threads (piscina), each running one cell at a time. Both bounds of the pool are set: piscina's
 * default minimum is half the cores, one thread on a 2-core machine.
 */
export class ThreadPoolExecutor implements CellExecutor {
  private readonly pool: Piscina;
  constructor(readonly jobs: number) {
    this.pool = new Piscina({ filename: compiledFile('cell-worker'), minThreads: jobs, maxThreads: jobs, idleTimeout: 1000 });
  }
  async run(cells: readonly Cell[], onOutcome: (cell: Cell, outcome: CellOutcome) => void, signal?: AbortSignal): Promise<void> {
    const aborted = (): boolean => signal?.aborted === true;
    const pending = cells.map(async (c) => {
      if (aborted()) return;
      let outcome: CellOutcome;
      try {
        outcome = (await this.pool.run(c, { signal })) as CellOutcome;
      } catch (e) {
        if (aborted()) return; // the cell was cancelled: no result
        throw e;
      }
      onOutcome(c, outcome);
    });
    await Promise.all(pending);
  }
  async close(): Promise<void> {
    await this.pool.destroy();
  }
}

/** What `sweep` runs: the cells, the output directory, and where they run. */
export interface SweepOptions {
  readonly cells: readonly Cell[];
  /** The output directory (results.jsonl, summary.csv); cells already in its results.jsonl are skipped. */
  readonly out?: string;
  /** Worker threads (default 1: in this thread). Ignored when `executor` is given. */
  readonly jobs?: number;
  /** Where the cells run (default: this thread, or `jobs` worker threads). */
  readonly executor?: CellExecutor;
  /** Called after each finished cell. */
  readonly onProgress?: (p: SweepProgressInfo) => void;
  /** Stops starting cells; the ones finished are kept, the file stays whole. */
  readonly signal?: AbortSignal;
  /** The clock for elapsed time and ETA, in milliseconds (default `Date.now`; tests pass their own). */
  readonly now?: () => number;
}

/** What `sweep` returns: the records, how many cells ran and were skipped, and whether it was interrupted. */
export interface SweepOutcome {
  /** One record per cell, in the order of `cells` (cells not run, after an interruption, are missing). */
  readonly records: readonly CellRecord[];
  readonly ran: number;
  readonly skipped: number;
  readonly interrupted: boolean;
}

/**
 * Runs every cell not already in `out` and stores each result as it arrives: one line of results.jsonl per
 * cell, then summary.csv over all the directory's results. The cells are planned first with the digests of the
 * files they read (`withInputDigests`: a config, policy modules by path, a cost model, a trace), so that a cell
 * whose file changed since its result was stored runs again, and that result is dropped from results.jsonl.
 * Each cell is a pure function of its spec and those files, so its result (counters, cycles, digest) is the same
 * whichever thread or machine ran it and however many ran at once. The variants are composed here first, so a bad variant stops the sweep before any cell runs; a cell
 * that fails stops it after the cells running then (InputError for bad input such as an unknown workload,
 * RunFailure otherwise), and the results so far are kept.
 */
export async function sweep(o: SweepOptions): Promise<SweepOutcome> {
  const now = o.now ?? Date.now;
  const seen = new Set<string>();
  for (const c of o.cells) {
    const k = cellBaseKey(c);
    if (seen.has(k)) throw new InputError(`the sweep names the cell ${c.workload} on "${c.variant}", ${c.mode}, seed ${c.seed} twice`);
    seen.add(k);
  }
  for (const spec of new Set(o.cells.map((c) => c.variant))) {
    const overrides = o.cells.find((c) => c.variant === spec)?.overrides;
    await parseVariantSpec(spec, overrides ?? {});
  }
  // The cells with the digests of the files they read: a changed input is another key, so its cells run again.
  const cells = await withInputDigests(o.cells);
  if (o.out !== undefined) dropOutdated(o.out, cells);
  const store = o.out === undefined ? null : new ResultStore(o.out);
  const inMemory = new Map<string, CellRecord>();
  const todo = cells.filter((c) => store === null || !store.has(cellKey(c)));
  const skipped = cells.length - todo.length;
  const start = now();
  let done = 0;
  let failure: Error | null = null;
  const stop = new AbortController();
  const onAbort = (): void => stop.abort();
  o.signal?.addEventListener('abort', onAbort);
  if (o.signal?.aborted === true) stop.abort();
  const report = (): void => {
    const elapsed = now() - start;
    o.onProgress?.({ done, total: todo.length, skipped, elapsedMs: elapsed, etaMs: done === 0 ? null : (elapsed / done) * (todo.length - done) });
  };
  report();
  const executor = o.executor ?? ((o.jobs ?? 1) > 1 ? new ThreadPoolExecutor(Math.min(o.jobs!, availableParallelism() * 4)) : new InProcessExecutor());
  try {
    await executor.run(
      todo,
      (cell, outcome) => {
        if (!outcome.ok) {
          failure ??= outcomeError(cell, outcome.error);
          stop.abort();
          return;
        }
        if (outcome.record.cell.key !== cellKey(cell)) throw new Error(`a worker answered cell ${cellKey(cell)} with ${outcome.record.cell.key}`);
        if (store !== null) store.append(outcome.record);
        inMemory.set(outcome.record.cell.key, outcome.record);
        done++;
        report();
      },
      stop.signal,
    );
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
    if (o.executor === undefined) await executor.close();
    // No result (the first cells failed, or the queue could not be reached): nothing is written, and a directory
    // that did not exist is not made.
    if (store !== null && store.records().length > 0) {
      const ordered = inSweepOrder(store.records(), cells);
      store.writeFile('summary.csv', summaryCsv(ordered));
      store.writeFile('report.html', reportHtml(ordered, `vmexit sweep: ${o.out}`));
    }
  }
  if (failure !== null) throw failure;
  const records = cells.map((c) => inMemory.get(cellKey(c)) ?? store?.records().find((r) => r.cell.key === cellKey(c)) ?? null).filter((r) => r !== null);
  return { records, ran: done, skipped, interrupted: o.signal?.aborted === true };
}

/**
 * Removes from `out`'s results.jsonl the records of `cells` run on other inputs (the same cell but for what its
 * files held: `cellBaseKey` equal, `cellKey` not), so that neither they nor summary.csv keep an outdated result
 * beside the new one. The file is rewritten whole (a temporary file and a rename), only when there is one to drop.
 */
function dropOutdated(out: string, cells: readonly Cell[]): void {
  const file = join(out, 'results.jsonl');
  if (!existsSync(file)) return;
  const current = new Map(cells.map((c) => [cellBaseKey(c), cellKey(c)]));
  const records = readResults(file);
  const kept = records.filter((r) => {
    const { key, ...cell } = r.cell;
    const now = current.get(cellBaseKey(cell));
    return now === undefined || now === key;
  });
  if (kept.length < records.length) writeAtomically(file, kept.map((r) => `${JSON.stringify(r)}\n`).join(''));
}

/**
 * The records in an order that does not depend on when each cell finished (threads and queue workers finish in
 * any order, and results.jsonl keeps that order): the sweep's cells in the order given, then the directory's
 * other records (from earlier sweeps of other grids) by workload, variant, mode, settings and seed. summary.csv
 * and report.html list groups in first-seen order, so the same sweep writes the same bytes however it ran.
 */
function inSweepOrder(records: readonly CellRecord[], cells: readonly Cell[]): CellRecord[] {
  const rank = new Map(cells.map((c, i) => [cellKey(c), i]));
  const sortKey = (r: CellRecord): string => JSON.stringify([r.cell.workload, r.cell.variant, r.cell.mode, cellSettings(r.cell), r.cell.seed, r.cell.key]);
  return [...records].sort((a, b) => {
    const ra = rank.get(a.cell.key) ?? Infinity;
    const rb = rank.get(b.cell.key) ?? Infinity;
    if (ra !== rb) return ra < rb ? -1 : 1;
    const ka = sortKey(a);
    const kb = sortKey(b);
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  });
}
