import { map, type MonoTypeOperatorFunction } from 'rxjs';

/**
 * Operators that are a `map` of a synchronous function of one item to the same item (a step), marked with that
 * function, so that a pipeline may run several consecutive ones in one `map` link (`fuseSteps`). `map(f)` then
 * `map(g)` and `map((x) => g(f(x)))` deliver the same items, in the same order, with the same errors (what `f`
 * or `g` throws fails the stream at that item either way), the same completion and the same subscription: only
 * the number of subscribers an item passes through differs, which nothing in the pipeline can see. So the
 * exit path keeps the pipeline's RxJS links and pays one hop per run of steps instead of one per step.
 *
 * Steps are the operators this package makes: `resolveExits`, `decideMmuEvents`, and the pipelines' own
 * links (the MMU's handler, the MMU's default, the counting observer). Any other operator (a policy's own
 * `filter`, `scan`, `tap`, `bufferCount`, a wrapper) is not a step and keeps its place and its hop.
 */
const STEP = Symbol('vmexit.step');

type Stepped<T> = MonoTypeOperatorFunction<T> & { [STEP]?: (item: T) => T };

/** `map(step)`, marked as a step (`step` must return the item it was given, as every step here does). */
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
 * `ops` with every run of two or more consecutive steps made one step that runs them in order (see above).
 * The operators that are not steps, and single steps, are returned as they are.
 */
export function fuseSteps<T>(ops: readonly MonoTypeOperatorFunction<T>[]): MonoTypeOperatorFunction<T>[] {
  const out: MonoTypeOperatorFunction<T>[] = [];
  let run: MonoTypeOperatorFunction<T>[] = [];
  const end = (): void => {
    if (run.length === 1) out.push(run[0]!);
    else if (run.length > 1) out.push(stepOperator(composed(run.map((op) => (op as Stepped<T>)[STEP]!))));
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

/** The steps in order, as one function (unrolled for the common lengths: no loop per item). */
function composed<T>(steps: readonly ((item: T) => T)[]): (item: T) => T {
  const [a, b, c, d] = steps;
  switch (steps.length) {
    case 2:
      return (x) => b!(a!(x));
    case 3:
      return (x) => c!(b!(a!(x)));
    case 4:
      return (x) => d!(c!(b!(a!(x))));
    default:
      return (x) => {
        for (const s of steps) x = s(x);
        return x;
      };
  }
}
