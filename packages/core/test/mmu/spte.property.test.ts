import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ACC_EXEC_MASK,
  ACC_USER_MASK,
  GFNS_PER_ENTRY,
  makeLeafSpte,
  spanStart,
  SPTE_FORMAT_EPT,
  SPTE_FORMAT_NPT,
  SPTE_FORMAT_SHADOW,
  SpteHalves,
  sptePa,
} from '../../src/mmu/index.js';

/*
 * makeLeafSpte puts the gfn in the address bits by shifts below 2^32 and by division above: either way the spte
 * names the gfn's frame, and the other bits depend only on the rights, not on the gfn.
 */
describe('makeLeafSpte (properties)', () => {
  it('names the frame of every gfn below 2^40, in every format, with the same flag bits', () => {
    const formats = [SPTE_FORMAT_SHADOW, SPTE_FORMAT_EPT, SPTE_FORMAT_NPT];
    fc.assert(
      fc.property(
        fc.oneof(
          fc.integer({ min: 0, max: 2 ** 32 - 1 }),
          fc.integer({ min: 2 ** 32 - 2, max: 2 ** 40 - 1 }),
          fc.constantFrom(0, 0xfffff, 0x100000, 2 ** 31, 2 ** 32 - 1, 2 ** 32),
        ),
        fc.integer({ min: 0, max: 7 }),
        fc.boolean(),
        fc.boolean(),
        fc.integer({ min: 0, max: 2 }),
        (gfn, access, hostWritable, writable, f) => {
          const format = formats[f]!;
          const out = new SpteHalves();
          makeLeafSpte(out, gfn, access & (ACC_USER_MASK | ACC_EXEC_MASK | 2), hostWritable, writable, 0, format);
          expect(sptePa(out.lo, out.hi)).toBe(gfn * 4096);
          const ref = new SpteHalves();
          makeLeafSpte(ref, 1, access & (ACC_USER_MASK | ACC_EXEC_MASK | 2), hostWritable, writable, 0, format);
          expect(out.lo & 0xfff).toBe(ref.lo & 0xfff);
          expect(out.hi & ~0xfffff).toBe(ref.hi & ~0xfffff);
          expect(out.lo >>> 0).toBe(out.lo);
          expect(out.hi >>> 0).toBe(out.hi);
        },
      ),
      { seed: 0x5be7, numRuns: 5000 },
    );
  });
});

describe('spanStart (properties)', () => {
  it('is Math.floor(gfn / span) * span for every gfn below 2^53 and every span of GFNS_PER_ENTRY', () => {
    fc.assert(
      fc.property(fc.oneof(fc.integer({ min: 0, max: 2 ** 32 }), fc.maxSafeNat()), fc.integer({ min: 1, max: GFNS_PER_ENTRY.length - 1 }), (gfn, level) => {
        const span = GFNS_PER_ENTRY[level]!;
        expect(spanStart(gfn, span)).toBe(Math.floor(gfn / span) * span);
      }),
      { seed: 0x5a4, numRuns: 5000 },
    );
  });
});
