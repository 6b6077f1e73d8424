import type { MonoTypeOperatorFunction } from 'rxjs';
import type { MmuEvent } from './mmu-events.js';
import { tapStep } from './step.js';
import { keyCache, type StatCell, type Stats } from './stats.js';
import { exitToJson, type VmExit } from './vm-exit.js';
import { hexHiLo, hexU64 as hex } from '../arch/hex.js';

const WINDOW_START = `${JSON.stringify({ type: 'window', phase: 'start' })}\n`;
const WINDOW_END = `${JSON.stringify({ type: 'window', phase: 'end' })}\n`;

/** Writes one trace record per exit (and per MMU decision). Bound to a no-op by default. */
export interface ExitTracer {
  /** Called once per exit after the pipeline resolved it. */
  traceExit(exit: VmExit): void;
  /** Called once per MMU event after it was decided. */
  traceMmuEvent(event: MmuEvent): void;
  /**
   * Where the run's counters start or stop counting (the measured window): boot's exits come before the
   * start. A workload that marks its steady state starts the window again; the last start before the end counts.
   */
  traceWindow?(phase: 'start' | 'end'): void;
}

/** Keeps the exits a test wants to look at. Bound to a no-op by default. */
export interface ExitRecorder {
  /** Called once per exit after the pipeline resolved it, with the exit object itself. */
  recordExit(exit: VmExit): void;
  /** Called once per MMU event after it was decided. */
  recordMmuEvent(event: MmuEvent): void;
}

/** The default ExitTracer: traces nothing (the VM skips the tracing tap when it is bound). */
export class NoopTracer implements ExitTracer {
  /** Does nothing. */
  traceExit(): void {}
  /** Does nothing. */
  traceMmuEvent(): void {}
}

/** The default ExitRecorder: keeps nothing. */
export class NoopRecorder implements ExitRecorder {
  /** Does nothing. */
  recordExit(): void {}
  /** Does nothing. */
  recordMmuEvent(): void {}
}

/** A recorder that keeps everything (tests). Exits are kept as the objects the pipeline resolved. */
export class ArrayRecorder implements ExitRecorder {
  readonly exits: VmExit[] = [];
  readonly mmuEvents: MmuEvent[] = [];
  /** Appends the exit to `exits`. */
  recordExit(exit: VmExit): void {
    this.exits.push(exit);
  }
  /** Appends the event to `mmuEvents`. */
  recordMmuEvent(event: MmuEvent): void {
    this.mmuEvents.push(event);
  }
}

/**
 * The exit tracer of `vmexit run --trace FILE`: one JSON object per line (JSON Lines), for each exit after
 * its resolution (`type` 'exit'), for each MMU decision ('mmu') and at each end of the measured window
 * ('window', `phase` 'start' or 'end'). Addresses and 64-bit values are unsigned hex strings. `write`
 * receives each line with its newline, as it happens.
 */
export class JsonLinesTracer implements ExitTracer {
  constructor(private readonly write: (line: string) => void) {}
  /** Writes the exit as one JSON line: its fields, its resolution and who resolved it. */
  traceExit(exit: VmExit): void {
    this.write(`${JSON.stringify({ type: 'exit', ...exitToJson(exit) })}\n`);
  }
  traceWindow(phase: 'start' | 'end'): void {
    this.write(phase === 'start' ? WINDOW_START : WINDOW_END);
  }
  /** Writes the MMU event and its decision as one JSON line. */
  traceMmuEvent(ev: MmuEvent): void {
    const body =
      ev.kind === 'pte-write'
        ? { gpa: hex(ev.gpa), size: ev.size, level: ev.level, misaligned: ev.misaligned, old: hexHiLo(ev.oldHi, ev.oldLo), new: hexHiLo(ev.newHi, ev.newLo) }
        : ev.kind === 'flood'
          ? { gfn: hex(ev.gfn), level: ev.level, writeCount: ev.writeCount, vcpuWriteCount: ev.vcpuWriteCount }
          : ev.kind === 'tracked-write'
            ? { gfn: hex(ev.gfn), address: hex(ev.address), errorCode: ev.errorCode }
            : ev.kind === 'prefetch'
              ? { gfn: hex(ev.gfn), address: hex(ev.address), ...(ev.direct ? { direct: true } : {}) }
              : { gfn: hex(ev.gfn) };
    this.write(`${JSON.stringify({ type: 'mmu', vcpu: ev.vcpu, seq: ev.seq, kind: ev.kind, ...body, decision: ev.decision, decidedBy: ev.decidedBy })}\n`);
  }
}

/**
 * Counts exits under KVM's names into `stats`: `exits` (every exit) and `exits.<REASON>` by the manual's name
 * of the exit reason (VMX) or exit code (SVM), and `exits.kind.<kind>` by the VmExit kind (what the cost model prices).
 *
 * @example
 * exits$.pipe(countExits(stats)).subscribe();
 */
export function countExits(stats: Stats): MonoTypeOperatorFunction<VmExit> {
  return tapStep((exit: VmExit) => {
    stats.add('exits');
    stats.add(reasonKey(exit.hw.name));
    stats.add(kindKey(exit.kind));
  });
}

const reasonKey = keyCache('exits.');
const kindKey = keyCache('exits.kind.');

/**
 * Whether every method of `tracer` and `recorder` is the no-op default's: then nothing needs feeding, and the
 * VM may skip building what only they would see.
 */
export function isNoopObservers(tracer: ExitTracer, recorder: ExitRecorder): boolean {
  const t = NoopTracer.prototype;
  const r = NoopRecorder.prototype;
  return (
    tracer.traceExit === t.traceExit &&
    tracer.traceMmuEvent === t.traceMmuEvent &&
    recorder.recordExit === r.recordExit &&
    recorder.recordMmuEvent === r.recordMmuEvent
  );
}

/**
 * `countExits(stats)` and `observeExits(tracer, recorder)` as one tap (one operator hop per exit); the
 * no-op tracer and recorder are not called.
 *
 * @example
 * subject.pipe(exitPipeline(policies, handler, [countAndObserveExits(stats, tracer, recorder)]))
 */
export function countAndObserveExits(stats: Stats, tracer: ExitTracer, recorder: ExitRecorder): MonoTypeOperatorFunction<VmExit> {
  return tapStep(exitObserver(stats, tracer, recorder));
}

/**
 * The body of `countAndObserveExits` as a function of one exit, for a link that calls it itself
 * (`exitPipeline`'s `observe`: the handler's link counts too, one operator hop fewer per exit).
 */
export function exitObserver(stats: Stats, tracer: ExitTracer, recorder: ExitRecorder): (exit: VmExit) => void {
  const feed = !isNoopObservers(tracer, recorder);
  // Cells taken at the first exit; the reason's and the kind's for the last name seen (runs of one reason).
  let exits: StatCell | null = null;
  let reason = '';
  let reasonCell: StatCell | null = null;
  let kind = '';
  let kindCell: StatCell | null = null;
  return (exit: VmExit): void => {
    (exits ??= stats.cell('exits')).n++;
    const r = exit.hw.name;
    if (reasonCell === null || r !== reason) {
      reason = r;
      reasonCell = stats.cell(reasonKey(r));
    }
    reasonCell.n++;
    const k = exit.kind;
    if (kindCell === null || k !== kind) {
      kind = k;
      kindCell = stats.cell(kindKey(k));
    }
    kindCell.n++;
    if (feed) {
      tracer.traceExit(exit);
      recorder.recordExit(exit);
    }
  };
}

/** Feeds every exit to the tracer and the recorder. */
export function observeExits(tracer: ExitTracer, recorder: ExitRecorder): MonoTypeOperatorFunction<VmExit> {
  return tapStep((exit: VmExit) => {
    tracer.traceExit(exit);
    recorder.recordExit(exit);
  });
}
