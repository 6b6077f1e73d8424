import { describe, expect, it } from 'vitest';
import {
  createNativeVectorMachine,
  nativeVectorMachineFactory,
  observeVector,
  parseVectorLines,
  runVector,
  runVectorNative,
  vectorDenseMemory,
} from '../../src/conformance/index.js';

/*
 * Vectors for cases the sample files lack (5-level paging, 1 GiB pages, protection keys, MAXPHYADDR 52, CR4.PSE=0
 * in 32-bit paging, a non-canonical address), written in the vector format with the expected outcome derived
 * by hand from the SDM (the derivation is in each comment), and run through the same parser and runner as the
 * sample files.
 */

const CPU = { cr0_wp: 0, cr4_pse: 1, cr4_smep: 0, cr4_smap: 0, cr4_pke: 0, efer_nxe: 0, eflags_ac: 0, cpl: 0, pkru: 0, maxphyaddr: 46 };
const READ = { write: 0, user: 0, fetch: 0 };

function vector(v: Record<string, unknown>): string {
  return JSON.stringify(v);
}

// 4-level, va 0xffff923456789abc: PML4E 0x1920, PDPTE 0x2688, PDE 0x3598, PTE 0x4c48 (indices 0x124, 0xd1, 0xb3, 0x189).
// 5-level, va 0x123456789abcde: PML5E 0x1090, PML4E 0x2340, PDPTE 0x3ac8, PDE 0x4e20, PTE 0x5d58 (0x12, 0x68, 0x159, 0x1c4, 0x1ab).
const EXTRA = [
  // §4.5 with CR4.LA57: five levels; a user write sets A everywhere and D in the PTE (§4.8).
  vector({
    id: 'long5.4k.user-write',
    mode: 'long5',
    cpu: { ...CPU, cpl: 3, maxphyaddr: 52 },
    cr3: '0x1000',
    va: '0x123456789abcde',
    memory: [
      ['0x1090', '0x2007', 8],
      ['0x2340', '0x3007', 8],
      ['0x3ac8', '0x4007', 8],
      ['0x4e20', '0x5007', 8],
      ['0x5d58', '0x7000007', 8],
    ],
    access: { write: 1, user: 1, fetch: 0 },
    expect: {
      fault: false,
      error_code: null,
      pa: '0x7000cde',
      memory_after: [
        ['0x1090', '0x2027', 8],
        ['0x2340', '0x3027', 8],
        ['0x3ac8', '0x4027', 8],
        ['0x4e20', '0x5027', 8],
        ['0x5d58', '0x7000067', 8],
      ],
    },
  }),
  // §4.5 with LA57: PS in a PML5E is reserved: #PF P|RSVD (9), nothing written.
  vector({
    id: 'long5.pml5e.ps',
    mode: 'long5',
    cpu: { ...CPU, maxphyaddr: 52 },
    cr3: '0x1000',
    va: '0x123456789abcde',
    memory: [['0x1090', '0x20a3', 8]],
    access: READ,
    expect: { fault: true, error_code: 9, pa: null, memory_after: [['0x1090', '0x20a3', 8]] },
  }),
  // Table 4-15/4-16: a PDPTE with PS maps 1 GiB; MAXPHYADDR 52 makes bit 51 an address bit (pa 2^51 + 0x40000000 + 0x16789abc).
  vector({
    id: 'long4.1g.m52.bit51',
    mode: 'long4',
    cpu: { ...CPU, cpl: 3, maxphyaddr: 52 },
    cr3: '0x1000',
    va: '0xffff923456789abc',
    memory: [
      ['0x1920', '0x2007', 8],
      ['0x2688', '0x80000400000a5', 8],
    ],
    access: { write: 0, user: 1, fetch: 0 },
    expect: {
      fault: false,
      error_code: null,
      pa: '0x8000056789abc',
      memory_after: [
        ['0x1920', '0x2027', 8],
        ['0x2688', '0x80000400000a5', 8],
      ],
    },
  }),
  // Table 4-16: bits 29:13 of a 1 GiB PDPTE are reserved: a user read gets P|U|RSVD (13); the PML4E A bit is open.
  vector({
    id: 'long4.1g.bit13',
    mode: 'long4',
    cpu: { ...CPU, cpl: 3 },
    cr3: '0x1000',
    va: '0xffff923456789abc',
    memory: [
      ['0x1920', '0x2007', 8],
      ['0x2688', '0x400020a5', 8],
    ],
    access: { write: 0, user: 1, fetch: 0 },
    expect: {
      fault: true,
      error_code: 13,
      pa: null,
      memory_after: [
        ['0x1920', '0x2007', 8],
        ['0x2688', '0x400020a5', 8],
      ],
      memory_after_dontcare: [['0x1920', '0x20']],
    },
  }),
  // §4.6.2: a 2 MiB user page with key 3 (bits 62:59 = 0011: 0x18000000 in the high half); PKRU.WD3 (bit 7)
  // forbids a user write: P|W|U|PK = 0x27.
  vector({
    id: 'long4.2m.pke.wd.user-write',
    mode: 'long4',
    cpu: { ...CPU, cpl: 3, cr4_pke: 1, pkru: 0x80 },
    cr3: '0x1000',
    va: '0xffff923456789abc',
    memory: [
      ['0x1920', '0x2007', 8],
      ['0x2688', '0x3007', 8],
      ['0x3598', '0x18000000020000a7', 8],
    ],
    access: { write: 1, user: 1, fetch: 0 },
    expect: {
      fault: true,
      error_code: 39,
      pa: null,
      memory_after: [
        ['0x1920', '0x2007', 8],
        ['0x2688', '0x3007', 8],
        ['0x3598', '0x18000000020000a7', 8],
      ],
      memory_after_dontcare: [
        ['0x1920', '0x20'],
        ['0x2688', '0x20'],
      ],
    },
  }),
  // §4.6.2: the same page written by the supervisor with CR0.WP=0: WD does not apply, the write sets A and D.
  vector({
    id: 'long4.2m.pke.wd.sup-write.wp0',
    mode: 'long4',
    cpu: { ...CPU, cr4_pke: 1, pkru: 0x80 },
    cr3: '0x1000',
    va: '0xffff923456789abc',
    memory: [
      ['0x1920', '0x2007', 8],
      ['0x2688', '0x3007', 8],
      ['0x3598', '0x1800000002000087', 8],
    ],
    access: { write: 1, user: 0, fetch: 0 },
    expect: {
      fault: false,
      error_code: null,
      pa: '0x2189abc',
      memory_after: [
        ['0x1920', '0x2027', 8],
        ['0x2688', '0x3027', 8],
        ['0x3598', '0x18000000020000e7', 8],
      ],
    },
  }),
  // §4.6.2: PKRU.AD3 (bit 6) stops a supervisor read of the user page too (P|PK = 0x21), but not a fetch.
  vector({
    id: 'long4.2m.pke.ad.sup-read',
    mode: 'long4',
    cpu: { ...CPU, cr4_pke: 1, pkru: 0x40 },
    cr3: '0x1000',
    va: '0xffff923456789abc',
    memory: [
      ['0x1920', '0x2007', 8],
      ['0x2688', '0x3007', 8],
      ['0x3598', '0x18000000020000a7', 8],
    ],
    access: READ,
    expect: {
      fault: true,
      error_code: 33,
      pa: null,
      memory_after: [
        ['0x1920', '0x2007', 8],
        ['0x2688', '0x3007', 8],
        ['0x3598', '0x18000000020000a7', 8],
      ],
      memory_after_dontcare: [
        ['0x1920', '0x20'],
        ['0x2688', '0x20'],
      ],
    },
  }),
  // §4.4.2 Table 4-11: PAE with MAXPHYADDR 52: PTE bit 51 is an address bit (pa 2^51 + 0x2000abc).
  vector({
    id: 'pae.m52.pte.bit51',
    mode: 'pae',
    cpu: { ...CPU, maxphyaddr: 52 },
    cr3: '0x1000',
    pdptes: ['0x0', '0x2001', '0x0', '0x0'],
    va: '0x56789abc',
    memory: [
      ['0x1008', '0x2001', 8],
      ['0x2598', '0x3003', 8],
      ['0x3c48', '0x8000002000003', 8],
    ],
    access: READ,
    expect: {
      fault: false,
      error_code: null,
      pa: '0x8000002000abc',
      memory_after: [
        ['0x1008', '0x2001', 8],
        ['0x2598', '0x3023', 8],
        ['0x3c48', '0x8000002000023', 8],
      ],
    },
  }),
  // §4.4.2: ... and bit 52 is reserved in PAE paging (62:M), unlike 4-level paging: P|RSVD.
  vector({
    id: 'pae.m52.pte.bit52',
    mode: 'pae',
    cpu: { ...CPU, maxphyaddr: 52 },
    cr3: '0x1000',
    pdptes: ['0x0', '0x2001', '0x0', '0x0'],
    va: '0x56789abc',
    memory: [
      ['0x1008', '0x2001', 8],
      ['0x2598', '0x3003', 8],
      ['0x3c48', '0x10000002000003', 8],
    ],
    access: READ,
    expect: {
      fault: true,
      error_code: 9,
      pa: null,
      memory_after: [
        ['0x1008', '0x2001', 8],
        ['0x2598', '0x3003', 8],
        ['0x3c48', '0x10000002000003', 8],
      ],
      memory_after_dontcare: [['0x2598', '0x20']],
    },
  }),
  // §4.3 Table 4-5: with CR4.PSE=0 the PS bit of a PDE is ignored; the PDE points to a page table at 0x2000.
  vector({
    id: 'legacy32.pse0.pde.ps-ignored',
    mode: 'legacy32',
    cpu: { ...CPU, cr4_pse: 0, maxphyaddr: 36 },
    cr3: '0x1000',
    va: '0x56789abc',
    memory: [
      ['0x1564', '0x2083', 4],
      ['0x2e24', '0x2000003', 4],
    ],
    access: { write: 1, user: 0, fetch: 0 },
    expect: {
      fault: false,
      error_code: null,
      pa: '0x2000abc',
      memory_after: [
        ['0x1564', '0x20a3', 4],
        ['0x2e24', '0x2000063', 4],
      ],
    },
  }),
  // §4.3 Table 4-4 (PSE-36): MAXPHYADDR 52 gives M = 40; PDE bits 20:13 = 0xff are PA bits 39:32.
  vector({
    id: 'legacy32.pse36.m52',
    mode: 'legacy32',
    cpu: { ...CPU, maxphyaddr: 52 },
    cr3: '0x1000',
    va: '0x56789abc',
    memory: [['0x1564', '0x21fe083', 4]],
    access: READ,
    expect: { fault: false, error_code: null, pa: '0xff02389abc', memory_after: [['0x1564', '0x21fe0a3', 4]] },
  }),
].join('\n');

describe('extra vectors (hand-derived)', () => {
  const vectors = parseVectorLines(EXTRA, 'extra.jsonl');

  it('parses all of them', () => {
    expect(vectors.map((v) => v.id)).toHaveLength(11);
  });

  for (const v of vectors) {
    it(`${v.id} passes natively`, () => {
      expect(runVectorNative(v).mismatches).toEqual([]);
      expect(runVector(v, nativeVectorMachineFactory(vectorDenseMemory)).mismatches).toEqual([]); // and over dense memory
    });
  }

  it('reports a non-canonical 4-level address as #GP, not #PF (SDM Vol. 1 §3.3.7.1), which no #PF expectation matches', () => {
    const [v] = parseVectorLines(
      vector({
        id: 'long4.noncanonical',
        mode: 'long4',
        cpu: CPU,
        cr3: '0x1000',
        va: '0x800000000000',
        memory: [],
        access: READ,
        expect: { fault: true, error_code: 0, pa: null, memory_after: [] },
      }),
      'gp.jsonl',
    );
    expect(observeVector(v!, createNativeVectorMachine).main).toEqual({ result: 'gp', errorCode: null, pa: null });
    expect(runVectorNative(v!).mismatches.map((m) => m.field)).toEqual(['expect.fault', 'expect.error_code']);
  });
});
