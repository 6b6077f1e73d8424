import { map, Observable, type MonoTypeOperatorFunction } from 'rxjs';

/**
 * Operators that are a `map` of a synchronous function of one item (a step), marked with that function, so that a
 * pipeline may run several consecutive ones in one link (`fuseSteps`). That link delivers what the separate `map`s
 * would: the same items in the same order, the same error at the same item (what a step throws fails the stream
 * there), the same completion, and no later step run once the stream ended during an earlier one (a step that
 * pushed into its own pipeline, where a later link failed). Only the number of subscribers an item passes through
 * differs, which nothing in the pipeline can see. So the exit path keeps the pipeline's RxJS links and pays one
 * hop per run of steps instead of one per step.
 *
 * Steps are the operators this package makes: `resolveExits`, `decideMmuEvents`, and the pipelines' own
 * links (the MMU's handler, the MMU's default, the counting observer). Any other operator (a policy's own
 * `filter`, `scan`, `tap`, `bufferCount`, a wrapper) is not a step and keeps its place and its hop.
 */
const STEP = Symbol('vmexit.step');

type Stepped<T> = MonoTypeOperatorFunction<T> & { [STEP]?: (item: T) => T };

/** `map(step)`, marked as a step. */
export function stepOperator<T>(step: (item: T) => T): MonoTypeOperatorFunction<T> {
  const op: Stepped<T> = map(step);
  op[STEP] = step;
  return op;
}

/** `tap(f)` as a step. */
export function tapStep<T>(f: (item: T) => void): MonoTypeOperatorFunction<T> {
  return stepOperator((item: T) => {
    f(item);
    return item;
  });
}

/**
 * `ops` with every run of two or more consecutive steps made one link that runs them in order (see above). The
 * operators that are not steps, and single steps, are returned as they are.
 */
export function fuseSteps<T>(ops: readonly MonoTypeOperatorFunction<T>[]): MonoTypeOperatorFunction<T>[] {
  const out: MonoTypeOperatorFunction<T>[] = [];
  let run: MonoTypeOperatorFunction<T>[] = [];
  const end = (): void => {
    if (run.length === 1) out.push(run[0]!);
    else if (run.length > 1) out.push(fused(run.map((op) => (op as Stepped<T>)[STEP]!)));
    run = [];
  };
  for (const op of ops) {
    if ((op as Stepped<T>)[STEP] !== undefined) run.push(op);
    else {
      end();
      out.push(op);
    }
  }
  end();
  return out;
}

/**
 * One link for `steps`: each item through them in order, then on. Between two steps it looks whether the link was
 * ended meanwhile (a step that pushed into its own pipeline, where a later link failed, or closed it): then it
 * stops there, as the next `map` of separate links would never have been called.
 */
function fused<T>(steps: readonly ((item: T) => T)[]): MonoTypeOperatorFunction<T> {
  const n = steps.length;
  return (source: Observable<T>) =>
    new Observable<T>((subscriber) =>
      source.subscribe({
        next: (item: T) => {
          let v = item;
          try {
            for (let k = 0; k < n; k++) {
              if (k > 0 && subscriber.closed) return;
              v = steps[k]!(v);
            }
          } catch (e) {
            subscriber.error(e); // what `map` does with what its function throws
            return;
          }
          subscriber.next(v);
        },
        error: (e: unknown) => subscriber.error(e),
        complete: () => subscriber.complete(),
      }),
    );
}
