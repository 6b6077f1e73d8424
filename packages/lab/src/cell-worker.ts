// A worker thread of the local pools (piscina): runs one sweep cell per task (the default export), or one
// variant of a comparison (`compareTask`).
import { runCellOutcome, type Cell, type CellOutcome } from './cell.js';
import { runCompareTaskOutcome, type CompareOutcome, type CompareTask } from './compare.js';

export default function runTask(cell: Cell): Promise<CellOutcome> {
  return runCellOutcome(cell);
}

export function compareTask(task: CompareTask): Promise<CompareOutcome> {
  return runCompareTaskOutcome(task);
}
