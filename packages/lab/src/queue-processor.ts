// BullMQ's sandboxed processor (a worker thread of `vmexit worker`): runs the cell a job carries. A cell that
// fails returns its error as data, so BullMQ does not retry a run that would fail the same way again.
import { runCellOutcome, type Cell, type CellOutcome } from './cell.js';

export default function processJob(job: { data: Cell }): Promise<CellOutcome> {
  return runCellOutcome(job.data);
}
