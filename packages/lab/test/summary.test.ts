import { describe, expect, it } from 'vitest';
import { spread, summaryCsv, type CellRecord } from '../src/index.js';

/** A cell record with just what summary.csv reads: the cell, the counters, the modelled cycles and the guest's faults. */
function record(seed: number, exits: number, cycles: number, overrides?: Record<string, string>): CellRecord {
  return {
    cell: { kind: 'run', workload: 'demand-fault:pages=8', variant: 'vmx shadow', mode: 'long4', seed, key: `k${seed}`, ...(overrides ? { overrides } : {}) },
    counters: { total: { exits }, vcpus: [] },
    cycles: { profile: 'server-2020s', cycles, breakdown: {} },
    guest: { faults: { total: 8 }, sigsegv: 0 },
  } as unknown as CellRecord;
}

describe('summaryCsv', () => {
  it('writes every mean and sd in full precision (the shortest decimal that reads back as the same number)', () => {
    // exits 201, 201, 202: mean 604 / 3 = 201.33333333333334, sd sqrt(((1/3)^2 * 2 + (2/3)^2) / 2) = sqrt(1/3) = 0.57735026918962...
    // (0.5773502691896258 in double arithmetic). cycles 10,000,000,000, 10,000,000,001, 10,000,000,000: mean
    // (3e10 + 1) / 3 = 10000000000.333334 as a double, sd sqrt(1/3) again (0.5773502691901509: the deviations
    // from a mean of 1e10 keep fewer bits).
    const csv = summaryCsv([record(1, 201, 1e10), record(2, 201, 1e10 + 1), record(3, 202, 1e10)]);
    const rows = Object.fromEntries(
      csv
        .trim()
        .split('\n')
        .slice(1)
        .map((line) => [line.split(',')[4], line.split(',').slice(5)]),
    );
    // Before: toPrecision(10) with trailing zeros stripped gave 201.3333333 and 0.5773502692, and for the cycles
    // "1.000000000e+1" (10000000000.333334 is 1.000000000e+10 to 10 digits, and the zero stripped was the exponent's).
    expect(rows['exits']).toEqual(['201.33333333333334', '0.5773502691896258', '201', '202']);
    expect(rows['cycles']).toEqual(['10000000000.333334', '0.5773502691901509', '10000000000', '10000000001']);
    expect(Number(rows['cycles']![0])).toBe((3e10 + 1) / 3);
    expect(Number(rows['cycles']![1])).toBeCloseTo(Math.sqrt(1 / 3), 9);
    expect(rows['guest.faults']).toEqual(['8', '0', '8', '8']);
  });

  it('names the settings of groups that would share a label (sweeps of different --cost-model in one directory)', () => {
    // demand-fault:pages=64 on vmx shadow, 4 MiB, seeds 1 and 2, swept once under server-2020s (695,036 cycles) and once
    // with --cost-model core2-2007 (1,321,392): two groups, which summary.csv labelled alike ("vmx shadow").
    const csv = summaryCsv([
      record(1, 193, 695_036, { memory: '4194304' }),
      record(2, 193, 695_036, { memory: '4194304' }),
      record(1, 193, 1_321_392, { memory: '4194304', costModel: 'core2-2007' }),
      record(2, 193, 1_321_392, { memory: '4194304', costModel: 'core2-2007' }),
    ]);
    expect(csv.split('\n').filter((l) => l.includes(',cycles,'))).toEqual([
      'demand-fault:pages=8,vmx shadow --memory 4194304,long4,2,cycles,695036,0,695036,695036',
      'demand-fault:pages=8,vmx shadow --memory 4194304 --cost-model core2-2007,long4,2,cycles,1321392,0,1321392,1321392',
    ]);
    // One sweep's groups, which no other group shares a label with, keep the plain variant.
    expect(summaryCsv([record(1, 193, 695_036, { memory: '4194304' })]).split('\n')[1]).toMatch(/^demand-fault:pages=8,vmx shadow,long4,1,/);
  });
});

describe('spread', () => {
  it('is all 0 for an empty list, as documented (not NaN and infinities)', () => {
    expect(spread([])).toEqual({ n: 0, mean: 0, sd: 0, min: 0, max: 0 });
    // 1, 2, 4: mean 7 / 3, sd sqrt(((4/3)^2 + (1/3)^2 + (5/3)^2) / 2) = sqrt(7/3)
    const s = spread([1, 2, 4]);
    expect(s.mean).toBeCloseTo(7 / 3, 12);
    expect(s.sd).toBeCloseTo(Math.sqrt(7 / 3), 12);
    expect([s.n, s.min, s.max]).toEqual([3, 1, 4]);
  });
});
