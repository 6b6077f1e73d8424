import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ACC_FETCH, ACC_USER, ACC_WRITE } from '../../src/arch/constants.js';
import { MODE_LEGACY32, MODE_LONG4, MODE_LONG5, MODE_PAE, type PagingModeId } from '../../src/arch/modes.js';
import { SparsePhysicalMemory } from '../../src/memory/sparse.js';
import { WALK_OK, WALK_SIDE_EFFECTS, WalkResult, type PagingContext } from '../../src/paging/types.js';
import { createPagingContext, rightsFault, walk } from '../../src/paging/walker.js';
import { RecordingMemory } from './helpers.js';

/*
 * Property tests of the walker over arbitrary paging structures: the entries on the path of a random linear
 * address are random (random flags, reserved bits, keys, and table addresses among a few pages, so that
 * tables alias and entries recur), under random control bits. Seeded, so failures reproduce.
 */

const PAGES = [0x1000, 0x2000, 0x3000, 0x4000, 0x5000];
const HI_CHOICES = [0, 0, 0, 1 << 19, 1 << 4, 0x80000000, 0x08000000, 0x10000000, 0x7ff00000, 0xfffff];

interface Scenario {
  ctx: PagingContext;
  mem: SparsePhysicalMemory;
  va: number;
  access: number;
}

const entryArb = fc.record({
  page: fc.constantFrom(...PAGES),
  flags: fc.integer({ min: 0, max: 0xfff }),
  upper: fc.integer({ min: 0, max: 3 }), // bits 13 and 21 (reserved in some large pages)
  hi: fc.constantFrom(...HI_CHOICES),
  present: fc.boolean(),
});

const scenarioArb = fc
  .record({
    mode: fc.constantFrom<PagingModeId>(MODE_LEGACY32, MODE_PAE, MODE_LONG4, MODE_LONG5),
    maxPhyAddr: fc.integer({ min: 36, max: 52 }),
    bits: fc.array(fc.boolean(), { minLength: 9, maxLength: 9 }),
    pkru: fc.integer({ min: 0, max: 0xffffffff }),
    entries: fc.array(entryArb, { minLength: 5, maxLength: 5 }),
    vaLo: fc.integer({ min: 0, max: 0xffffffff }),
    vaHi: fc.integer({ min: -(2 ** 20), max: 2 ** 20 - 1 }),
    access: fc.constantFrom(0, ACC_WRITE, ACC_FETCH, ACC_USER, ACC_USER | ACC_WRITE, ACC_USER | ACC_FETCH),
  })
  .map(({ mode, maxPhyAddr, bits, pkru, entries, vaLo, vaHi, access }): Scenario => {
    const [wp, pse, pge, smep, smap, pke, nxe, ac] = bits as boolean[];
    const ctx = createPagingContext({
      mode,
      cr3: 0x1000,
      maxPhyAddr,
      cr0Wp: wp,
      cr4Pse: pse,
      cr4Pge: pge,
      cr4Smep: smep,
      cr4Smap: smap,
      cr4Pke: pke,
      eferNxe: nxe,
      eflagsAc: ac,
      pkru,
    });
    const mem = new SparsePhysicalMemory();
    const lo = (e: (typeof entries)[number]) =>
      (e.page | (e.upper & 1 ? 1 << 13 : 0) | (e.upper & 2 ? 1 << 21 : 0) | (e.flags & ~1) | (e.present ? 1 : 0)) >>> 0;
    // mostly-canonical addresses: 4-level within +-2^47 (hi within +-2^15), 5-level within +-2^52; some beyond
    const va = mode === MODE_LEGACY32 || mode === MODE_PAE ? vaLo : (mode === MODE_LONG4 ? vaHi >> 4 : vaHi) * 2 ** 32 + vaLo;
    const u = BigInt.asUintN(64, BigInt(va));
    if (mode === MODE_LEGACY32) {
      let table = 0x1000;
      for (let level = 2; level >= 1; level--) {
        const e = entries[level]!;
        mem.write32(table + Number((u >> BigInt(12 + 10 * (level - 1))) & 0x3ffn) * 4, lo(e));
        table = e.page;
      }
    } else {
      let table = 0x1000;
      let top = mode === MODE_PAE ? 3 : mode === MODE_LONG4 ? 4 : 5;
      if (mode === MODE_PAE) {
        const e = entries[3]!;
        const i = Number((u >> 30n) & 3n);
        ctx.pdpteLo[i] = lo(e);
        ctx.pdpteHi[i] = e.hi & 0xf; // registers hold what a successful load allows
        table = e.page;
        top = 2;
      }
      for (let level = top; level >= 1; level--) {
        const e = entries[level - 1]!;
        const pa = table + Number((u >> BigInt(12 + 9 * (level - 1))) & 0x1ffn) * 8;
        mem.write32(pa, lo(e));
        mem.write32(pa + 4, e.hi >>> 0);
        table = e.page;
      }
    }
    return { ctx, mem, va, access };
  });

const PARAMS = { seed: 0x5eed, numRuns: 3000 };

describe('walk (properties)', () => {
  it('never writes without WALK_SIDE_EFFECTS, and gives the same outcome as a walk with side effects (§4.8)', () => {
    fc.assert(
      fc.property(scenarioArb, ({ ctx, mem, va, access }) => {
        const rec = new RecordingMemory(mem);
        const inspect = new WalkResult();
        const status = walk(ctx, rec, va, access, 0, inspect);
        expect(rec.writes).toEqual([]);
        const real = new WalkResult();
        expect(walk(ctx, mem, va, access, WALK_SIDE_EFFECTS, real)).toBe(status);
        expect([real.errorCode, real.pa]).toEqual([inspect.errorCode, inspect.pa]);
      }),
      PARAMS,
    );
  });

  it('with side effects: a faulting walk writes nothing; a successful one only sets A/D bits, A in every entry used (§4.8)', () => {
    let successes = 0;
    fc.assert(
      fc.property(scenarioArb, ({ ctx, mem, va, access }) => {
        const rec = new RecordingMemory(mem);
        const r = new WalkResult();
        const status = walk(ctx, rec, va, access, WALK_SIDE_EFFECTS, r);
        if (status !== WALK_OK) {
          expect(rec.writes).toEqual([]);
          return;
        }
        successes++;
        for (const [, before, after] of rec.writes) {
          expect(before & ~after).toBe(0); // nothing cleared
          expect(((after & ~before) >>> 0) & ~0x60).toBe(0); // only A (0x20) and D (0x40) set
        }
        const from = ctx.mode === MODE_PAE ? 2 : r.topLevel;
        for (let l = from; l >= r.leafLevel; l--) expect(mem.read32(r.entryPa[l]!) & 0x20).toBe(0x20);
        if (access & ACC_WRITE) expect(mem.read32(r.entryPa[r.leafLevel]!) & 0x40).toBe(0x40);
      }),
      PARAMS,
    );
    expect(successes).toBeGreaterThan(50); // the generator reaches successful walks, so the property is exercised
  });

  it('rightsFault of a successful walk predicts the outcome of every other access kind on the same path (§4.6)', () => {
    fc.assert(
      fc.property(scenarioArb, ({ ctx, mem, va }) => {
        const r = new WalkResult();
        ctx.cr4Smap = false;
        ctx.cr4Pke = false;
        if (walk(ctx, mem, va, 0, 0, r) !== WALK_OK) return; // a supervisor read: allowed once the path is valid
        ctx.cr4Smap = true;
        ctx.cr4Pke = true;
        for (const access of [0, ACC_WRITE, ACC_FETCH, ACC_USER, ACC_USER | ACC_WRITE, ACC_USER | ACC_FETCH]) {
          const w = new WalkResult();
          const status = walk(ctx, mem, va, access, 0, w);
          expect(rightsFault(ctx, r, access)).toBe(status === WALK_OK ? 0 : w.errorCode);
        }
      }),
      PARAMS,
    );
  });
});
