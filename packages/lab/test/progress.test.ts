import { describe, expect, it } from 'vitest';
import { renderSweepProgress } from '../src/index.js';

describe('renderSweepProgress', () => {
  it('rounds the elapsed time and the ETA once, then splits minutes and seconds (never "1 min 60 s")', () => {
    const line = (elapsedMs: number, etaMs: number | null): string => renderSweepProgress({ done: 1, total: 2, skipped: 0, elapsedMs, etaMs }, 10);
    // 119,600 ms = 119.6 s, 120 s to the second: 2 min 0 s (before: 1 min + round(59.6) s = "1 min 60 s");
    // 179,700 ms: 180 s = 3 min 0 s (before: "2 min 60 s").
    expect(line(119_600, 179_700)).toBe('[#####     ] 1/2 cells  50%  elapsed 2 min 0 s  ETA 3 min 0 s');
    // 59,960 ms is 60.0 s to the tenth: a minute (before: "60.0 s"); 59,940 ms is 59.9 s.
    expect(line(59_960, 59_940)).toBe('[#####     ] 1/2 cells  50%  elapsed 1 min 0 s  ETA 59.9 s');
    // 4,100 ms: 4.1 s; 61,400 ms: 61 s = 1 min 1 s; no ETA before the first cell.
    expect(line(4_100, 61_400)).toBe('[#####     ] 1/2 cells  50%  elapsed 4.1 s  ETA 1 min 1 s');
    expect(line(0, null)).toBe('[#####     ] 1/2 cells  50%  elapsed 0.0 s');
  });
});
