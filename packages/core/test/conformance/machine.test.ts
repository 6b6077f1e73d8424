import { describe, expect, it } from 'vitest';
import {
  DENSE_VECTOR_MEMORY_LIMIT,
  nativeVectorMachineFactory,
  parseVectorLines,
  runVector,
  vectorDenseMemory,
  vectorMemory,
} from '../../src/conformance/index.js';
import { DensePhysicalMemory } from '../../src/memory/dense.js';
import type { PhysicalMemory } from '../../src/memory/physical.js';

// A 32-bit supervisor write through PDE 0x1564 and PTE 0x2e24 (va 0x56789abc): A on both, D on the PTE (SDM Vol. 3A §4.8).
const WRITE = {
  id: 'legacy32.write',
  mode: 'legacy32',
  cpu: {
    cr0_wp: 0,
    cr4_pse: 1,
    cr4_smep: 0,
    cr4_smap: 0,
    cr4_pke: 0,
    efer_nxe: 0,
    eflags_ac: 0,
    cpl: 0,
    pkru: 0,
    maxphyaddr: 36,
  },
  cr3: '0x1000',
  va: '0x56789abc',
  memory: [
    ['0x1564', '0x2003', 4],
    ['0x2e24', '0x2000003', 4],
  ],
  access: { write: 1, user: 0, fetch: 0 },
  expect: {
    fault: false,
    error_code: null,
    pa: '0x2000abc',
    memory_after: [
      ['0x1564', '0x2023', 4],
      ['0x2e24', '0x2000063', 4],
    ],
  },
};
const one = (v: object) => parseVectorLines(JSON.stringify(v), 'm.jsonl')[0]!;

describe('vectorDenseMemory', () => {
  it("holds the vector's entries in one buffer from 0 up to the highest entry, rounded up to 4 KiB", () => {
    const mem = vectorDenseMemory(one(WRITE));
    expect(mem).toBeInstanceOf(DensePhysicalMemory);
    expect([mem.size, mem.read32(0x1564), mem.read32(0x2e24), mem.read32(0x2e28)]).toEqual([0x3000, 0x2003, 0x2000003, 0]);
  });

  it('refuses, naming the vector, an entry beyond DENSE_VECTOR_MEMORY_LIMIT', () => {
    const far = {
      ...WRITE,
      memory: [['0x40000000', '0x0', 8]],
      expect: { ...WRITE.expect, memory_after: [['0x40000000', '0x0', 8]] },
    };
    expect(DENSE_VECTOR_MEMORY_LIMIT).toBeLessThan(0x40000000);
    expect(() => vectorDenseMemory(one(far))).toThrow(/^vector legacy32\.write \(m\.jsonl:1\): memory up to 0x40000008 does not fit/);
  });
});

describe('nativeVectorMachineFactory', () => {
  it('walks the memory the given function makes, and reads the entries back from it', () => {
    const made: PhysicalMemory[] = [];
    for (const memory of [vectorMemory, vectorDenseMemory]) {
      const r = runVector(
        one(WRITE),
        nativeVectorMachineFactory((v) => {
          const m = memory(v);
          made.push(m);
          return m;
        }),
      );
      expect(r.mismatches).toEqual([]);
    }
    expect(made.map((m) => [m.constructor.name, m.read32(0x2e24)])).toEqual([
      ['SparsePhysicalMemory', 0x2000063],
      ['DensePhysicalMemory', 0x2000063],
    ]);
  });
});
