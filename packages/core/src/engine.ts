import { setFlagsFromString } from 'node:v8';

/**
 * The V8 flags the simulator runs with (`tuneV8`):
 * - V8 inlines callees into an optimized function until their bytecode adds up to
 *   `--max-inlined-bytecode-size-cumulative` (920 bytes by default). One exit is a deep chain of small functions
 *   (the vCPU's slow path, the backend, the RxJS pipeline, the MMU's fault handler, the emulator, the write hook),
 *   and at the default budget V8 stops inlining them part way: the chain then pays a call, and loses what the
 *   optimizer could do across it, at every link. A budget of 3000 bytes lets it inline most of the chain.
 * - V8 does not inline a call site that ran in fewer than `--min-inlining-frequency` (0.15 by default) of its
 *   function's calls when it was optimized, however small the callee. A walk's read of a level that most walks
 *   of the warm-up never reached (a 4 KiB leaf under 2 MiB ones) then stays a call, and a call that returns an
 *   entry's high half with XD set (a uint32 at or above 2^31) boxes it in a new heap number, every walk. With 0,
 *   rare sites are inlined too, after the frequent ones, within the same budget.
 * See DESIGN.md, "Speed", for the measured difference of each.
 */
export const V8_FLAGS: readonly string[] = Object.freeze(['--max-inlined-bytecode-size-cumulative=3000', '--min-inlining-frequency=0']);

let tuned = false;

/**
 * Sets `V8_FLAGS` in this process, once (the flags are process-wide: worker threads started later have them
 * too), except a flag that node's own command line sets (`node --max-inlined-bytecode-size-cumulative=920 ...`
 * runs with V8's default, to compare). Call it before the simulator runs: V8 reads an inlining flag each time it
 * optimizes a function, so code optimized before the call keeps the old budget until it is optimized again.
 * The CLI calls it as it starts, and the benchmarks do, so that they measure what the CLI runs. Semantics do
 * not change: only which functions V8 compiles together.
 *
 * A side effect: once a V8 flag changes at run time, Node's built-in code cache no longer matches, so the
 * built-in modules loaded afterwards (and those of every worker thread started afterwards) are compiled from
 * source, a one-off cost per module.
 */
export function tuneV8(): void {
  if (tuned) return;
  tuned = true;
  for (const f of V8_FLAGS) {
    const name = f.slice(0, f.indexOf('='));
    if (process.execArgv.some((a) => a === name || a.startsWith(`${name}=`))) continue;
    setFlagsFromString(f);
  }
}
