import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../src/machine/guest-memory.js';
import { fillElements, storeAt } from '../../src/machine/ram-access.js';

/*
 * fillElements is the bulk of rep stos: where it can, one `fill` of the page's bytes or words instead of one store
 * per element. Property: over random elements (1, 2, 4 or 8 bytes, any offset that keeps them in the page, any
 * value, equal halves or not), it leaves exactly the bytes that one storeAt per element leaves.
 */
describe('fillElements (properties)', () => {
  it('leaves the bytes of one storeAt per element', () => {
    const half = fc.oneof(fc.constant(0), fc.constant(0xffffffff), fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: -(2 ** 31), max: -1 }));
    fc.assert(
      fc.property(
        fc.constantFrom(1, 2, 4, 8),
        fc.integer({ min: 0, max: 4095 }),
        fc.integer({ min: 1, max: 600 }),
        half,
        half,
        fc.boolean(),
        (size, start, want, lo, hiRaw, sameHalves) => {
          const count = Math.max(1, Math.min(want, Math.floor((4096 - start) / size)));
          if (start + count * size > 4096) return; // no element fits this offset
          const hi = sameHalves ? lo : hiRaw;
          const a = new GuestMemory(3 * 4096);
          const b = new GuestMemory(3 * 4096);
          const base = a.gpaToOffset(4096);
          expect(b.gpaToOffset(4096)).toBe(base);
          // Something other than zeros around the elements, so that a fill too long or too short shows.
          a.u8.fill(0x5a, base, base + 4096);
          b.u8.fill(0x5a, base, base + 4096);
          fillElements(a, base + start, count, size, lo, hi);
          for (let k = 0; k < count; k++) storeAt(b, base + start + k * size, size, lo, hi);
          expect(Buffer.compare(a.u8.subarray(base, base + 4096), b.u8.subarray(base, base + 4096))).toBe(0);
        },
      ),
      { numRuns: 3000 },
    );
  });
});
