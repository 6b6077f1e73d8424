// A worker thread of the local sweep pool (piscina): runs one cell per task.
import { runCellOutcome, type Cell, type CellOutcome } from './cell.js';

export default function runTask(cell: Cell): Promise<CellOutcome> {
  return runCellOutcome(cell);
}
