import { describe, expect, it } from 'vitest';
import {
  createNativeVectorMachine,
  formatFailure,
  formatSummary,
  parseVectorLines,
  reportToJson,
  runConformance,
  runVector,
  runVectorNative,
  type VectorMachineFactory,
} from '../../src/conformance/index.js';

interface VectorJson {
  id: string;
  mode: string;
  cpu: Record<string, number>;
  cr3: string;
  memory: [string, string, number][];
  va: string;
  access: Record<string, number>;
  expect: {
    fault: boolean;
    error_code: number | null;
    pa: string | null;
    memory_after: [string, string, number][];
    memory_after_dontcare?: [string, string][];
  };
}

// long4 sample: a supervisor write through four writable levels. Walk: A on all four entries, D on the PTE.
const BASE: VectorJson = {
  id: 'write.ok',
  mode: 'long4',
  cpu: { cr0_wp: 0, cr4_pse: 1, cr4_smep: 0, cr4_smap: 0, cr4_pke: 0, efer_nxe: 0, eflags_ac: 0, cpl: 0, pkru: 0, maxphyaddr: 36 },
  cr3: '0x1000',
  memory: [
    ['0x1920', '0x2007', 8],
    ['0x2688', '0x3007', 8],
    ['0x3598', '0x4007', 8],
    ['0x4c48', '0x2000007', 8],
  ],
  va: '0xffff923456789abc',
  access: { write: 1, user: 0, fetch: 0 },
  expect: {
    fault: false,
    error_code: null,
    pa: '0x2000abc',
    memory_after: [
      ['0x1920', '0x2027', 8],
      ['0x2688', '0x3027', 8],
      ['0x3598', '0x4027', 8],
      ['0x4c48', '0x2000067', 8],
    ],
  },
};

const one = (v: object) => parseVectorLines(JSON.stringify(v), 'r.jsonl')[0]!;

describe('runVectorNative', () => {
  it('passes a vector whose outcome and A/D bits match the SDM', () => {
    expect(runVectorNative(one(BASE)).mismatches).toEqual([]);
  });

  it('names each differing field with the expected and observed values', () => {
    const wrong = structuredClone(BASE);
    wrong.expect.pa = '0x2000ab0';
    wrong.expect.memory_after[3] = ['0x4c48', '0x2000027', 8]; // D missing from the expectation
    const r = runVectorNative(one(wrong));
    expect(r.passed).toBe(false);
    expect(r.mismatches).toEqual([
      { field: 'expect.pa', expected: '0x2000ab0', observed: '0x2000abc' },
      { field: 'memory_after[0x4c48]', expected: '0x2000027', observed: '0x2000067' },
    ]);
    expect(formatFailure(r)).toBe(
      'FAIL write.ok (r.jsonl:1): expect.pa: expected 0x2000ab0, observed 0x2000abc; memory_after[0x4c48]: expected 0x2000027, observed 0x2000067',
    );
  });

  it('ignores the bits of memory_after_dontcare and only those (§4.8: upper-level A bits on a fault)', () => {
    // The PTE is read-only and CR0.WP=1: #PF P|W (3); nothing is written, so the PML4E keeps A=0.
    const v = structuredClone(BASE);
    v.cpu.cr0_wp = 1;
    v.memory[3] = ['0x4c48', '0x2000005', 8];
    v.expect = { fault: true, error_code: 3, pa: null, memory_after: structuredClone(v.memory) };
    v.expect.memory_after[0] = ['0x1920', '0x2027', 8]; // claims A was set
    expect(runVectorNative(one(v)).mismatches.map((m) => m.field)).toEqual(['memory_after[0x1920]']);
    v.expect.memory_after_dontcare = [['0x1920', '0x20']];
    expect(runVectorNative(one(v)).mismatches).toEqual([]);
    v.expect.memory_after[0] = ['0x1920', '0x2067', 8]; // D is not in the mask
    expect(runVectorNative(one(v)).mismatches[0]).toEqual({ field: 'memory_after[0x1920]', expected: "0x2067 (bits 0x20 don't care)", observed: '0x2007' });
  });

  it("applies a memory_after_dontcare mask to its own entry only: the leaf's A bit stays checked", () => {
    // As above: #PF P|W (3), nothing written. The PML4E's A bit is don't-care; the PTE's is not, so an
    // expectation that claims A was set in the PTE (0x2000025) fails on the PTE alone.
    const v = structuredClone(BASE);
    v.cpu.cr0_wp = 1;
    v.memory[3] = ['0x4c48', '0x2000005', 8];
    v.expect = { fault: true, error_code: 3, pa: null, memory_after: structuredClone(v.memory), memory_after_dontcare: [['0x1920', '0x20']] };
    v.expect.memory_after[3] = ['0x4c48', '0x2000025', 8];
    expect(runVectorNative(one(v)).mismatches).toEqual([{ field: 'memory_after[0x4c48]', expected: '0x2000025', observed: '0x2000005' }]);
  });

  it('runs pre_access first and checks pre_expect', () => {
    // A read first sets A everywhere; the write then sets D; pre_expect claims a fault that did not happen.
    const v = { ...structuredClone(BASE), pre_access: { write: 0, user: 0, fetch: 0 }, pre_expect: { fault: true, error_code: 0, pa: null } };
    expect(runVectorNative(one(v)).mismatches.map((m) => `${m.field}=${m.observed}`)).toEqual([
      'pre_expect.fault=false',
      'pre_expect.error_code=null',
      'pre_expect.pa=0x2000abc',
    ]);
  });
});

describe('runVector', () => {
  it('executes the accesses through the given machine factory (the seam for hypervisor variants)', () => {
    const seen: number[] = [];
    const counting: VectorMachineFactory = (vector) => {
      const native = createNativeVectorMachine(vector);
      return { access: (a) => (seen.push(a), native.access(a)), read: (pa, size) => native.read(pa, size) };
    };
    const v = { ...structuredClone(BASE), pre_access: { write: 0, user: 1, fetch: 0 } };
    expect(runVector(one(v), counting).passed).toBe(true);
    expect(seen).toEqual([4, 2]); // the user read, then the supervisor write
  });
});

describe('runConformance', () => {
  it('sums results into the summary line and the JSON report', () => {
    const bad = structuredClone(BASE);
    bad.id = 'bad';
    bad.expect.pa = '0x0';
    const vectors = parseVectorLines([JSON.stringify(BASE), JSON.stringify(bad)].join('\n'), 'r.jsonl');
    const report = runConformance(vectors);
    expect(formatSummary(report)).toBe('conformance: 1 passed, 1 failed');
    const json = reportToJson(report) as {
      passed: number;
      failed: number;
      results: Array<{ id: string; line: number; passed: boolean; observed: { pa: string } }>;
    };
    expect([json.passed, json.failed]).toEqual([1, 1]);
    expect(json.results.map((r) => [r.id, r.line, r.passed, r.observed.pa])).toEqual([
      ['write.ok', 1, true, '0x2000abc'],
      ['bad', 2, false, '0x2000abc'],
    ]);
  });
});
