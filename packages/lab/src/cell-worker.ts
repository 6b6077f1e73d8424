// A worker thread of the local pools (piscina): runs one sweep cell per task (the default export), or one
// variant of a comparison (`compareTask`). The thread keeps the last trace it replayed (createTraceLoader): the
// next task is most often on the same workload. The pool ends its threads when it is done.
import { createTraceLoader } from '@vmexit/guest';
import { runCellOutcome, type Cell, type CellOutcome } from './cell.js';
import { runCompareTaskOutcome, type CompareOutcome, type CompareTask } from './compare.js';

const loadTrace = createTraceLoader();

export default function runTask(cell: Cell): Promise<CellOutcome> {
  return runCellOutcome(cell, loadTrace);
}

export function compareTask(task: CompareTask): Promise<CompareOutcome> {
  return runCompareTaskOutcome(task, loadTrace);
}
