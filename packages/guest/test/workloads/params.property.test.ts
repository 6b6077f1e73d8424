import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { runWorkload } from '../../src/run.js';
import { WorkloadError, type ParamDef } from '../../src/workloads/params.js';
import { MAX_WORKLOAD_WORK, SYNTHETIC_WORKLOADS } from '../../src/workloads/synthetic.js';

/*
 * Every workload at every parameter's minimum, maximum and random values inside its range
 * finishes, or is refused up front with the reason (a WorkloadError before the first access). A run's
 * work is bounded before it starts: each workload says, from its parameters, an upper bound of the work it
 * does (SyntheticWorkload.work), and a run over the limit (RunOptions.maxWork, MAX_WORKLOAD_WORK by
 * default) is refused, naming it. So each case here runs under a small limit, WORK, and must either finish
 * (within the work it said: the bound is checked against the accesses as the run goes, and a run stuck
 * without accesses, as pt-recycle:dirs=127 once was, fails within a few quanta) or be refused up front.
 * Guest RAM is 16 MiB, so the size parameters' large values may also be refused for memory.
 */

const MEMORY = 16 << 20;
const VCPUS = 2;
/** The work limit of the cases here: small enough that every case it admits finishes in well under a second. */
const WORK = 60_000;
/** Quanta in a row without a new access that count as a hang. */
const STALL = 200;

type Outcome = { kind: 'refused'; code: string; message: string } | { kind: 'finished'; accesses: number };

function specOf(name: string, params: Record<string, number>): string {
  return `${name}:${Object.entries(params)
    .map(([k, v]) => `${k}=${v}`)
    .join(',')}`;
}

function runCase(name: string, params: Record<string, number>): Outcome {
  const spec = specOf(name, params);
  const w = SYNTHETIC_WORKLOADS.get(name)!;
  let last = 0;
  let stalled = 0;
  let started = false;
  try {
    const r = runWorkload({
      workload: spec,
      memory: MEMORY,
      vcpus: VCPUS,
      seed: 3,
      maxWork: WORK,
      onProgress(accesses) {
        started = true;
        stalled = accesses === last ? stalled + 1 : 0;
        if (stalled >= STALL) throw new Error(`${spec}: ${STALL} quanta in a row without an access at ${accesses} accesses (a hang)`);
        last = accesses;
        // (the workload's own bound of its work, which admitted the run, must hold)
        const bound = w.work(r0(params, w.params), VCPUS);
        if (accesses > bound) throw new Error(`${spec}: ${accesses} accesses, over the work bound ${bound} it was admitted with`);
      },
    });
    return { kind: 'finished', accesses: r.result.guest.accesses };
  } catch (e) {
    if (e instanceof WorkloadError) {
      // Refused: up front only (before the first quantum), with the reason in the message.
      expect(started, `${spec} refused after it started: ${e.message}`).toBe(false);
      return { kind: 'refused', code: e.code, message: e.message };
    }
    throw e;
  }
}

/** The parameters with their defaults filled in (what the run resolves). */
function r0(params: Record<string, number>, defs: Readonly<Record<string, ParamDef>>): Record<string, number> {
  return { ...Object.fromEntries(Object.entries(defs).map(([k, d]) => [k, d.default])), ...params };
}

/**
 * A value of a parameter: its minimum, its maximum, or a value inside its range (a whole number when
 * integer), drawn uniformly or near the minimum (so that mixes that finish come up as well as refusals).
 */
function valueOf(def: ParamDef): fc.Arbitrary<number> {
  const inside = def.integer
    ? fc.integer({ min: def.min, max: Math.min(def.max, Number.MAX_SAFE_INTEGER) })
    : fc.double({ min: def.min, max: def.max, noNaN: true }).map((x) => Math.round(x * 1000) / 1000);
  const small = def.integer ? fc.integer({ min: def.min, max: Math.min(def.max, def.min + 24) }) : inside;
  return fc.oneof(fc.constant(def.min), fc.constant(def.max), inside, { arbitrary: small, weight: 5 });
}

const REASON = /too much work|over the limit|needs at least \d+ free pages|give more --memory|needs a VM|power of two/;

describe('synthetic workloads over their parameter ranges', () => {
  for (const [name, w] of SYNTHETIC_WORKLOADS) {
    const defs = Object.entries(w.params);
    it(`${name}: all minimums finish; all maximums are refused up front, for their work`, () => {
      const min = runCase(name, Object.fromEntries(defs.map(([k, d]) => [k, d.min])));
      expect(min.kind).toBe('finished');
      const max = runCase(name, Object.fromEntries(defs.map(([k, d]) => [k, d.max])));
      expect(max).toMatchObject({ kind: 'refused', code: 'too-much-work' });
      // Under the default limit too, unless its work is inside it (demand-fault's 4 Mi pages: then it is its memory).
      const maxSpec = specOf(name, Object.fromEntries(defs.map(([k, d]) => [k, d.max])));
      const maxWork = w.work(Object.fromEntries(defs.map(([k, d]) => [k, d.max])), VCPUS);
      expect(() => runWorkload({ workload: maxSpec, memory: MEMORY, vcpus: VCPUS })).toThrow(
        maxWork > MAX_WORKLOAD_WORK ? /over the limit of 2\.68e\+8 a run may do; give smaller values/ : /give more --memory/,
      );
    }, 60_000);

    it(`${name}: any mix of minimum, maximum and random values finishes within its work bound, or is refused up front with the reason`, () => {
      fc.assert(
        fc.property(fc.record(Object.fromEntries(defs.map(([k, d]) => [k, valueOf(d)]))), (params) => {
          const o = runCase(name, params);
          if (o.kind === 'refused') expect(o.message).toMatch(REASON);
          else expect(o.accesses).toBeLessThanOrEqual(w.work(r0(params, w.params), VCPUS));
        }),
        { numRuns: 12, seed: 14 },
      );
    }, 120_000);

    it(`${name}: its defaults are inside the default limit`, () => {
      const p = Object.fromEntries(defs.map(([k, d]) => [k, d.default]));
      expect(w.work(p, 4)).toBeLessThanOrEqual(MAX_WORKLOAD_WORK);
    });
  }
});

describe('the work limit', () => {
  it('refuses a run over it before anything runs, naming the work and the limit (exit 2 from the CLI)', () => {
    // scan: 2 processes x 2^20 passes over 2^22 pages = 2^43 accesses, about 8.8e12 operations
    expect(() => runWorkload({ workload: 'scan:pages=4194304,passes=1048576', memory: 64 << 20, vcpus: 2 })).toThrow(
      "workload 'scan:pages=4194304,passes=1048576': these parameters ask for about 8.80e+12 operations (accesses, and pages mapped, copied and torn down) on 2 vCPUs, over the limit of 2.68e+8 a run may do; give smaller values",
    );
  });
});

describe('pt-recycle around the 127 page directories that once hung', () => {
  it.each([126, 127, 128])('dirs=%i finishes under the default limit', (dirs) => {
    const r = runWorkload({ workload: `pt-recycle:dirs=${dirs}`, memory: MEMORY, vcpus: 1, seed: 3 });
    expect(r.result.guest.accesses).toBeGreaterThan(0);
    expect(r.result.guest.accesses).toBeLessThanOrEqual(SYNTHETIC_WORKLOADS.get('pt-recycle')!.work({ dirs, rounds: 1 }, 1));
  });
});
