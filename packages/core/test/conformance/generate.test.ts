import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ACCESS_CASE_FLAG_COUNT,
  ACCESS_CASE_FLAGS,
  accessCaseId,
  accessCaseSpace,
  accessCaseVector,
  accessFlagsLegal,
  canonicalAccessFlags,
  effectiveFlags,
  type AccessCase,
  sweepCase,
  type AccessCaseFlag,
} from '../../src/conformance/generate.js';
import { runVectorNative } from '../../src/conformance/runner.js';
import { validateVector, vectorToJson } from '../../src/conformance/vector.js';

const flags = (names: AccessCaseFlag[]) => names.reduce((a, n) => a + 2 ** ACCESS_CASE_FLAGS.indexOf(n), 0);

describe('accessCaseVector', () => {
  it('builds the protection-key case: natively a WP=0 supervisor write to a user page with PKRU.WD completes', () => {
    const v = accessCaseVector({
      mode: 'long4',
      maxPhyAddr: 46,
      flags: flags(['pte.p', 'pte.rw', 'pte.user', 'pte.a', 'pte.pkey', 'pde.p', 'pde.rw', 'pde.user', 'pde.a', 'pku.wd', 'write', 'cr4.pke']),
    });
    expect(v.expect).toMatchObject({ fault: false, pa: 0x2000abcn });
    // ... and with CR0.WP=1 it is a P|W|PK fault (SDM Vol. 3A §4.6.2).
    const wp = accessCaseVector({
      mode: 'long4',
      maxPhyAddr: 46,
      flags: flags(['pte.p', 'pte.rw', 'pte.user', 'pte.a', 'pte.pkey', 'pde.p', 'pde.rw', 'pde.user', 'pde.a', 'pku.wd', 'write', 'cr4.pke', 'cr0.wp']),
    });
    expect(wp.expect).toMatchObject({ fault: true, errorCode: 0x23 });
  });

  // kvm-unit-tests access.c, ac_test_do_access: with AC_ACCESS_TWICE a supervisor read (`mov (addr), reg`, before
  // the switch to user mode) precedes the access: it fills the TLB (a shadow MMU: a shadow pte) with a
  // supervisor translation that the access itself must not inherit.
  it('makes the first access of a twice case a supervisor read, as access.c does', () => {
    // The page is a supervisor page (PDE U/S=1, PTE U/S=0): the supervisor read completes and sets A in all four
    // levels (§4.8); the user read then faults with P|U = 5 (§4.6.1, §4.7).
    const v = accessCaseVector({
      mode: 'long4',
      maxPhyAddr: 46,
      flags: flags(['pte.p', 'pte.rw', 'pde.p', 'pde.rw', 'pde.user', 'user', 'twice']),
    });
    expect(v.preAccess).toBe(0);
    expect(v.preExpect).toEqual({ fault: false, errorCode: null, pa: 0x2000abcn });
    expect(v.expect).toMatchObject({ fault: true, errorCode: 5, pa: null });
    expect(v.expect.memoryAfter.map((e) => e.value & 0x20n)).toEqual([0x20n, 0x20n, 0x20n, 0x20n]);
    expect(v.cpu.cpl).toBe(3);
  });

  it('maps bit 51 into the address under MAXPHYADDR 52 and makes it a reserved-bit fault below', () => {
    const names: AccessCaseFlag[] = ['pte.p', 'pte.a', 'pte.51', 'pde.p', 'pde.a'];
    expect(accessCaseVector({ mode: 'pae', maxPhyAddr: 52, flags: flags(names) }).expect).toMatchObject({ fault: false, pa: (1n << 51n) + 0x2000abcn });
    expect(accessCaseVector({ mode: 'pae', maxPhyAddr: 46, flags: flags(names) }).expect).toMatchObject({ fault: true, errorCode: 0x9 });
  });

  it('drops the flags a mode has no bits for (a 4-byte entry has no bit 51, NX or key) and a fetch with a write', () => {
    const f = flags(['pte.51', 'pte.nx', 'pte.pkey', 'write', 'fetch']);
    expect(effectiveFlags({ mode: 'legacy32', maxPhyAddr: 36, flags: f })).toBe(flags(['write']));
    expect(accessCaseId({ mode: 'long4', maxPhyAddr: 52, flags: f })).toBe('long4/m52/pte.nx+pte.51+pte.pkey+write');
  });

  it('gives vectors that are valid input and pass natively (fast-check over the sweep)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.nat(1_000_000), (seed, index) => {
        const v = accessCaseVector(sweepCase(seed, index));
        const parsed = validateVector(JSON.parse(JSON.stringify(vectorToJson(v))), 'gen', 1);
        expect(runVectorNative(parsed).passed).toBe(true);
      }),
      { numRuns: 300 },
    );
  });
});

describe('sweepCase', () => {
  it('cycles the four modes and MAXPHYADDR 36/46/52, and regenerates a case from its index', () => {
    const cases = Array.from({ length: 12 }, (_, i) => sweepCase(14, i));
    expect(new Set(cases.map((c) => `${c.mode}/${c.maxPhyAddr}`)).size).toBe(12);
    expect(sweepCase(14, 12345)).toEqual(sweepCase(14, 12345));
    expect(cases.every((c) => c.flags < 2 ** ACCESS_CASE_FLAG_COUNT)).toBe(true);
  });
});

describe('accessCaseSpace', () => {
  // Three strata of the twelve (one per MAXPHYADDR, one per kind of entry: 4-byte, PAE, 5-level); the
  // differential test pins the size of all twelve.
  const strata = [
    { mode: 'legacy32', maxPhyAddr: 46, size: 7030 },
    { mode: 'pae', maxPhyAddr: 52, size: 112_530 },
    { mode: 'long5', maxPhyAddr: 36, size: 129_382 },
  ] as const;

  it.each(strata)('$mode at MAXPHYADDR $maxPhyAddr: $size cases, each legal and canonical, none twice', ({ mode, maxPhyAddr, size }) => {
    const space = accessCaseSpace(mode, maxPhyAddr);
    expect(space.length).toBe(size);
    expect(new Set(space).size).toBe(size);
    const bad = [...space].filter((f) => {
      const c: AccessCase = { mode, maxPhyAddr, flags: f };
      return !accessFlagsLegal(c) || canonicalAccessFlags(c) !== f;
    });
    expect(bad.map((f) => accessCaseId({ mode, maxPhyAddr, flags: f }))).toEqual([]);
  });

  // The space is the whole flag space: any legal combination of the 31 flags names a case of it, and that
  // case behaves natively as the combination does (the cleared flags are ones the architecture ignores).
  it.each(strata)('$mode at MAXPHYADDR $maxPhyAddr: any legal combination is, up to ignored flags, a case of the space', ({ mode, maxPhyAddr }) => {
    const space = new Set(accessCaseSpace(mode, maxPhyAddr));
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** ACCESS_CASE_FLAG_COUNT - 1 }), (flags) => {
        const c: AccessCase = { mode, maxPhyAddr, flags };
        fc.pre(accessFlagsLegal(c));
        const canonical = canonicalAccessFlags(c);
        expect(canonicalAccessFlags({ ...c, flags: canonical })).toBe(canonical);
        expect(space.has(canonical), accessCaseId(c)).toBe(true);
        const a = accessCaseVector(c);
        const b = accessCaseVector({ ...c, flags: canonical });
        expect({ id: a.id, main: b.expect, pre: b.preExpect }).toMatchObject({
          id: a.id,
          main: { fault: a.expect.fault, errorCode: a.expect.errorCode, pa: a.expect.pa },
          pre: a.preExpect,
        });
      }),
      { numRuns: 400, seed: 14 },
    );
  });
});
