import { PerformanceObserver } from 'node:perf_hooks';
import { setTimeout as delay } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * Counts V8's garbage collections (a PerformanceObserver on 'gc' entries), for a test that pins "this loop allocates
 * nothing" without timing anything: a loop that allocated a few bytes per iteration fills V8's young generation
 * again and again, and one that allocates nothing makes V8 collect nothing. Size the loop so that an allocation
 * would fill the young generation several times (it grows to 16 MiB per half on Node 20): 16 bytes per iteration
 * needs some 3-5 million iterations to show two or more collections. Run the loop once first to warm it up (code V8
 * has not optimized yet boxes numbers freely), then `collectNow()`, then the measured loop between two
 * `performance.now()` readings, and allow one collection that what ran before made due. The count depends on what
 * else the process holds (a larger heap collects less often): run such a test in a process of its own.
 *
 * @example
 * const gcs = new GcWatch();
 * loop(200_000); // warm-up
 * gcs.collectNow();
 * const from = performance.now();
 * loop(5_000_000);
 * expect(await gcs.between(from, performance.now())).toBeLessThanOrEqual(1);
 * gcs.stop();
 */
export class GcWatch {
  private readonly starts: number[] = [];
  private readonly observer: PerformanceObserver;
  private gc: (() => void) | null = null;

  constructor() {
    this.observer = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) this.starts.push(e.startTime);
    });
    this.observer.observe({ entryTypes: ['gc'] });
  }

  /**
   * A full collection now (it empties the young generation), through the `gc` that node exposes to a new context
   * once `--expose-gc` is set: set here, for the whole process, the first time. Nothing when that cannot be had.
   */
  collectNow(): void {
    if (this.gc === null) {
      setFlagsFromString('--expose-gc');
      const gc = runInNewContext('gc') as unknown;
      this.gc = typeof gc === 'function' ? (gc as () => void) : () => {};
    }
    this.gc();
  }

  /**
   * The collections that started from `from` to `to` (`performance.now()` times), counted once V8 has delivered
   * them: entries arrive asynchronously, so it waits 50 ms first (with node:timers, which a test's fake timers do
   * not replace).
   */
  async between(from: number, to: number): Promise<number> {
    await delay(50);
    return this.starts.filter((t) => t >= from && t <= to).length;
  }

  /** Stops watching. */
  stop(): void {
    this.observer.disconnect();
  }
}
