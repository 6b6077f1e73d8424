import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadVectorFile, parseVectorLines, validateVector, VectorError } from '../../src/conformance/index.js';

const GOOD = {
  id: 'pte.rw+pde.p',
  mode: 'long4',
  cpu: { cr0_wp: 0, cr4_pse: 1, cr4_smep: 0, cr4_smap: 0, cr4_pke: 0, efer_nxe: 0, eflags_ac: 0, cpl: 0, pkru: 4294967292, maxphyaddr: 46 },
  cr3: '0x1000',
  memory: [['0x1920', '0x2027', 8]],
  va: '0xffff923456789abc',
  access: { write: 1, user: 0, fetch: 0 },
  expect: { fault: true, error_code: 2, pa: null, memory_after: [['0x1920', '0x2027', 8]] },
  ac_flags: 12,
};

/** GOOD with `path` (dotted, array indices as numbers) set to `value` (undefined deletes it). */
function withField(path: string, value: unknown): Record<string, unknown> {
  const v = structuredClone(GOOD) as Record<string, unknown>;
  const keys = path.split('.');
  let o = v as Record<string, unknown>;
  for (const k of keys.slice(0, -1)) o = o[k] as Record<string, unknown>;
  if (value === undefined) delete o[keys.at(-1)!];
  else o[keys.at(-1)!] = value;
  return v;
}

function problem(json: unknown): string {
  try {
    validateVector(json, 'v.jsonl', 7);
  } catch (e) {
    expect(e).toBeInstanceOf(VectorError);
    return (e as Error).message;
  }
  throw new Error('expected a VectorError');
}

describe('validateVector', () => {
  it('accepts a vector of the format, ignores unknown fields and converts hex strings to BigInt', () => {
    const v = validateVector(GOOD, 'v.jsonl', 1);
    expect([v.id, v.mode, v.cr3, v.va, v.access, v.cpu.maxPhyAddr]).toEqual(['pte.rw+pde.p', 'long4', 0x1000n, 0xffff923456789abcn, 2, 46]);
    expect(v.memory).toEqual([{ pa: 0x1920n, value: 0x2027n, size: 8 }]);
  });

  it('names the file, the line and the field of a value of the wrong type', () => {
    expect(problem(withField('cpu.cr0_wp', '1'))).toBe('v.jsonl:7: cpu.cr0_wp: expected 0 or 1, got the string "1"');
    expect(problem(withField('cr3', 4096))).toBe('v.jsonl:7: cr3: expected a "0x..." hex string, got number 4096');
    expect(problem(withField('expect.fault', 1))).toBe('v.jsonl:7: expect.fault: expected true or false, got number 1');
    expect(problem(withField('memory', [['0x1920', 8231, 8]]))).toBe('v.jsonl:7: memory[0][1]: expected a "0x..." hex string, got number 8231');
  });

  it('names the field of an out-of-range value', () => {
    expect(problem(withField('cpu.maxphyaddr', 53))).toBe('v.jsonl:7: cpu.maxphyaddr: expected an integer in 36..52, got 53');
    expect(problem(withField('cpu.cpl', 2))).toBe('v.jsonl:7: cpu.cpl: expected 0 or 3, got 2');
    expect(problem(withField('cpu.pkru', -1))).toMatch(/^v\.jsonl:7: cpu\.pkru: expected an integer in 0\.\.4294967295/);
    expect(problem(withField('access.write', 2))).toBe('v.jsonl:7: access.write: expected 0 or 1, got 2');
    expect(problem(withField('mode', 'real'))).toMatch(/^v\.jsonl:7: mode: expected one of legacy32, pae, long4, long5/);
    expect(problem(withField('memory', [['0x1924', '0x1', 8]]))).toBe('v.jsonl:7: memory[0][0]: 0x1924 is not 8-byte aligned');
    expect(problem(withField('memory', [['0x1920', '0x100000000', 4]]))).toMatch(/^v\.jsonl:7: memory\[0\]\[1\]: 0x100000000 is out of range/);
    expect(problem(withField('va', '0x10000000000000000'))).toMatch(/^v\.jsonl:7: va: .* out of range/);
    expect(problem({ ...withField('mode', 'legacy32'), va: '0x100000000' })).toMatch(/^v\.jsonl:7: va: .* out of range/);
    expect(problem(withField('expect.error_code', null))).toMatch(/^v\.jsonl:7: expect\.error_code: /);
  });

  it('names a missing field', () => {
    expect(problem(withField('cpu.cr4_smep', undefined))).toBe('v.jsonl:7: cpu.cr4_smep: missing');
    expect(problem(withField('expect.memory_after', undefined))).toBe('v.jsonl:7: expect.memory_after: missing');
    expect(problem(withField('va', undefined))).toBe('v.jsonl:7: va: missing');
  });
});

describe('parseVectorLines', () => {
  it('skips blank lines and reports a line that is not JSON with its number', () => {
    const good = JSON.stringify(GOOD);
    expect(parseVectorLines(`${good}\n\n${good}\n`, 'f.jsonl').map((v) => v.line)).toEqual([1, 3]);
    expect(() => parseVectorLines(`${good}\n{"id": oops}\n`, 'f.jsonl')).toThrow(/^f\.jsonl:2: not a JSON value/);
    expect(() => parseVectorLines(`${good}\n[1, 2]\n`, 'f.jsonl')).toThrow('f.jsonl:2: (vector): expected an object, got an array');
  });
});

describe('loadVectorFile', () => {
  it('names a file that cannot be read', () => {
    expect(() => loadVectorFile('/nonexistent/vectors.jsonl')).toThrow('/nonexistent/vectors.jsonl: cannot read the vector file: no such file');
  });

  it('reads a JSON Lines file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmexit-vectors-'));
    writeFileSync(join(dir, 'a.jsonl'), `${JSON.stringify(GOOD)}\n`);
    expect(loadVectorFile(join(dir, 'a.jsonl')).map((v) => [v.file, v.line])).toEqual([[join(dir, 'a.jsonl'), 1]]);
  });
});
