import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CR0_PG, CR0_WP, CR4_PAE, EFER_LME, Machine, PT_DIRTY } from '../../src/index.js';
import { TestTables } from './tables.js';

/** Linear 0x400000.. maps guest-physical 0x200000.. (4 pages, writable, dirty). */
function machine() {
  const m = new Machine({ memoryBytes: 4 * 1024 * 1024 });
  const t = new TestTables(m.memory, 'long4');
  const v = m.vcpus[0]!;
  v.writeEfer(EFER_LME);
  v.movToCr4(CR4_PAE);
  v.movToCr3(t.root);
  v.movToCr0(CR0_PG | CR0_WP | 1);
  for (let i = 0; i < 4; i++) t.map(0x400000 + i * 4096, 0x200000 + i * 4096, 0x3 | PT_DIRTY);
  return { m, v };
}

describe('Vcpu.repMovs: element by element, ascending (SDM Vol. 2B MOVS, REP)', () => {
  it('replicates the first element when the destination starts one element into the source', () => {
    const { m, v } = machine();
    for (let i = 0; i < 8; i++) m.memory.write32(0x200000 + 4 * i, i + 1);
    v.repMovs(0x400004, 0x400000, 4, 4);
    const got = Array.from({ length: 6 }, (_, i) => m.memory.read32(0x200000 + 4 * i));
    expect(got).toEqual([1, 1, 1, 1, 1, 6]);
  });

  it('matches a sequential element copy for any overlap, size and page crossing (property)', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(1, 2, 4, 8),
        fc.integer({ min: 0, max: 2 * 4096 }),
        fc.integer({ min: 0, max: 2 * 4096 }),
        fc.integer({ min: 1, max: 600 }),
        fc.integer(),
        (size, srcOff, dstOff, count, seed) => {
          const src = srcOff - (srcOff % size);
          const dst = dstOff - (dstOff % size);
          const { m, v } = machine();
          const ref = new Uint8Array(4 * 4096);
          let x = seed | 1;
          for (let i = 0; i < ref.length; i++) {
            x = (x * 1103515245 + 12345) | 0;
            ref[i] = (x >>> 16) & 0xff;
          }
          for (let a = 0; a < ref.length; a += 4) m.memory.write32(0x200000 + a, ref[a]! | (ref[a + 1]! << 8) | (ref[a + 2]! << 16) | (ref[a + 3]! << 24));
          const n = Math.min(count, Math.floor((ref.length - Math.max(src, dst)) / size));
          for (let k = 0; k < n; k++) for (let b = 0; b < size; b++) ref[dst + k * size + b] = ref[src + k * size + b]!;
          v.repMovs(0x400000 + dst, 0x400000 + src, n, size);
          for (let a = 0; a < ref.length; a += 4) {
            const want = (ref[a]! | (ref[a + 1]! << 8) | (ref[a + 2]! << 16) | (ref[a + 3]! << 24)) >>> 0;
            if (m.memory.read32(0x200000 + a) !== want) return false;
          }
          return true;
        },
      ),
      { numRuns: 200 },
    );
  });
});
