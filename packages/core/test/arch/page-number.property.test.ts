import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PAGE_SIZE, pageNumber } from '../../src/index.js';

/*
 * pageNumber is the hot paths' page (frame) number of an address, computed without Math.floor and without a true
 * division. Property: it is Math.floor(a / 4096) for every integer a with |a| < 2^53, the signed-canonical linear
 * addresses (negative above the canonical hole) and every physical address among them. Below 2^32 it takes an
 * integer path of its own (a >>> 12), checked over that range by itself; there -0 gives 0 (no address is -0).
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

  it('equals Math.floor(a / PAGE_SIZE) for every integer from 0 to 2^32 - 1 (the integer path)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 32 - 1 }), (a) => {
        expect(pageNumber(a)).toBe(Math.floor(a / PAGE_SIZE));
      }),
      { numRuns: 20_000 },
    );
  });

  it('is exact at page boundaries, at the 32-bit seams and at the ends of the safe range', () => {
    const edges = [0, 1, 4095, 4096, 4097, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 4095, 2 ** 47, 2 ** 52 - 1, 2 ** 53 - 1];
    for (const e of edges) {
      // + 0: -0 (the negation of the edge 0) gives 0 where Math.floor gives -0, the same page.
      for (const a of [e, -e]) expect(pageNumber(a)).toBe(Math.floor(a / PAGE_SIZE) + 0);
    }
    expect(pageNumber(-1)).toBe(-1); // the last page below 0: the top of a signed-canonical address space
    expect(pageNumber(-0x800000000000)).toBe(-0x800000000000 / 4096); // the lowest kernel half address
  });
});
