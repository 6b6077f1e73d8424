import { describe, expect, it, vi } from 'vitest';
import { ACCESS_CASE_FLAGS, accessCaseVector, type AccessCaseFlag } from '../../src/conformance/generate.js';
import { runVectorNative } from '../../src/conformance/runner.js';

/*
 * The model under test, broken on purpose for this file: the walker ignores CR0.WP (a supervisor write to a
 * read-only page then always completes). A generated vector must still expect what the SDM says, so that it
 * catches the broken model; a vector whose expectation is the walker's own outcome cannot fail.
 */
vi.mock('../../src/paging/walker.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../src/paging/walker.js')>();
  return {
    ...real,
    walk: (ctx: Parameters<typeof real.walk>[0], ...rest: unknown[]) => (real.walk as (...a: unknown[]) => number)({ ...ctx, cr0Wp: false }, ...rest),
  };
});

const flags = (names: AccessCaseFlag[]) => names.reduce((a, n) => a + 2 ** ACCESS_CASE_FLAGS.indexOf(n), 0);

describe('accessCaseVector (expectation independent of the walker)', () => {
  it('expects the SDM outcome, not the walker, so a walker that ignores CR0.WP fails the vector', () => {
    // A supervisor write to a read-only 4 KiB page (PTE R/W=0) with CR0.WP=1: #PF P|W = 3 (SDM Vol. 3A §4.6.1).
    const v = accessCaseVector({
      mode: 'long4',
      maxPhyAddr: 46,
      flags: flags(['pte.p', 'pte.a', 'pde.p', 'pde.rw', 'pde.a', 'write', 'cr0.wp']),
    });
    expect(v.expect).toMatchObject({ fault: true, errorCode: 3, pa: null });
    // The broken walker completes the write at 0x2000abc and sets A and D in the PTE at 0x4c48 (PT index 0x189).
    expect(runVectorNative(v).mismatches.map((m) => `${m.field}: ${m.observed}`)).toEqual([
      'expect.fault: false',
      'expect.error_code: null',
      'expect.pa: 0x2000abc',
      'memory_after[0x4c48]: 0x2000061',
    ]);
  });
});
