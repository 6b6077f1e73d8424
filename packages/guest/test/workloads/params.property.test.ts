import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { runWorkload } from '../../src/run.js';
import { WorkloadError, type ParamDef } from '../../src/workloads/params.js';
import { SYNTHETIC_WORKLOADS } from '../../src/workloads/synthetic.js';

/*
 * Every workload at every parameter's minimum, maximum and random values inside its range
 * finishes, or is refused up front with the reason (a WorkloadError before the first access). A case whose
 * work is large is not run to its end: it must keep making accesses, quantum after quantum, until a budget
 * of accesses (a hang such as pt-recycle:dirs=127's, which made no progress, fails within a few quanta).
 * Guest RAM is 16 MiB, so the size parameters' large values are refused for memory up front, quickly.
 */

const MEMORY = 16 << 20;
/** Accesses, and quanta, a case may run before it is stopped as "still progressing" (a fork or an exec is one quantum of few accesses). */
const BUDGET = 20_000;
const QUANTA = 300;
/** Quanta in a row without a new access that count as a hang. */
const STALL = 200;

class Budget extends Error {}

type Outcome = { kind: 'refused'; code: string; message: string } | { kind: 'finished'; accesses: number } | { kind: 'progressing'; accesses: number };

function runCase(name: string, params: Record<string, number>): Outcome {
  const spec = `${name}:${Object.entries(params)
    .map(([k, v]) => `${k}=${v}`)
    .join(',')}`;
  let last = 0;
  let stalled = 0;
  let started = false;
  let quanta = 0;
  try {
    const r = runWorkload({
      workload: spec,
      memory: MEMORY,
      vcpus: 2,
      seed: 3,
      onProgress(accesses) {
        started = true;
        stalled = accesses === last ? stalled + 1 : 0;
        if (stalled >= STALL) throw new Error(`${spec}: ${STALL} quanta in a row without an access at ${accesses} accesses (a hang)`);
        last = accesses;
        if (accesses >= BUDGET || ++quanta >= QUANTA) throw new Budget();
      },
    });
    return { kind: 'finished', accesses: r.result.guest.accesses };
  } catch (e) {
    if (e instanceof Budget) return { kind: 'progressing', accesses: last };
    if (e instanceof WorkloadError) {
      // Refused: up front only (before the first quantum), with the reason in the message.
      expect(started, `${spec} refused after it started: ${e.message}`).toBe(false);
      return { kind: 'refused', code: e.code, message: e.message };
    }
    throw e;
  }
}

/** A value of a parameter: its minimum, its maximum, or a value inside its range (a whole number when integer). */
function valueOf(def: ParamDef): fc.Arbitrary<number> {
  const inside = def.integer
    ? fc.integer({ min: def.min, max: Math.min(def.max, Number.MAX_SAFE_INTEGER) })
    : fc.double({ min: def.min, max: def.max, noNaN: true }).map((x) => Math.round(x * 1000) / 1000);
  return fc.oneof(fc.constant(def.min), fc.constant(def.max), inside);
}

describe('synthetic workloads over their parameter ranges', () => {
  for (const [name, w] of SYNTHETIC_WORKLOADS) {
    const defs = Object.entries(w.params);
    it(`${name}: all minimums finish, all maximums are refused up front or progress`, () => {
      const min = runCase(name, Object.fromEntries(defs.map(([k, d]) => [k, d.min])));
      expect(min.kind).not.toBe('refused');
      const max = runCase(name, Object.fromEntries(defs.map(([k, d]) => [k, d.max])));
      if (max.kind === 'refused') expect(max.message).toMatch(/needs at least \d+ free pages|out of range|give more --memory/);
    }, 60_000);

    it(`${name}: any mix of minimum, maximum and random values finishes, progresses, or is refused up front with the reason`, () => {
      fc.assert(
        fc.property(fc.record(Object.fromEntries(defs.map(([k, d]) => [k, valueOf(d)]))), (params) => {
          const o = runCase(name, params);
          if (o.kind === 'refused') expect(o.message.length).toBeGreaterThan(`workload '${name}': `.length);
          else expect(o.accesses).toBeGreaterThanOrEqual(0);
        }),
        { numRuns: 4, seed: 14 },
      );
    }, 120_000);
  }
});
