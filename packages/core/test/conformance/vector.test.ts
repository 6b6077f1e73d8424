import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MODE_PAE } from '../../src/arch/modes.js';
import { loadVectorFile, parseVectorLines, validateVector, VectorError } from '../../src/conformance/index.js';
import { SparsePhysicalMemory } from '../../src/memory/sparse.js';
import { createPagingContext, loadPdptes } from '../../src/paging/walker.js';

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

  it('names a hex string that is not lowercase and unpadded (FORMAT.md), with the spelling it wants', () => {
    expect(problem(withField('cr3', '0x01000'))).toBe(
      'v.jsonl:7: cr3: hex strings are lowercase and unpadded (FORMAT.md): expected "0x1000", got the string "0x01000"',
    );
    expect(problem(withField('va', '0xFFFF923456789ABC'))).toMatch(
      /^v\.jsonl:7: va: hex strings are lowercase and unpadded \(FORMAT\.md\): expected "0xffff923456789abc"/,
    );
    expect(problem(withField('memory', [['0x1920', '0x00', 8]]))).toMatch(
      /^v\.jsonl:7: memory\[0\]\[1\]: hex strings .* expected "0x0", got the string "0x00"$/,
    );
    expect(problem(withField('cr3', '0X1000'))).toMatch(/^v\.jsonl:7: cr3: hex strings .* expected "0x1000"/);
    expect(problem(withField('cr3', '0x'))).toBe('v.jsonl:7: cr3: expected a "0x..." hex string, got the string "0x"');
    expect(validateVector(withField('memory', [['0x1920', '0x0', 8]]), 'v.jsonl', 7).memory[0]!.value).toBe(0n); // "0x0" is the spelling of zero
  });

  it('accepts only the error-code bits the format defines: 0..63 (P, W/R, U/S, RSVD, I/D, PK; SDM Vol. 3A §4.7)', () => {
    expect(validateVector(withField('expect.error_code', 63), 'v.jsonl', 7).expect.errorCode).toBe(63);
    expect(problem(withField('expect.error_code', 64))).toBe(
      'v.jsonl:7: expect.error_code: expected an error code in 0..63 (P=1 W=2 U=4 RSVD=8 I/D=16 PK=32), got number 64',
    );
    expect(problem(withField('expect.error_code', 0x8000))).toMatch(/^v\.jsonl:7: expect\.error_code: expected an error code in 0\.\.63 .* got number 32768$/); // SGX: no state for it
    expect(problem(withField('expect.error_code', -1))).toMatch(/^v\.jsonl:7: expect\.error_code: .* got number -1$/);
    expect(problem(withField('expect.error_code', 2.5))).toMatch(/^v\.jsonl:7: expect\.error_code: .* got number 2\.5$/);
    expect(problem(withField('expect.error_code', '2'))).toMatch(/^v\.jsonl:7: expect\.error_code: .* got the string "2"$/);
    const pre = {
      ...withField('expect.error_code', 2),
      pre_access: { write: 0, user: 0, fetch: 0 },
      pre_expect: { fault: true, error_code: 4294967295, pa: null },
    };
    expect(problem(pre)).toMatch(/^v\.jsonl:7: pre_expect\.error_code: expected an error code in 0\.\.63/);
  });

  describe('memory_after lists the same entries as memory (FORMAT.md)', () => {
    const two = {
      ...GOOD,
      memory: [
        ['0x1920', '0x2027', 8],
        ['0x2688', '0x3007', 8],
      ],
      expect: {
        ...GOOD.expect,
        memory_after: [
          ['0x1920', '0x2027', 8],
          ['0x2688', '0x3007', 8],
        ],
      },
    };
    const after = (list: unknown[]) => ({ ...two, expect: { ...two.expect, memory_after: list } });

    it('accepts the same addresses and sizes in another order, with other values', () => {
      expect(
        validateVector(
          after([
            ['0x2688', '0x3027', 8],
            ['0x1920', '0x2027', 8],
          ]),
          'v.jsonl',
          7,
        ).expect.memoryAfter.map((e) => e.pa),
      ).toEqual([0x2688n, 0x1920n]);
    });

    it('rejects an empty or shortened list, naming what is missing', () => {
      expect(problem(after([]))).toBe(
        'v.jsonl:7: expect.memory_after: lists 0 entries, memory lists 2: missing 0x1920, 0x2688 (memory_after lists the same entries as memory)',
      );
      expect(problem(after([['0x1920', '0x2027', 8]]))).toBe(
        'v.jsonl:7: expect.memory_after: lists 1 entries, memory lists 2: missing 0x2688 (memory_after lists the same entries as memory)',
      );
    });

    it('names the first ten missing entries and counts the rest (a vector of thousands gets one short line)', () => {
      const many = Array.from({ length: 25 }, (_, i) => [`0x${(0x1000 + i * 8).toString(16)}`, '0x0', 8]);
      const v = { ...two, memory: many, expect: { ...two.expect, memory_after: [] } };
      const shown = many
        .slice(0, 10)
        .map((e) => e[0])
        .join(', ');
      expect(problem(v)).toBe(
        `v.jsonl:7: expect.memory_after: lists 0 entries, memory lists 25: missing ${shown} and 15 more (memory_after lists the same entries as memory)`,
      );
    });

    it('rejects a changed address, a changed size and an extra entry', () => {
      expect(
        problem(
          after([
            ['0x1920', '0x2027', 8],
            ['0x2690', '0x3007', 8],
          ]),
        ),
      ).toBe('v.jsonl:7: expect.memory_after[1][0]: 0x2690 is not an entry of memory (memory_after lists the same entries as memory)');
      expect(
        problem(
          after([
            ['0x1920', '0x2027', 8],
            ['0x2688', '0x3007', 4],
          ]),
        ),
      ).toBe('v.jsonl:7: expect.memory_after[1][2]: the entry at 0x2688 has size 8 in memory, not 4');
      expect(
        problem(
          after([
            ['0x1920', '0x2027', 8],
            ['0x2688', '0x3007', 8],
            ['0x3000', '0x0', 8],
          ]),
        ),
      ).toMatch(/^v\.jsonl:7: expect\.memory_after\[2\]\[0\]: 0x3000 is not an entry of memory/);
    });

    it('takes memory_after_dontcare masks only for entries of memory, within their size', () => {
      const dontcare = (list: unknown[]) => ({ ...two, expect: { ...two.expect, memory_after_dontcare: list } });
      expect(validateVector(dontcare([['0x1920', '0x20']]), 'v.jsonl', 7).expect.memoryAfterDontCare).toEqual([{ pa: 0x1920n, mask: 0x20n }]);
      expect(problem(dontcare([['0x1928', '0x20']]))).toBe('v.jsonl:7: expect.memory_after_dontcare[0][0]: 0x1928 is not an entry of memory');
      const small = {
        ...GOOD,
        memory: [['0x1920', '0x27', 4]],
        expect: { ...GOOD.expect, memory_after: [['0x1920', '0x27', 4]], memory_after_dontcare: [['0x1920', '0x100000000']] },
      };
      expect(problem(small)).toMatch(
        /^v\.jsonl:7: expect\.memory_after_dontcare\[0\]\[1\]: 0x100000000 is out of range \(must be below 2\^32 for a 4-byte entry\)$/,
      );
    });

    it('rejects an entry listed twice, or overlapping another', () => {
      expect(
        problem(
          after([
            ['0x1920', '0x2027', 8],
            ['0x1920', '0x2027', 8],
          ]),
        ),
      ).toBe('v.jsonl:7: expect.memory_after[1][0]: 0x1920 overlaps expect.memory_after[0] (each byte of memory is listed once)');
      expect(
        problem(
          withField('memory', [
            ['0x1920', '0x2027', 8],
            ['0x1924', '0x0', 4],
          ]),
        ),
      ).toBe('v.jsonl:7: memory[1][0]: 0x1924 overlaps memory[0] (each byte of memory is listed once)');
    });
  });

  describe('PAE PDPTEs with reserved bits (SDM Vol. 3A §4.4.1: #GP at the CR3 load, which a vector cannot expect)', () => {
    const PAE = {
      id: 'pae.pdpte',
      mode: 'pae',
      cpu: { ...GOOD.cpu, maxphyaddr: 36 },
      cr3: '0x1000',
      pdptes: ['0x0', '0x2001', '0x0', '0x0'],
      memory: [['0x1008', '0x2001', 8]],
      va: '0x56789abc',
      access: { write: 0, user: 0, fetch: 0 },
      expect: { fault: true, error_code: 0, pa: null, memory_after: [['0x1008', '0x2001', 8]] },
    };

    it('rejects a present PDPTE register with bits 2:1, 8:5 or 63:MAXPHYADDR set, naming the register and the rule', () => {
      expect(problem({ ...PAE, pdptes: ['0x0', '0x2003', '0x0', '0x0'] })).toBe(
        'v.jsonl:7: pdptes[1]: PDPTE 1 = 0x2003 is present with reserved bits 0x2 set (bits 2:1, 8:5, 63:MAXPHYADDR): ' +
          'loading it at CR3 is a #GP, not a #PF (SDM Vol. 3A §4.4.1, Table 4-8), which a vector cannot expect',
      );
      expect(problem({ ...PAE, pdptes: ['0x0', '0x2001', '0x0', '0x1000000001'] })).toMatch(
        /^v\.jsonl:7: pdptes\[3\]: PDPTE 3 = 0x1000000001 is present with reserved bits 0x1000000000/,
      );
      expect(problem({ ...PAE, pdptes: ['0x8000000000000001', '0x2001', '0x0', '0x0'] })).toMatch(
        /^v\.jsonl:7: pdptes\[0\]: .* reserved bits 0x8000000000000000 /,
      ); // no XD in a PDPTE
    });

    it('accepts reserved bits in a not-present PDPTE, and address bits below MAXPHYADDR', () => {
      expect(validateVector({ ...PAE, pdptes: ['0x0', '0xfff000000000fffe', '0x0', '0x0'] }, 'v.jsonl', 7).pdptes![1]).toBe(0xfff000000000fffen);
      expect(
        validateVector({ ...PAE, cpu: { ...PAE.cpu, maxphyaddr: 52 }, pdptes: ['0x0', '0xfffffffffe019', '0x0', '0x0'] }, 'v.jsonl', 7).pdptes,
      ).toHaveLength(4);
    });

    it('without pdptes, checks the PDPTEs memory holds at CR3[31:5], naming the memory entry', () => {
      const { pdptes: _omit, ...fromMemory } = PAE;
      expect(validateVector(fromMemory, 'v.jsonl', 7).pdptes).toBeNull();
      const bad = {
        ...fromMemory,
        cr3: '0x1018',
        memory: [
          ['0x1000', '0x5001', 8],
          ['0x1008', '0x2021', 8],
        ],
      }; // PDPTE 1: bit 5
      bad.expect = { ...bad.expect, memory_after: bad.memory };
      expect(problem(bad)).toBe(
        'v.jsonl:7: memory[1]: without pdptes, the PDPTE registers are loaded from memory at CR3: PDPTE 1 = 0x2021 is present with reserved bits 0x20 set ' +
          '(bits 2:1, 8:5, 63:MAXPHYADDR): loading it at CR3 is a #GP, not a #PF (SDM Vol. 3A §4.4.1, Table 4-8), which a vector cannot expect',
      );
      const halves = {
        ...fromMemory,
        memory: [
          ['0x1010', '0x3001', 4],
          ['0x1014', '0x10', 4],
        ],
      }; // PDPTE 2 = 0x10_0000_3001: bit 36
      halves.expect = { ...halves.expect, memory_after: halves.memory };
      expect(problem(halves)).toMatch(/^v\.jsonl:7: memory\[1\]: .* PDPTE 2 = 0x1000003001 is present with reserved bits 0x1000000000 /);
    });

    it("rejects exactly the PDPTEs that make the walker's loadPdptes fail (#GP)", () => {
      const value = fc.oneof(
        fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        fc.bigInt({ min: 0n, max: 0xfffn }).map((lo) => 0x5000n | lo),
      );
      fc.assert(
        fc.property(value, fc.constantFrom(36, 40, 46, 52), (v, m) => {
          const mem = new SparsePhysicalMemory();
          mem.set64(0x1008, Number(v & 0xffffffffn), Number(v >> 32n));
          const loads = loadPdptes(createPagingContext({ mode: MODE_PAE, cr3: 0x1000, maxPhyAddr: m }), mem);
          const json = { ...PAE, cpu: { ...PAE.cpu, maxphyaddr: m }, pdptes: ['0x0', `0x${v.toString(16)}`, '0x0', '0x0'] };
          let accepted = true;
          try {
            validateVector(json, 'v.jsonl', 7);
          } catch (e) {
            expect((e as VectorError).field).toBe('pdptes[1]');
            accepted = false;
          }
          expect(accepted).toBe(loads);
        }),
        { numRuns: 400 },
      );
    });
  });

  // FORMAT.md: `user: 1` is a user-mode access (CPL 3), otherwise an explicit supervisor access, which runs at
  // CPL 0..2. cpu.cpl is the CPL of `access` (a pre_access may differ: access.c's twice read runs at CPL 0);
  // a cpl that contradicts it would be read and never used, so the vector could mean an implicit supervisor
  // access at CPL 3 (SMAP regardless of EFLAGS.AC, SDM Vol. 3A §4.6.1) and silently run as an explicit one.
  it('rejects a cpu.cpl that is not the CPL of the access', () => {
    expect(problem(withField('cpu.cpl', 3))).toBe(
      'v.jsonl:7: cpu.cpl: 3 is not the CPL of access (user: 0 is an explicit supervisor access, at CPL 0; FORMAT.md)',
    );
    const user = withField('access', { write: 1, user: 1, fetch: 0 });
    expect(problem(user)).toBe('v.jsonl:7: cpu.cpl: 0 is not the CPL of access (user: 1 is a user-mode access, at CPL 3; FORMAT.md)');
    (user['cpu'] as Record<string, number>)['cpl'] = 3;
    expect(() => validateVector({ ...user, pre_access: { write: 0, user: 0, fetch: 0 } }, 'v.jsonl', 7)).not.toThrow();
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

  it('rejects a file with no vector: empty, or blank lines only', () => {
    for (const text of ['', '\n', '  \n\n\t\n']) {
      expect(() => parseVectorLines(text, 'f.jsonl')).toThrow(new VectorError('f.jsonl', 0, '', 'no vectors (the file is empty or has only blank lines)'));
    }
    expect(() => parseVectorLines('', 'f.jsonl')).toThrow(/^f\.jsonl: no vectors/);
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
