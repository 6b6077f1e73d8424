import type { VxtTrace } from './types.js';

/**
 * The traces a `createTraceLoader` gave out: shared by the runs that replay them, which only read them, so what
 * a run works out from all their records (the highest address, the represented accesses) is kept per trace.
 * A trace that did not come from a loader is worked out again for every run (its owner may change it).
 */
export const sharedTraces = new WeakSet<VxtTrace>();

/** `f(trace)`, kept in `memo` when the trace is shared (see sharedTraces). */
export function perSharedTrace(memo: WeakMap<VxtTrace, number>, trace: VxtTrace, f: (t: VxtTrace) => number): number {
  if (!sharedTraces.has(trace)) return f(trace);
  let v = memo.get(trace);
  if (v === undefined) memo.set(trace, (v = f(trace)));
  return v;
}
