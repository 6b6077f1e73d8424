import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PAGE_SIZE, pageNumber } from '../../src/index.js';

/*
 * pageNumber is the hot paths' page (frame) number of an address, computed without Math.floor and without a true
 * division. Property: it is Math.floor(a / 4096) for every integer a with |a| < 2^53, the signed-canonical linear
 * addresses (negative above the canonical hole) and every physical address among them.
 */
describe('pageNumber (properties)', () => {
  it('equals Math.floor(a / PAGE_SIZE) for every safe integer', () => {
    fc.assert(
      fc.property(fc.maxSafeInteger(), (a) => {
        expect(pageNumber(a)).toBe(Math.floor(a / PAGE_SIZE));
      }),
      { numRuns: 20_000 },
    );
  });

  it('is exact at page boundaries, at the 32-bit seams and at the ends of the safe range', () => {
    const edges = [0, 1, 4095, 4096, 4097, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 4095, 2 ** 47, 2 ** 52 - 1, 2 ** 53 - 1];
    for (const e of edges) {
      for (const a of [e, -e]) expect(pageNumber(a)).toBe(Math.floor(a / PAGE_SIZE));
    }
    expect(pageNumber(-1)).toBe(-1); // the last page below 0: the top of a signed-canonical address space
    expect(pageNumber(-0x800000000000)).toBe(-0x800000000000 / 4096); // the lowest kernel half address
  });
});
