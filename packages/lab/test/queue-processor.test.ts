import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { decodeVxt } from '@vmexit/guest';
import { CellTraceLoader, deterministicPart, expandGrid, runCell } from '../src/index.js';
import { jobProcessor } from '../src/queue-processor.js';
import { encodeVxt, storeTrace } from './helpers/store-trace.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-lab-queue-processor-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
afterEach(() => {
  vi.useRealTimers();
});

describe("the queue worker's job processor", () => {
  it('keeps the last trace between jobs, and lets it go once its thread had no job for the idle time', async () => {
    const file = path.join(tmp, 'jobs.vxt');
    fs.writeFileSync(file, encodeVxt(storeTrace(40, 2, 1)));
    const [a, b] = expandGrid({ workloads: [file], variants: ['vmx shadow'], modes: ['long4'], seeds: [1, 2], overrides: { memory: '4M' } });
    let decodes = 0;
    let loaders = 0;
    let collections = 0;
    let slowJob = false; // a decode that takes 2 s of the (fake) clock, as a long job would
    const newLoader = () => {
      loaders++;
      return new CellTraceLoader({
        decode: (bytes, p) => {
          decodes++;
          if (slowJob) vi.advanceTimersByTime(2000);
          return decodeVxt(bytes, p);
        },
      });
    };
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const processJob = jobProcessor(1000, newLoader, () => collections++);

    // Two jobs on one trace: one decode.
    const first = await processJob({ data: a! });
    await processJob({ data: b! });
    expect(decodes).toBe(1);
    // 999 ms idle, then a job: it finds the trace, and the idle time starts again after it.
    vi.advanceTimersByTime(999);
    await processJob({ data: a! });
    vi.advanceTimersByTime(999);
    await processJob({ data: a! });
    expect([decodes, loaders, collections]).toEqual([1, 1, 0]);
    // 1000 ms idle: the loader (and its trace) is replaced and the heap collected, so the next job decodes again.
    vi.advanceTimersByTime(1000);
    expect([loaders, collections]).toEqual([2, 1]);
    // That job runs longer than the idle time: the idle time counts from its end, not its start.
    slowJob = true;
    const again = await processJob({ data: a! });
    slowJob = false;
    expect([decodes, loaders]).toEqual([2, 2]);
    vi.advanceTimersByTime(999);
    expect(loaders).toBe(2);
    vi.advanceTimersByTime(1);
    expect([loaders, collections]).toEqual([3, 2]);

    // The results are those of a cell run on its own.
    expect(first.ok && again.ok).toBe(true);
    if (first.ok && again.ok) {
      expect(deterministicPart(again.record)).toEqual(deterministicPart(first.record));
      expect(deterministicPart(first.record)).toEqual(deterministicPart(await runCell(a!)));
    }
  });
});
