import { hexHiLo } from '../arch/hex.js';
import { createNativeVectorMachine, type AccessOutcome, type VectorMachineFactory } from './machine.js';
import type { ConformanceVector, VectorOutcome } from './vector.js';

/** One field whose observed value differs from the vector's expectation. */
export interface Mismatch {
  /** The vector field: `expect.fault`, `expect.error_code`, `expect.pa`, `pre_expect.*`, `memory_after[0x1920]`. */
  field: string;
  expected: string;
  observed: string;
}

/** What running a vector observed: the outcomes of its accesses and the final values of its `memory_after` entries. */
export interface VectorObservation {
  pre: AccessOutcome | null;
  main: AccessOutcome;
  /** One value per `expect.memoryAfter` entry, in order. */
  memoryAfter: bigint[];
}

/** The outcome of one vector: where it is (file, line), whether it passed, what differed, and what the machine did. */
export interface VectorResult {
  id: string;
  file: string;
  line: number;
  passed: boolean;
  mismatches: Mismatch[];
  observation: VectorObservation;
}

/** The outcome of a conformance run: counts of passed and failed vectors and each vector's result. */
export interface ConformanceReport {
  passed: number;
  failed: number;
  results: VectorResult[];
}

/** A 64-bit value of a vector (a physical address, a memory entry) in vmexit's one hex format. */
const hex = (v: bigint): string => hexHiLo(Number((v >> 32n) & 0xffffffffn), Number(v & 0xffffffffn));

/** Runs a vector's accesses on a machine built by `factory` (pre_access first, its result kept apart). */
export function observeVector(vector: ConformanceVector, factory: VectorMachineFactory): VectorObservation {
  const machine = factory(vector);
  const pre = vector.preAccess === null ? null : machine.access(vector.preAccess);
  const main = machine.access(vector.access);
  const memoryAfter = vector.expect.memoryAfter.map((e) => machine.read(e.pa, e.size));
  return { pre, main, memoryAfter };
}

function describeFault(o: AccessOutcome): string {
  return o.result === 'gp' ? 'true (#GP, not #PF)' : String(o.result === 'pf');
}

function compareOutcome(prefix: string, expected: VectorOutcome, observed: AccessOutcome, out: Mismatch[]): void {
  const fault = observed.result !== 'ok';
  if (observed.result === 'gp' || fault !== expected.fault) {
    out.push({ field: `${prefix}.fault`, expected: String(expected.fault), observed: describeFault(observed) });
  }
  if (expected.errorCode !== observed.errorCode) {
    out.push({
      field: `${prefix}.error_code`,
      expected: String(expected.errorCode),
      observed: observed.result === 'gp' ? 'none (#GP)' : String(observed.errorCode),
    });
  }
  if (expected.pa !== observed.pa) {
    out.push({ field: `${prefix}.pa`, expected: expected.pa === null ? 'null' : hex(expected.pa), observed: observed.pa === null ? 'null' : hex(observed.pa) });
  }
}

/**
 * Compares an observation with what the vector expects: the access's fault, error code and physical
 * address (and those of the pre-access when `pre_expect` is given), and every `memory_after` entry, bits of
 * the entry's `memory_after_dontcare` mask excepted (the A bits the SDM leaves open on a fault, §4.8).
 */
export function checkVector(vector: ConformanceVector, observation: VectorObservation): VectorResult {
  const mismatches: Mismatch[] = [];
  if (vector.preExpect !== null && observation.pre !== null) compareOutcome('pre_expect', vector.preExpect, observation.pre, mismatches);
  compareOutcome('expect', vector.expect, observation.main, mismatches);
  vector.expect.memoryAfter.forEach((e, i) => {
    let care = (1n << BigInt(e.size * 8)) - 1n;
    for (const d of vector.expect.memoryAfterDontCare) if (d.pa === e.pa) care &= ~d.mask;
    const got = observation.memoryAfter[i]!;
    if ((got & care) !== (e.value & care)) {
      const ignored = ((1n << BigInt(e.size * 8)) - 1n) & ~care;
      mismatches.push({
        field: `memory_after[${hex(e.pa)}]`,
        expected: ignored === 0n ? hex(e.value) : `${hex(e.value)} (bits ${hex(ignored)} don't care)`,
        observed: hex(got),
      });
    }
  });
  return { id: vector.id, file: vector.file, line: vector.line, passed: mismatches.length === 0, mismatches, observation };
}

/** Runs one vector on the machine `factory` builds and checks it. */
export function runVector(vector: ConformanceVector, factory: VectorMachineFactory): VectorResult {
  return checkVector(vector, observeVector(vector, factory));
}

/** Runs one vector natively: the architectural walker over the vector's memory. */
export function runVectorNative(vector: ConformanceVector): VectorResult {
  return runVector(vector, createNativeVectorMachine);
}

/** Runs every vector (natively unless another `factory` is given) and sums the results. */
export function runConformance(vectors: readonly ConformanceVector[], factory: VectorMachineFactory = createNativeVectorMachine): ConformanceReport {
  const results = vectors.map((v) => runVector(v, factory));
  const passed = results.filter((r) => r.passed).length;
  return { passed, failed: results.length - passed, results };
}

/** One line for a failed vector: id, where it is, and each differing field with expected and observed values. */
export function formatFailure(r: VectorResult): string {
  const diffs = r.mismatches.map((m) => `${m.field}: expected ${m.expected}, observed ${m.observed}`).join('; ');
  return `FAIL ${r.id} (${r.file}:${r.line}): ${diffs}`;
}

/** The closing line: `conformance: N passed, M failed`. */
export function formatSummary(report: ConformanceReport): string {
  return `conformance: ${report.passed} passed, ${report.failed} failed`;
}

function outcomeJson(o: AccessOutcome): { fault: boolean; exception: 'PF' | 'GP' | null; error_code: number | null; pa: string | null } {
  return {
    fault: o.result !== 'ok',
    exception: o.result === 'pf' ? 'PF' : o.result === 'gp' ? 'GP' : null,
    error_code: o.errorCode,
    pa: o.pa === null ? null : hex(o.pa),
  };
}

/** The machine-readable report (`vmexit conformance --json`): plain JSON values, hex strings for addresses. */
export function reportToJson(report: ConformanceReport): unknown {
  return {
    passed: report.passed,
    failed: report.failed,
    results: report.results.map((r) => ({
      id: r.id,
      file: r.file,
      line: r.line,
      passed: r.passed,
      mismatches: r.mismatches,
      observed: {
        ...(r.observation.pre === null ? {} : { pre: outcomeJson(r.observation.pre) }),
        ...outcomeJson(r.observation.main),
        memory_after: r.observation.memoryAfter.map(hex),
      },
    })),
  };
}
