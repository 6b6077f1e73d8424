import { performance } from 'node:perf_hooks';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { GcWatch } from '../../src/testing/gc-watch.js';

// GcWatch's own behaviour. The file counts collections, so it runs in a process of its own (vitest.config.ts).

let gcs: GcWatch;
beforeAll(() => (gcs = new GcWatch()));
afterAll(() => gcs.stop());
afterEach(() => vi.useRealTimers());

/** A loop that keeps one small object in 4096 (so that V8 cannot drop the allocations) and allocates `n` of them. */
function allocate(n: number): number {
  const kept: Array<{ i: number }> = [];
  for (let i = 0; i < n; i++) {
    const o = { i };
    if ((i & 4095) === 0) kept.push(o);
  }
  return kept.length;
}

describe('GcWatch', () => {
  it('counts the collections of a loop that allocates, and none for one that does not', async () => {
    allocate(200_000);
    gcs.collectNow();
    let from = performance.now();
    expect(allocate(5_000_000)).toBe(Math.ceil(5_000_000 / 4096));
    expect(await gcs.between(from, performance.now())).toBeGreaterThan(1);

    const sum = (n: number) => {
      let s = 0;
      for (let i = 0; i < n; i++) s = (s + i) | 0;
      return s;
    };
    sum(200_000);
    gcs.collectNow();
    from = performance.now();
    expect(sum(5_000_000)).toBe(Number(((5_000_000n * 4_999_999n) / 2n) & 0xffffffffn) | 0); // 0 + 1 + ... in int32
    expect(await gcs.between(from, performance.now())).toBeLessThanOrEqual(1);
  });

  it('counts the full collection that collectNow makes only in a window around it', async () => {
    const before = performance.now();
    gcs.collectNow();
    const after = performance.now();
    expect(await gcs.between(before, after)).toBeGreaterThanOrEqual(1);
    expect(await gcs.between(after, performance.now())).toBe(0);
  });

  it("still answers under a test's fake timers", async () => {
    vi.useFakeTimers();
    const from = performance.now();
    expect(await gcs.between(from, from)).toBe(0);
  });
});
