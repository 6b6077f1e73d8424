import { catchError, Observable, pipe, Subject, type MonoTypeOperatorFunction, type Subscriber, type Subscription, type UnaryFunction } from 'rxjs';
import { describeValue, expectedDecisions, isDecisionOf } from './decision-check.js';
import { ExitError } from './errors.js';
import type { MmuDecisionOf, MmuEvent } from './mmu-events.js';
import { policyMark } from './policy.js';
import { fuseSteps, stepOperator, tapStep } from './step.js';
import { describeExit, type ExitResolution, type VmExit } from './vm-exit.js';

/**
 * An error of a link that is not a policy's (the MMU's handler, `observe`, an observer), on its way through the
 * stream's error channel: the channel rethrows `error` as it is, as if the link had been called directly (an
 * MMU's out-of-pages error stays the MMU layer's, with its class and code; a bug stays a bug).
 */
class LinkFailure {
  constructor(readonly error: unknown) {}
}

/** A policy's error, tagged by the link it came out of: the channel names the policy (`name`, or its position). */
class PolicyFailure {
  constructor(
    readonly name: string | null,
    readonly position: number,
    readonly error: unknown,
  ) {}
}

/** Whether `e` already says where it comes from (an ExitError, or tagged by its link). */
function attributed(e: unknown): boolean {
  return e instanceof ExitError || e instanceof LinkFailure || e instanceof PolicyFailure;
}

/**
 * The policies' operators as links that tag what they throw with the policy (`namedPolicy`'s name, or the
 * position): one link each, except for operators that name themselves (resolveExits, decideMmuEvents), which
 * pay no extra operator hop. An error that reaches a link from upstream is already tagged and passes as it is.
 */
function policyLinks<T>(ops: readonly MonoTypeOperatorFunction<T>[]): MonoTypeOperatorFunction<T>[] {
  return ops.map((op, i) => {
    const mark = policyMark(op as MonoTypeOperatorFunction<unknown>);
    if (mark.selfNaming) return op;
    return (source: Observable<T>) =>
      op(source).pipe(
        catchError((e: unknown) => {
          throw attributed(e) ? e : new PolicyFailure(mark.name, i + 1, e);
        }),
      );
  });
}

/** Calls `f(x)`, tagging what it throws (other than an ExitError) as a LinkFailure. */
function asLink<X, R>(f: (x: X) => R, x: X): R {
  try {
    return f(x);
  } catch (e) {
    throw e instanceof ExitError ? e : new LinkFailure(e);
  }
}

/** The MMU's handler: resolves what no policy did (`VmHooks.handleExit` is the one a VM uses). */
export type ExitHandler = (exit: VmExit) => ExitResolution;

/**
 * Hands every still-unresolved exit to `handler` (resolvedBy 'mmu'), and fails the stream with
 * E_EXIT_UNRESOLVED, as `requireResolved` does, when the handler gives no resolution: one link, so an exit
 * pays one operator hop for both. `observe`, when given, is then called with the resolved exit in the same
 * link (what a `tap` after it would do, without the hop).
 */
export function handleRemaining(handler: ExitHandler, observe: ((exit: VmExit) => void) | null = null): MonoTypeOperatorFunction<VmExit> {
  // What the handler or `observe` throws is theirs, not a policy's: the channel rethrows it as it is (LinkFailure).
  if (observe !== null) {
    return stepOperator((exit: VmExit) => {
      if (exit.resolution === null) {
        exit.resolution = asLink(handler, exit);
        exit.resolvedBy = 'mmu';
        if (exit.resolution === null) throw unresolved(exit);
      }
      asLink(observe, exit);
      return exit;
    });
  }
  return stepOperator((exit: VmExit) => {
    if (exit.resolution === null) {
      exit.resolution = asLink(handler, exit);
      exit.resolvedBy = 'mmu';
      if (exit.resolution === null) throw unresolved(exit);
    }
    return exit;
  });
}

/** Fails the stream with E_EXIT_UNRESOLVED, naming the exit, when an exit arrives unresolved. */
export function requireResolved(): MonoTypeOperatorFunction<VmExit> {
  return tapStep((exit: VmExit) => {
    if (exit.resolution === null) throw unresolved(exit);
  });
}

function unresolved(exit: VmExit): ExitError {
  return new ExitError('E_EXIT_UNRESOLVED', `no policy or handler resolved ${describeExit(exit)}`);
}

/**
 * A vCPU's exit pipeline: the policies in order, then the MMU's handler (when given), then the check that
 * every exit was resolved, then `observe` (a function: in the handler's link) and the observers (taps:
 * counters, tracer, recorder). Observers therefore see each exit once, with its resolution (an exit that an
 * operator emits twice fails the push, E_EXIT_DUPLICATED). What a policy throws fails the push with
 * E_POLICY_FAILED naming the policy (`resolveExits`, `namedPolicy`; else its position); what the handler,
 * `observe` or an observer throws is rethrown as it is. (The stream's errors other than ExitErrors are tagged
 * with their link for the channel, `ExitChannel`, which turns them into what `push` throws.)
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
  const stages: MonoTypeOperatorFunction<VmExit>[] = policyLinks(policies);
  if (handler !== null) stages.push(handleRemaining(handler, observe));
  else stages.push(requireResolved(), ...(observe !== null ? [tapStep((e: VmExit) => asLink(observe, e))] : []));
  stages.push(...observers); // untagged: what an observer throws passes through the channel as it is
  return chain(stages);
}

/** The links in order, consecutive steps (step.ts: the maps this package makes) run in one link. */
function chain<T>(ops: readonly MonoTypeOperatorFunction<T>[]): MonoTypeOperatorFunction<T> {
  return (pipe as (...fns: UnaryFunction<Observable<T>, Observable<T>>[]) => UnaryFunction<Observable<T>, Observable<T>>)(
    ...fuseSteps(ops),
  ) as MonoTypeOperatorFunction<T>;
}

/**
 * A synchronous stream with a pipeline behind it: `push` sends one item through the whole pipeline and
 * returns when it came out of the end (RxJS operators deliver synchronously). The item must come out exactly
 * once: not at all is E_EXIT_DROPPED, more than once E_EXIT_DUPLICATED (its observers saw it twice). A failure in
 * the pipeline is rethrown by `push` (a policy's as E_POLICY_FAILED naming it, any other link's as it is). After
 * any of these the channel stays closed (E_PIPELINE_CLOSED), as it does once an operator completed the stream
 * or its owner closed it (`close`: the VM was disposed).
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
  /**
   * How many subscriptions to `output` are open: what `observed` answers, as a field the exit path reads (twice per
   * item) instead of the Subject's getter (a call that reads its observer list each time).
   */
  private outputSubscribers = 0;
  /**
   * The output completed or failed. Set before its subscribers are told (a Subject takes each off its list before it
   * calls their `complete` or `error`), so that `observed` is false from then on, in those callbacks too.
   */
  private outputEnded = false;
  /**
   * The items after the pipeline (hot): observe it for merged views (the VM's `exits$`). Each subscription is
   * counted from its start until its end (unsubscribed, or the output completed or failed: RxJS runs the
   * teardown once in every case).
   */
  readonly output: Observable<T> = new Observable<T>((subscriber) => {
    this.outputSubscribers++;
    const inner = this.out.subscribe(subscriber);
    return () => {
      this.outputSubscribers--;
      inner.unsubscribe();
    };
  });
  /** The item being pushed, or the last one pushed (see `pushing`; null: none yet), and how many times it came out of the pipeline so far. */
  private inFlight: T | null = null;
  /**
   * Whether a push is under way (`inFlight` is its item). After a push its item stays in `inFlight`, so that the
   * next push of the same object (an exit or event its owner refills) stores nothing: storing an object calls V8's
   * write barrier while a major GC marks. Only a nested push puts the outer item back.
   */
  private pushing = false;
  private arrivals = 0;
  /** The error that closed the channel, as `push` throws it (null: open). */
  private failure: Error | null = null;
  private completed = false;
  /** Whether `close` was called. */
  private closed = false;
  /** Why `close` ended the channel (null: it did not, or an operator had completed it before); read only when a push is refused. */
  private closedBy: string | null = null;
  /** The pipeline's subscription to the channel's input (ended by `close`). */
  private readonly pipeline: Subscription;

  /** Whether something subscribes to `output` now (and may keep the items it sees). */
  get observed(): boolean {
    return !this.outputEnded && this.outputSubscribers > 0;
  }

  constructor(
    operator: MonoTypeOperatorFunction<T>,
    private readonly what: string,
    private readonly describe: (item: T) => string,
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
    this.pipeline = input.pipe(operator).subscribe({
      next: (v) => {
        if (this.pushing && v === this.inFlight) this.arrivals++;
        if (this.outputSubscribers > 0) out.next(v);
      },
      error: (e: unknown) => {
        const err = this.failureOf(e);
        this.failure = err;
        this.outputEnded = true;
        out.error(err);
      },
      complete: () => {
        this.completed = true;
        this.outputEnded = true;
        out.complete();
      },
    });
  }

  /**
   * Ends the channel, once, from outside (the VM's `dispose`): `output` completes, unless the pipeline failed
   * earlier (then its subscribers keep the error, late ones included), and the pipeline's operators are
   * unsubscribed (their finalizers run). A later push is refused (E_PIPELINE_CLOSED, naming `why`). No work per
   * item: a closed channel is a completed one, told apart only in the refusal's message.
   */
  close(why: string): void {
    if (this.closed) return;
    this.closed = true;
    // A channel an operator completed earlier keeps that reason for its refusals (the first cause).
    if (!this.completed) this.closedBy = why;
    this.completed = true;
    this.outputEnded = true;
    this.out.complete(); // a no-op on an output that already failed or completed
    this.pipeline.unsubscribe();
  }

  /** The error `push` throws for what the pipeline failed with while `inFlight` was in it. */
  private failureOf(e: unknown): Error {
    if (e instanceof ExitError) return e;
    if (e instanceof LinkFailure) return e.error instanceof Error ? e.error : new Error(String(e.error));
    const item = this.pushing ? this.inFlight : null;
    const on = item === null ? `the ${this.what} pipeline` : this.describe(item);
    if (e instanceof PolicyFailure) {
      const who = e.name !== null ? `policy '${e.name}'` : `policy #${e.position} of the ${this.what} pipeline`;
      return new ExitError('E_POLICY_FAILED', `${who} failed on ${on}: ${errorMessage(e.error)}`, { cause: e.error });
    }
    // Untagged: every policy's link tags what it throws, so this is an observer's (or a fallback's) own error,
    // rethrown as it is (no operator hop per observer to tag it: the exit path's cost).
    return e instanceof Error ? e : new Error(String(e));
  }

  protected send(item: T): void {
    const describe = this.describe;
    if (this.failure !== null) {
      throw new ExitError('E_PIPELINE_CLOSED', `${describe(item)}: the ${this.what} pipeline failed earlier (${this.failure.message})`, {
        cause: this.failure,
      });
    }
    if (this.completed) {
      throw new ExitError(
        'E_PIPELINE_CLOSED',
        this.closedBy !== null
          ? `${describe(item)}: the ${this.what} pipeline is closed (${this.closedBy})`
          : `${describe(item)}: the ${this.what} pipeline completed after an earlier ${this.what === 'exit' ? 'exit' : 'event'} (an operator in it ended the stream)`,
      );
    }
    // A push from inside the pipeline (none is known; kept safe) counts its own item's arrivals.
    const outerItem = this.inFlight;
    const outerPushing = this.pushing;
    const outerArrivals = this.arrivals;
    if (outerItem !== item) this.inFlight = item;
    this.pushing = true;
    this.arrivals = 0;
    const sinks = this.sinks;
    try {
      if (sinks.length === 1) sinks[0]!.next(item);
      else for (const s of sinks.slice()) s.next(item);
    } finally {
      if (outerPushing && this.inFlight !== outerItem) this.inFlight = outerItem;
      this.pushing = outerPushing;
    }
    const arrivals = this.arrivals;
    this.arrivals = outerArrivals;
    const f = this.failure as Error | null; // set by the subscriber's error callback during next()
    if (f !== null) throw f;
    if (arrivals === 1) return;
    if (arrivals === 0) {
      // Closed from here on: an operator that held the item back (bufferCount, delay) must not let it out during a
      // later push, out of its order and after its own push failed.
      const why = this.completed ? 'an operator dropped it and ended the stream' : 'an operator dropped it';
      const err = new ExitError('E_EXIT_DROPPED', `${describe(item)} did not come out of the ${this.what} pipeline (${why})`);
      this.failure = err;
      throw err;
    }
    // Its observers (counters, tracer, recorder) saw it `arrivals` times: the counts are wrong from here on.
    const err = new ExitError(
      'E_EXIT_DUPLICATED',
      `${describe(item)} came out of the ${this.what} pipeline ${arrivals} times (an operator emitted it more than once)`,
    );
    this.failure = err;
    throw err;
  }
}

/** A vCPU's exit stream. */
export class ExitChannel extends SyncChannel<VmExit> {
  constructor(operator: MonoTypeOperatorFunction<VmExit>) {
    super(operator, 'exit', describeExit);
  }

  /** Sends `exit` through the pipeline and returns its resolution. */
  push(exit: VmExit): ExitResolution {
    this.send(exit);
    return exit.resolution!;
  }
}

/** A vCPU's MMU-event stream: policies first, then the MMU's own default, then observers. */
export class MmuEventChannel extends SyncChannel<MmuEvent> {
  constructor(operator: MonoTypeOperatorFunction<MmuEvent>) {
    super(operator, 'mmuEvents', describeMmuEvent);
  }

  /** Sends `event` through; an event no policy decided takes `fallback` (decidedBy 'mmu'). */
  decide<E extends MmuEvent>(event: E, fallback: MmuDecisionOf<E>): MmuDecisionOf<E> {
    // A decision asked from inside the pipeline (a policy that calls back into the MMU) has its own default; the
    // event it interrupted gets its own back.
    const outer = this.fallback;
    this.fallback = fallback;
    try {
      this.send(event);
    } finally {
      this.fallback = outer;
    }
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
  const fallback = stepOperator((ev: MmuEvent) => {
    if (ev.decision === null) {
      (ev as { decision: unknown }).decision = channel().fallback;
      ev.decidedBy = 'mmu';
    } else if (!isDecisionOf(ev.kind, ev.decision)) {
      // An operator that is not decideMmuEvents (which checks its policy's answers) set a decision of the wrong
      // kind: fail here, naming it, rather than let the MMU read it (a flood answered 1 is not `true`).
      throw new ExitError(
        'E_BAD_RESOLUTION',
        `${describeMmuEvent(ev)} was decided ${describeValue(ev.decision)} by ${ev.decidedBy === null ? 'a policy' : `'${ev.decidedBy}'`} (expected ${expectedDecisions(ev.kind)})`,
      );
    }
    return ev;
  });
  return chain([...policyLinks(policies), fallback, ...observers]);
}

function describeMmuEvent(e: MmuEvent): string {
  return `MMU event ${e.kind} #${e.seq} of vCPU ${e.vcpu}`;
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
