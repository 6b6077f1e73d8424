// BullMQ's sandboxed processor (a worker thread of `vmexit worker`): runs the cell a job carries. A cell that
// fails returns its error as data, so BullMQ does not retry a run that would fail the same way again. The
// thread keeps the last trace it replayed (createTraceLoader): a worker's next job is most often on the same
// workload. BullMQ keeps the thread between jobs, so once it has had no job for KEEP_TRACE_IDLE_MS it lets the
// trace go: a worker whose queue ran dry does not sit on a decoded trace (kbuild's is about 430 MB).
import { createTraceLoader, type TraceLoader } from '@vmexit/guest';
import { runCellOutcome, type Cell, type CellOutcome } from './cell.js';

/**
 * How long a job thread keeps its last trace after its last job ended. Jobs of a running sweep follow each other
 * within milliseconds; a pause this long means the queue is empty. V8 returns the memory at its next collection
 * once nothing holds the trace (its memory reducer runs one within seconds on an idle thread).
 */
export const KEEP_TRACE_IDLE_MS = 15_000;

/**
 * A job processor whose thread shares one trace loader (from `newLoader`) between its jobs, and replaces it with a
 * new one, dropping the trace it holds, once `keepIdleMs` passed after a job with no other job started.
 */
export function jobProcessor(keepIdleMs: number, newLoader: () => TraceLoader = createTraceLoader): (job: { data: Cell }) => Promise<CellOutcome> {
  let loadTrace = newLoader();
  let idle: ReturnType<typeof setTimeout> | null = null;
  let running = 0;
  return async (job) => {
    if (idle !== null) clearTimeout(idle);
    idle = null;
    running++;
    try {
      return await runCellOutcome(job.data, loadTrace);
    } finally {
      if (--running === 0) {
        idle = setTimeout(() => {
          idle = null;
          loadTrace = newLoader();
        }, keepIdleMs);
        idle.unref(); // never what keeps the thread alive
      }
    }
  };
}

export default jobProcessor(KEEP_TRACE_IDLE_MS);
