import fc from 'fast-check';
import { from, map, pipe, Subject, tap, type MonoTypeOperatorFunction, type Observable, type UnaryFunction } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { fuseSteps, stepOperator, tapStep } from '../../src/exits/step.js';

interface Item {
  n: number;
  trail: string[];
}

/** What a pipeline delivers for `inputs`: the items' trails in order, then its end ('complete' or the error's message). */
function outcome(ops: readonly MonoTypeOperatorFunction<Item>[], inputs: readonly number[]): string[] {
  const got: string[] = [];
  const p = (pipe as (...fns: UnaryFunction<Observable<Item>, Observable<Item>>[]) => UnaryFunction<Observable<Item>, Observable<Item>>)(...ops);
  p(from(inputs.map((n) => ({ n, trail: [] as string[] })))).subscribe({
    next: (it) => got.push(`${it.n}:${it.trail.join(',')}`),
    error: (e: unknown) => got.push(`error ${(e as Error).message}`),
    complete: () => got.push('complete'),
  });
  return got;
}

describe('fuseSteps', () => {
  it('runs each run of two or more consecutive steps in one link, and leaves other operators and single steps in place', () => {
    const s = (name: string) => stepOperator((it: Item) => (it.trail.push(name), it));
    const other = map((it: Item) => (it.trail.push('map'), it)); // an RxJS map, not a step
    const [a, b, c, d, e] = [s('a'), s('b'), s('c'), s('d'), s('e')];
    const fused = fuseSteps([a, b, other, c, tap(() => undefined), d, e, tapStep((it: Item) => it.trail.push('t'))]);
    // [a b] other [c] tap [d e t]
    expect(fused).toHaveLength(5);
    expect(fused[1]).toBe(other);
    expect(fused[2]).toBe(c);
    expect(fuseSteps([a])[0]).toBe(a);
    expect(fuseSteps([])).toEqual([]);
    expect(outcome(fused, [1, 2])).toEqual(['1:a,b,map,c,d,e,t', '2:a,b,map,c,d,e,t', 'complete']);
  });

  it('runs no later step once the stream ended during an earlier one (a step that pushed into its own pipeline, where a later step failed)', () => {
    // A pushes item 2 into the pipeline's own source while it handles item 1; B fails on item 2. Separate maps: the
    // error ends the stream inside A's push, so B and C never see item 1. The fused link must do the same.
    const run = (fuse: boolean): string[] => {
      const seen: string[] = [];
      const source = new Subject<Item>();
      const a = stepOperator((it: Item) => {
        seen.push(`A${it.n}`);
        if (it.n === 1) source.next({ n: 2, trail: [] });
        return it;
      });
      const b = stepOperator((it: Item) => {
        seen.push(`B${it.n}`);
        if (it.n === 2) throw new Error('B refused 2');
        return it;
      });
      const c = tapStep((it: Item) => void seen.push(`C${it.n}`));
      const ops = fuse ? fuseSteps([a, b, c]) : [a, b, c];
      expect(ops).toHaveLength(fuse ? 1 : 3);
      const p = (pipe as (...fns: UnaryFunction<Observable<Item>, Observable<Item>>[]) => UnaryFunction<Observable<Item>, Observable<Item>>)(...ops);
      p(source).subscribe({ next: (it) => seen.push(`out${it.n}`), error: (e: unknown) => seen.push(`error ${(e as Error).message}`) });
      source.next({ n: 1, trail: [] });
      return seen;
    };
    expect(run(false)).toEqual(['A1', 'A2', 'B2', 'error B refused 2']);
    expect(run(true)).toEqual(run(false));
  });

  it('property: a pipeline delivers the same items, in the same order, with the same error and completion, fused or not', () => {
    // Each operator: a step or a plain RxJS operator (map, tap, filter-like skip is not 1:1 and is left out: the
    // pipelines here carry every item), either of which may throw on items divisible by its `throwOn`.
    const opArb = fc.record({ step: fc.boolean(), tap: fc.boolean(), throwOn: fc.option(fc.integer({ min: 2, max: 7 }), { nil: null }) });
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 12 }), fc.array(fc.integer({ min: 1, max: 40 }), { maxLength: 10 }), (specs, inputs) => {
        const ops = specs.map((o, i) => {
          const f = (it: Item): Item => {
            if (o.throwOn !== null && it.n % o.throwOn === 0) throw new Error(`op ${i} refused ${it.n}`);
            it.trail.push(String(i));
            return it;
          };
          if (o.tap) return o.step ? tapStep((it: Item) => void f(it)) : tap((it: Item) => void f(it));
          return o.step ? stepOperator(f) : map(f);
        });
        expect(outcome(fuseSteps(ops), inputs)).toEqual(outcome(ops, inputs));
      }),
      { numRuns: 300 },
    );
  });
});
