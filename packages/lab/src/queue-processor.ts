// BullMQ's sandboxed processor (a worker thread of `vmexit worker`): runs the cell a job carries. A cell that
// fails returns its error as data, so BullMQ does not retry a run that would fail the same way again; so does a
// cell whose files here differ from the digests the sweep planned it with (runCell checks them first:
// checkCellInputs), as its result under that key would be another's. The thread keeps the last trace it replayed
// (CellTraceLoader, by the digest the cell's key names): a worker's next job is most often on the same workload. BullMQ keeps the thread between jobs, so once it has had no job for KEEP_TRACE_IDLE_MS it lets the
// trace go and collects it: a worker whose queue ran dry does not sit on a decoded trace (kbuild's: 430 MB).
import { hostname } from 'node:os';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { CellTraceLoader } from './cell-traces.js';
import { runCellOutcome, type Cell, type CellOutcome } from './cell.js';
import { vmexitBuild, type CellJob, type QueueOutcome, type VmexitBuild } from './queue.js';

/**
 * How long a job thread keeps its last trace after its last job ended. Jobs of a running sweep follow each other
 * within milliseconds; a pause this long means the queue is empty.
 */
export const KEEP_TRACE_IDLE_MS = 15_000;

/**
 * A full collection of this thread's heap, now. An idle thread allocates nothing, so V8 may not collect what it
 * no longer holds for minutes, or at all (seen: a dropped kbuild trace kept for over 40 s in 5 of 13 tries).
 * `gc` is V8's own, exposed to a fresh context by the flag.
 */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

/**
 * A job processor whose thread shares one trace loader (from `newLoader`) between its jobs. Once `keepIdleMs`
 * passed after a job ended with no other job started, it replaces the loader with a new one, which drops the
 * trace the old one held, and calls `collect` to give its memory back.
 */
export function jobProcessor(
  keepIdleMs: number,
  newLoader: () => CellTraceLoader = () => new CellTraceLoader(),
  collect: () => void = collectGarbage,
): (job: { data: Cell }) => Promise<CellOutcome> {
  let traces = newLoader();
  let idle: ReturnType<typeof setTimeout> | null = null;
  let running = 0;
  return async (job) => {
    if (idle !== null) clearTimeout(idle);
    idle = null;
    running++;
    try {
      return await runCellOutcome(job.data, traces);
    } finally {
      if (--running === 0) {
        idle = setTimeout(() => {
          idle = null;
          traces = newLoader();
          collect();
        }, keepIdleMs);
        idle.unref(); // never what keeps the thread alive
      }
    }
  };
}

/**
 * `run` for the cells of this build only: a job whose sweep runs another build (`job.data.build`) is answered
 * with a BuildMismatch error, not run, as its result could differ from the sweep's own. Every answer carries
 * this worker's build and host, so that the sweep can tell whose it is.
 */
export function buildCheckedProcessor(
  run: (job: { data: Cell }) => Promise<CellOutcome>,
  build: () => VmexitBuild = vmexitBuild,
): (job: { data: CellJob }) => Promise<QueueOutcome> {
  return async (job) => {
    const { build: wanted, ...cell } = job.data;
    const mine = build();
    const tag = { build: mine.id, lab: mine.packages['@vmexit/lab'] ?? 'not installed', host: hostname() };
    if (wanted !== mine.id) {
      const message = `the worker on ${tag.host} runs vmexit build ${mine.id} (@vmexit/lab ${tag.lab}), the sweep build ${wanted ?? '(none given)'}: run the same build on every machine`;
      return { ok: false, error: { name: 'BuildMismatch', message }, ...tag };
    }
    return { ...(await run({ data: cell })), ...tag };
  };
}

export default buildCheckedProcessor(jobProcessor(KEEP_TRACE_IDLE_MS));
