import { renderSweepProgress, type SweepProgressInfo } from '@vmexit/lab';

/** `12.3 M`, `4.5 k`, `980`: a count or a rate, short (for the summary table and the progress bar). */
export function rate(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} k` : n.toFixed(0);
}

/**
 * One line of the progress bar: `[#########           ]  30%  1.2 M accesses` when the total is known
 * (the fraction capped at 100 %: an estimated total may be passed), else the count alone.
 */
export function renderProgress(done: number, total: number | null, width = 30): string {
  if (total === null || total <= 0) return `${rate(done)} accesses`;
  const f = Math.min(1, done / total);
  const n = Math.round(f * width);
  return `[${'#'.repeat(n)}${' '.repeat(width - n)}] ${(f * 100).toFixed(0).padStart(3)}%  ${rate(done)} accesses`;
}

export interface ProgressOptions {
  /** Draw at all (default: stderr is a terminal). */
  readonly tty?: boolean;
  /** Milliseconds (default Date.now). */
  readonly now?: () => number;
  /** Where the line goes (default stderr). */
  readonly write?: (s: string) => void;
  /** No bar before the run has taken this long (default 1000 ms), and at most one redraw per `intervalMs` (100). */
  readonly delayMs?: number;
  readonly intervalMs?: number;
}

/** A progress bar on stderr, drawn only when stderr is a terminal and the run has taken over a second. */
export class Progress {
  private readonly now: () => number;
  private readonly write: (s: string) => void;
  private readonly tty: boolean;
  private readonly delayMs: number;
  private readonly intervalMs: number;
  private readonly start: number;
  private last = 0;
  private drawn = false;

  constructor(options: ProgressOptions = {}) {
    this.now = options.now ?? Date.now;
    this.write = options.write ?? ((s) => process.stderr.write(s));
    this.tty = options.tty ?? process.stderr.isTTY === true;
    this.delayMs = options.delayMs ?? 1000;
    this.intervalMs = options.intervalMs ?? 100;
    this.start = this.now();
  }

  update(done: number, total: number | null): void {
    if (!this.tty) return;
    const now = this.now();
    if (now - this.start < this.delayMs || now - this.last < this.intervalMs) return;
    this.last = now;
    this.write(`\r${renderProgress(done, total)}\x1b[K`);
    this.drawn = true;
  }

  /** Erases the bar, if one was drawn. */
  clear(): void {
    if (this.drawn) this.write('\r\x1b[K');
    this.drawn = false;
  }
}

/** The progress bar of a sweep or a comparison (`unit`: cells, variants): on stderr when it is a terminal, redrawn at most every 100 ms. */
export class CountBar {
  private last = 0;
  private drawn = false;
  constructor(
    private readonly unit = 'cells',
    private readonly tty = process.stderr.isTTY === true,
    private readonly write: (s: string) => void = (s) => process.stderr.write(s),
  ) {}
  update(p: SweepProgressInfo): void {
    if (!this.tty) return;
    const now = Date.now();
    if (now - this.last < 100 && p.done < p.total) return;
    this.last = now;
    this.write(`\r${renderSweepProgress(p, 24, this.unit)}\x1b[K`);
    this.drawn = true;
  }
  clear(): void {
    if (this.drawn) this.write('\r\x1b[K');
    this.drawn = false;
  }
}
