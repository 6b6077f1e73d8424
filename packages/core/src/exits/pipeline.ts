import { map, Observable, pipe, Subject, tap, type MonoTypeOperatorFunction, type Subscriber, type UnaryFunction } from 'rxjs';
import { ExitError } from './errors.js';
import type { MmuDecisionOf, MmuEvent } from './mmu-events.js';
import { describeExit, type ExitResolution, type VmExit } from './vm-exit.js';

/** The MMU's handler: resolves what no policy did (`VmHooks.handleExit` is the one a VM uses). */
export type ExitHandler = (exit: VmExit) => ExitResolution;

/**
 * Hands every still-unresolved exit to `handler` (resolvedBy 'mmu'), and fails the stream with
 * E_EXIT_UNRESOLVED, as `requireResolved` does, when the handler gives no resolution: one link, so an exit
 * pays one operator hop for both. `observe`, when given, is then called with the resolved exit in the same
 * link (what a `tap` after it would do, without the hop).
 */
export function handleRemaining(handler: ExitHandler, observe: ((exit: VmExit) => void) | null = null): MonoTypeOperatorFunction<VmExit> {
  if (observe !== null) {
    return map((exit: VmExit) => {
      if (exit.resolution === null) {
        exit.resolution = handler(exit);
        exit.resolvedBy = 'mmu';
        if (exit.resolution === null) throw unresolved(exit);
      }
      observe(exit);
      return exit;
    });
  }
  return map((exit: VmExit) => {
    if (exit.resolution === null) {
      exit.resolution = handler(exit);
      exit.resolvedBy = 'mmu';
      if (exit.resolution === null) throw unresolved(exit);
    }
    return exit;
  });
}

/** Fails the stream with E_EXIT_UNRESOLVED, naming the exit, when an exit arrives unresolved. */
export function requireResolved(): MonoTypeOperatorFunction<VmExit> {
  return tap((exit: VmExit) => {
    if (exit.resolution === null) throw unresolved(exit);
  });
}

function unresolved(exit: VmExit): ExitError {
  return new ExitError('E_EXIT_UNRESOLVED', `no policy or handler resolved ${describeExit(exit)}`);
}

/**
 * A vCPU's exit pipeline: the policies in order, then the MMU's handler (when given), then the check that
 * every exit was resolved, then `observe` (a function: in the handler's link) and the observers (taps:
 * counters, tracer, recorder). Observers therefore see each exit once, with its resolution.
 *
 * @example
 * subject.pipe(exitPipeline([bypass, reflect], mmuHandler, [countExits(stats)]))
 */
export function exitPipeline(
  policies: readonly MonoTypeOperatorFunction<VmExit>[],
  handler: ExitHandler | null,
  observers: readonly MonoTypeOperatorFunction<VmExit>[] = [],
  observe: ((exit: VmExit) => void) | null = null,
): MonoTypeOperatorFunction<VmExit> {
  const stages: MonoTypeOperatorFunction<VmExit>[] = [...policies];
  if (handler !== null) stages.push(handleRemaining(handler, observe));
  else stages.push(requireResolved(), ...(observe !== null ? [tap(observe)] : []));
  stages.push(...observers);
  return chain(stages);
}

function chain<T>(ops: readonly MonoTypeOperatorFunction<T>[]): MonoTypeOperatorFunction<T> {
  return (pipe as (...fns: UnaryFunction<Observable<T>, Observable<T>>[]) => UnaryFunction<Observable<T>, Observable<T>>)(
    ...ops,
  ) as MonoTypeOperatorFunction<T>;
}

/**
 * A synchronous stream with a pipeline behind it: `push` sends one item through the whole pipeline and
 * returns when it came out of the end (RxJS operators deliver synchronously). A failure in the pipeline
 * is rethrown by `push`, and the channel stays closed afterwards.
 *
 * The pipeline's source is an Observable whose subscribers (the first operator's, once per subscription:
 * one unless an operator subscribes to its source several times) the channel keeps and feeds directly, as a
 * Subject would but without its per-item closure and observer-list copy (a Subject's `next` copies its
 * observer list for every item).
 */
class SyncChannel<T> {
  private readonly sinks: Subscriber<T>[] = [];
  /**
   * What comes out of the pipeline, multicast (what `share()` would do, without its per-item hop when
   * nobody else listens).
   */
  private readonly out = new Subject<T>();
  /** The items after the pipeline (hot): observe it for merged views (the VM's `exits$`). */
  readonly output: Observable<T> = this.out.asObservable();
  private reached: T | null = null;
  private failure: unknown = null;

  /** Whether something subscribes to `output` now (and may keep the items it sees). */
  get observed(): boolean {
    return this.out.observed;
  }

  constructor(
    operator: MonoTypeOperatorFunction<T>,
    private readonly what: string,
  ) {
    const out = this.out;
    const sinks = this.sinks;
    const input = new Observable<T>((subscriber) => {
      sinks.push(subscriber);
      return () => {
        const i = sinks.indexOf(subscriber);
        if (i >= 0) sinks.splice(i, 1);
      };
    });
    input.pipe(operator).subscribe({
      next: (v) => {
        this.reached = v;
        if (out.observed) out.next(v);
      },
      error: (e: unknown) => {
        this.failure = e;
        out.error(e);
      },
    });
  }

  protected send(item: T, describe: (item: T) => string): void {
    if (this.failure !== null) {
      throw new ExitError('E_PIPELINE_CLOSED', `${describe(item)}: the ${this.what} pipeline failed earlier (${errorMessage(this.failure)})`, {
        cause: this.failure,
      });
    }
    this.reached = null;
    const sinks = this.sinks;
    if (sinks.length === 1) sinks[0]!.next(item);
    else for (const s of sinks.slice()) s.next(item);
    const f = this.failure as unknown; // set by the subscriber's error callback during next()
    if (f !== null) {
      if (f instanceof ExitError) throw f;
      throw new ExitError('E_POLICY_FAILED', `${describe(item)}: the ${this.what} pipeline failed: ${errorMessage(f)}`, { cause: f });
    }
    if (this.reached !== item) {
      throw new ExitError('E_EXIT_DROPPED', `${describe(item)} did not come out of the ${this.what} pipeline (an operator dropped it)`);
    }
  }
}

/** A vCPU's exit stream. */
export class ExitChannel extends SyncChannel<VmExit> {
  constructor(operator: MonoTypeOperatorFunction<VmExit>) {
    super(operator, 'exit');
  }

  /** Sends `exit` through the pipeline and returns its resolution. */
  push(exit: VmExit): ExitResolution {
    this.send(exit, describeExit);
    return exit.resolution!;
  }
}

/** A vCPU's MMU-event stream: policies first, then the MMU's own default, then observers. */
export class MmuEventChannel extends SyncChannel<MmuEvent> {
  constructor(operator: MonoTypeOperatorFunction<MmuEvent>) {
    super(operator, 'mmuEvents');
  }

  /** Sends `event` through; an event no policy decided takes `fallback` (decidedBy 'mmu'). */
  decide<E extends MmuEvent>(event: E, fallback: MmuDecisionOf<E>): MmuDecisionOf<E> {
    this.fallback = fallback;
    this.send(event, describeMmuEvent);
    return event.decision as MmuDecisionOf<E>;
  }

  /** The default of the event in flight, applied by `mmuEventPipeline`'s last link. */
  fallback: unknown = null;
}

/** The MMU-event pipeline of a channel: policies, then the MMU's default for undecided events, then observers. */
export function mmuEventPipeline(
  channel: () => MmuEventChannel,
  policies: readonly MonoTypeOperatorFunction<MmuEvent>[],
  observers: readonly MonoTypeOperatorFunction<MmuEvent>[] = [],
): MonoTypeOperatorFunction<MmuEvent> {
  const fallback = map((ev: MmuEvent) => {
    if (ev.decision === null) {
      (ev as { decision: unknown }).decision = channel().fallback;
      ev.decidedBy = 'mmu';
    }
    return ev;
  });
  return chain([...policies, fallback, ...observers]);
}

function describeMmuEvent(e: MmuEvent): string {
  return `MMU event ${e.kind} #${e.seq} of vCPU ${e.vcpu}`;
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
