// BullMQ's sandboxed processor (a worker thread of `vmexit worker`): runs the cell a job carries. A cell that
// fails returns its error as data, so BullMQ does not retry a run that would fail the same way again. The
// thread keeps the last trace it replayed (createTraceLoader): a worker's next job is most often on the same
// workload.
import { createTraceLoader } from '@vmexit/guest';
import { runCellOutcome, type Cell, type CellOutcome } from './cell.js';

const loadTrace = createTraceLoader();

export default function processJob(job: { data: Cell }): Promise<CellOutcome> {
  return runCellOutcome(job.data, loadTrace);
}
