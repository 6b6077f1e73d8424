// A worker thread of the local pools (piscina): runs one sweep cell per task (the default export), or one
// variant of a comparison (`compareTask`). The thread keeps the last trace it replayed (a CellTraceLoader for
// cells, by the digest their keys name; createTraceLoader for comparisons): the next task is most often on the
// same workload. A pool runs one kind of task, so one of the two holds a trace. The pool ends its threads when it is done.
import { createTraceLoader } from '@vmexit/guest';
import { CellTraceLoader } from './cell-traces.js';
import { runCellOutcome, type Cell, type CellOutcome } from './cell.js';
import { runCompareTaskOutcome, type CompareOutcome, type CompareTask } from './compare.js';

const traces = new CellTraceLoader();
const loadTrace = createTraceLoader();

export default function runTask(cell: Cell): Promise<CellOutcome> {
  return runCellOutcome(cell, traces);
}

export function compareTask(task: CompareTask): Promise<CompareOutcome> {
  return runCompareTaskOutcome(task, loadTrace);
}
