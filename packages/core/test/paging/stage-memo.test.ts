import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ACC_FETCH, ACC_READ, ACC_USER, ACC_WRITE } from '../../src/arch/constants.js';
import { Machine } from '../../src/machine/machine.js';
import type { PhysicalMemory } from '../../src/memory/physical.js';
import { POOL_BASE, SptePool, SptePoolMemory } from '../../src/mmu/pool.js';
import { EptStage } from '../../src/paging/ept.js';
import { NptStage } from '../../src/paging/npt.js';
import { NESTED_FINAL, NESTED_PDPTE, NESTED_TABLE, WALK_SIDE_EFFECTS, WalkResult, type SecondStage } from '../../src/paging/types.js';

/*
 * The stages keep the outcome of a walk per guest page while the pool's tables are unchanged (StageMemo): a
 * shortcut that must change nothing. Two copies of the same tables, one walked through SptePoolMemory (which
 * counts its writes, so the stage keeps walks) and one through a plain view of another pool (so it walks every
 * time), take the same random program of translations and table writes; every result, every reference count,
 * every flag and every word of the tables must be the same.
 */

/** A view of `mem` without the write count: the stage walks every time. */
class PlainView implements PhysicalMemory {
  constructor(private readonly mem: PhysicalMemory) {}
  read32(pa: number): number {
    return this.mem.read32(pa);
  }
  write32(pa: number, value: number): void {
    this.mem.write32(pa, value);
  }
}

const FRAMES = 8;
/** Tables: PML4 (frame 0) -> PDPT (1) -> PD (2) -> PT (3) for gpas 0..2 MiB, PT (4) for 2..4 MiB. */
function buildTables(pool: SptePool, format: 'ept' | 'npt'): void {
  const nonLeaf = format === 'ept' ? 7 : 7; // EPT R|W|X; NPT P|RW|US
  const hpa = (f: number): number => pool.hpaOf(f);
  pool.set(0 * 512, (hpa(1) % 2 ** 32) + nonLeaf, Math.floor(hpa(1) / 2 ** 32));
  pool.set(1 * 512, (hpa(2) % 2 ** 32) + nonLeaf, Math.floor(hpa(2) / 2 ** 32));
  pool.set(2 * 512, (hpa(3) % 2 ** 32) | nonLeaf, Math.floor(hpa(3) / 2 ** 32));
  pool.set(2 * 512 + 1, (hpa(4) % 2 ** 32) | nonLeaf, Math.floor(hpa(4) / 2 ** 32));
  for (let g = 0; g < 1024; g++) pool.set((3 + (g >> 9)) * 512 + (g & 511), g * 4096 + leafBits(format, 7), 0);
}

/** Leaf bits for rights r (R=1, W=2, X=4 for EPT; for NPT: P, W from r&2, NX unless r&4, U always). */
function leafBits(format: 'ept' | 'npt', r: number): number {
  return format === 'ept' ? (r & 7) | (6 << 3) : 1 | (r & 2) | 4;
}

type Op =
  | { t: 'tr'; page: number; off: number; access: number; kind: number; side: boolean }
  | { t: 'set'; page: number; rights: number; ad: number }
  | { t: 'huge'; on: boolean }
  | { t: 'unmap'; page: number }
  | { t: 'pt2'; on: boolean }
  | { t: 'clearAd' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    arbitrary: fc.record({
      t: fc.constant('tr' as const),
      page: fc.oneof({ arbitrary: fc.integer({ min: 0, max: 7 }), weight: 6 }, fc.integer({ min: 510, max: 514 }), fc.integer({ min: 0, max: 1100 })),
      off: fc.integer({ min: 0, max: 1023 }).map((x) => x * 4),
      access: fc.constantFrom(ACC_READ, ACC_WRITE, ACC_FETCH, ACC_READ | ACC_USER, ACC_WRITE | ACC_USER),
      kind: fc.constantFrom(NESTED_FINAL, NESTED_FINAL, NESTED_TABLE, NESTED_PDPTE),
      side: fc.boolean(),
    }),
    weight: 40,
  },
  {
    arbitrary: fc.record({
      t: fc.constant('set' as const),
      page: fc.integer({ min: 0, max: 1023 }),
      rights: fc.integer({ min: 0, max: 7 }),
      ad: fc.integer({ min: 0, max: 3 }),
    }),
    weight: 2,
  },
  { arbitrary: fc.record({ t: fc.constant('huge' as const), on: fc.boolean() }), weight: 1 },
  // A leaf or the second PT's PDE made zero, and later written again (a write over a zero entry leaves the version).
  { arbitrary: fc.record({ t: fc.constant('unmap' as const), page: fc.integer({ min: 0, max: 1023 }) }), weight: 2 },
  { arbitrary: fc.record({ t: fc.constant('pt2' as const), on: fc.boolean() }), weight: 1 },
  { arbitrary: fc.record({ t: fc.constant('clearAd' as const) }), weight: 1 },
);

function apply(op: Op, pool: SptePool, stage: SecondStage, format: 'ept' | 'npt', out: WalkResult): unknown {
  const aBit = format === 'ept' ? 0x100 : 0x20;
  const dBit = format === 'ept' ? 0x200 : 0x40;
  switch (op.t) {
    case 'tr': {
      out.refs = 0;
      const hpa = stage.translate(op.page * 4096 + op.off, op.access, op.kind, op.side ? WALK_SIDE_EFFECTS : 0, out);
      return hpa < 0
        ? ['fault', out.refs, out.nestedGpa, out.nestedFinal, out.nestedCode, out.nestedRights, out.nestedMisconfig]
        : ['ok', hpa, out.refs, out.nestedRights, out.nestedDirty];
    }
    case 'set': {
      const loc = (3 + (op.page >> 9)) * 512 + (op.page & 511);
      pool.set(loc, op.page * 4096 + leafBits(format, op.rights) + (op.ad & 1 ? aBit : 0) + (op.ad & 2 ? dBit : 0), 0);
      return null;
    }
    case 'huge': {
      // PD entry 0: a 2 MiB leaf (all rights) or the PT again.
      const hpa = pool.hpaOf(3);
      pool.set(2 * 512, op.on ? leafBits(format, 7) | 0x80 : (hpa % 2 ** 32) | 7, op.on ? 0 : Math.floor(hpa / 2 ** 32));
      return null;
    }
    case 'unmap':
      pool.set((3 + (op.page >> 9)) * 512 + (op.page & 511), 0, 0);
      return null;
    case 'pt2': {
      const hpa = pool.hpaOf(4);
      pool.set(2 * 512 + 1, op.on ? (hpa % 2 ** 32) | 7 : 0, op.on ? Math.floor(hpa / 2 ** 32) : 0);
      return null;
    }
    case 'clearAd':
      for (let loc = 0; loc < 5 * 512; loc++) if (pool.lo(loc) !== 0) pool.set(loc, (pool.lo(loc) & ~(aBit | dBit)) >>> 0, pool.hi(loc));
      return null;
  }
}

describe('StageMemo (the stages keep walks while the pool is unchanged)', () => {
  for (const format of ['ept', 'npt'] as const) {
    it(`${format}: the same results, references, flags and tables as walking every time (property)`, () => {
      let hits = 0;
      fc.assert(
        fc.property(fc.array(opArb, { minLength: 40, maxLength: 120 }), fc.boolean(), (ops, ad) => {
          const m = new Machine({ memoryBytes: 4 * 2 ** 20 });
          const pools = [new SptePool(FRAMES), new SptePool(FRAMES)];
          for (const p of pools) buildTables(p, format);
          const mems = [new SptePoolMemory(pools[0]!, m.memory), new PlainView(new SptePoolMemory(pools[1]!, m.memory))];
          const stages = mems.map((mem) => (format === 'ept' ? new EptStage(mem, POOL_BASE + (3 << 3) + 6 + (ad ? 0x40 : 0)) : new NptStage(mem, POOL_BASE)));
          const outs = [new WalkResult(), new WalkResult()];
          // Pages walked successfully at the pool's current version: a walk of one of them again may come from the memo.
          const walked = new Map<number, number>();
          for (const op of ops) {
            const a = apply(op, pools[0]!, stages[0]!, format, outs[0]!);
            const b = apply(op, pools[1]!, stages[1]!, format, outs[1]!);
            expect(a).toEqual(b);
            if (op.t === 'tr' && (a as unknown[])[0] === 'ok') {
              if (walked.get(op.page) === pools[0]!.version) hits++;
              walked.set(op.page, pools[0]!.version);
            }
          }
          expect(Buffer.compare(Buffer.from(pools[0]!.words.buffer), Buffer.from(pools[1]!.words.buffer))).toBe(0);
        }),
        { seed: 0x5e_3a0, numRuns: 100 },
      );
      // Not vacuous: many translations changed nothing in the tables (the memo could answer them).
      expect(hits).toBeGreaterThan(500);
    });
  }
});
