/** Progress of a sweep or a comparison: what `onProgress` receives, and its one-line rendering. */

/** Progress of a sweep, as `onProgress` receives it after each cell. */
export interface SweepProgressInfo {
  /** Cells finished in this run (not counting the skipped). */
  readonly done: number;
  /** Cells to run in this run (the skipped excluded). */
  readonly total: number;
  readonly skipped: number;
  readonly elapsedMs: number;
  /** Estimated milliseconds left (null before the first cell finishes). */
  readonly etaMs: number | null;
}

/** `[#########        ]  7/12 cells  58%  elapsed 4.1 s  ETA 3.0 s`: one line of the sweep's (or a comparison's, unit `variants`) progress bar. */
export function renderSweepProgress(p: SweepProgressInfo, width = 24, unit = 'cells'): string {
  const f = p.total === 0 ? 1 : p.done / p.total;
  const n = Math.round(f * width);
  const skipped = p.skipped > 0 ? ` (${p.skipped} done before)` : '';
  const eta = p.etaMs === null ? '' : `  ETA ${seconds(p.etaMs)}`;
  return `[${'#'.repeat(n)}${' '.repeat(width - n)}] ${p.done}/${p.total} ${unit}${skipped} ${(f * 100).toFixed(0).padStart(3)}%  elapsed ${seconds(p.elapsedMs)}${eta}`;
}

/**
 * `4.1 s` under a minute (to the tenth), else `2 min 0 s` (to the second): rounded once, before it is split into
 * minutes and seconds (119.6 s was `1 min 60 s`, its seconds rounded after the minutes were taken).
 */
function seconds(ms: number): string {
  const tenths = Math.round(ms / 100);
  if (tenths < 600) return `${(tenths / 10).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)} min ${s % 60} s`;
}
