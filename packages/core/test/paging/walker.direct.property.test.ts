import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ACC_FETCH, ACC_USER, ACC_WRITE } from '../../src/arch/constants.js';
import { MODE_LONG4, MODE_LONG5, MODE_PAE, type PagingModeId } from '../../src/arch/modes.js';
import { GuestMemory } from '../../src/machine/guest-memory.js';
import type { DirectWords, PhysicalMemory } from '../../src/memory/physical.js';
import { POOL_BASE, SptePool, SptePoolMemory } from '../../src/mmu/pool.js';
import { WALK_SIDE_EFFECTS, WalkResult, type PagingContext } from '../../src/paging/types.js';
import { createPagingContext, walk } from '../../src/paging/walker.js';

/*
 * The walker reads tables in a `DirectWords` memory (the MMU pool: `SptePoolMemory`) straight from its words,
 * in integer arithmetic, instead of calling `read32`. Property: over random tables in the pool (and in guest
 * RAM, and beyond the pool's array), every walk gives exactly what the same walk gives through `read32` alone:
 * status, error code, address, leaf, rights, the entries read, and the A/D bits written.
 */

/** Where a random entry points: pool frames 0-3, a frame past the pool's array (reads as zeros), guest RAM. */
const poolTargets = (base: number) => [base, base + 0x1000, base + 0x2000, base + 0x3000, base + 200 * 0x1000, 0x1000, 0x2000];
/** High-half bits besides the address: none, XD, a key bit, ignored bits 62:52, bit 51 (reserved unless M = 52). */
const EXTRA_HI = [0, 0, 0, 0x80000000, 0x08000000, 0x7ff00000, 1 << 19];

const entryArb = (targets: readonly number[]) =>
  fc.record({
    target: fc.constantFrom(...targets),
    flags: fc.integer({ min: 0, max: 0xfff }),
    extraHi: fc.constantFrom(...EXTRA_HI),
    present: fc.boolean(),
  });

interface Scenario {
  mode: PagingModeId;
  ctx: () => PagingContext;
  entries: { pa: number; lo: number; hi: number }[];
  va: number;
  access: number;
}

/** A context of `mode` with CR3 `cr3`, and CR0.WP, CR4.SMEP, SMAP, PKE, EFER.NXE, CR4.PSE and RFLAGS.AC from `bits`. */
function contextOf(mode: PagingModeId, cr3: number, maxPhyAddr: number, bits: readonly boolean[]): PagingContext {
  const [wp, smep, smap, pke, nxe, pse, ac] = bits as boolean[];
  return createPagingContext({ mode, cr3, maxPhyAddr, cr0Wp: wp, cr4Smep: smep, cr4Smap: smap, cr4Pke: pke, eferNxe: nxe, cr4Pse: pse, eflagsAc: ac });
}

/** Random tables, the root at `base` + 0-3 pages, every other table at one of `targets`. */
const scenarioArb = (base: number, targets: readonly number[] = poolTargets(base)) =>
  fc
    .record({
      mode: fc.constantFrom<PagingModeId>(MODE_PAE, MODE_LONG4, MODE_LONG5),
      maxPhyAddr: fc.constantFrom(36, 40, 46, 46, 48, 52),
      bits: fc.array(fc.boolean(), { minLength: 7, maxLength: 7 }),
      entries: fc.array(entryArb(targets), { minLength: 5, maxLength: 5 }),
      rootFrame: fc.integer({ min: 0, max: 3 }),
      vaLo: fc.integer({ min: 0, max: 0xffffffff }),
      vaHi: fc.integer({ min: -(2 ** 20), max: 2 ** 20 - 1 }),
      access: fc.constantFrom(0, ACC_WRITE, ACC_FETCH, ACC_USER, ACC_USER | ACC_WRITE, ACC_USER | ACC_FETCH),
    })
    .map(({ mode, maxPhyAddr, bits, entries, rootFrame, vaLo, vaHi, access }): Scenario => {
      const root = base + rootFrame * 0x1000;
      const va = mode === MODE_PAE ? vaLo : (mode === MODE_LONG4 ? vaHi >> 4 : vaHi) * 2 ** 32 + vaLo;
      const u = BigInt.asUintN(64, BigInt(va));
      const lo = (e: (typeof entries)[number]) => (((e.target % 2 ** 32) & 0xfffff000) | (e.flags & ~1) | (e.present ? 1 : 0)) >>> 0;
      const hi = (e: (typeof entries)[number]) => (Math.floor(e.target / 2 ** 32) | e.extraHi) >>> 0;
      const out: Scenario['entries'] = [];
      let table = root;
      let top = mode === MODE_LONG4 ? 4 : 5;
      const pdpte = { lo: 0, hi: 0, i: 0 };
      if (mode === MODE_PAE) {
        const e = entries[3]!;
        pdpte.i = Number((u >> 30n) & 3n);
        pdpte.lo = lo(e) & ~0x1e6; // registers hold what a successful load allows (bits 2:1, 8:5 clear)
        pdpte.hi = Math.floor(e.target / 2 ** 32);
        table = e.target;
        top = 2;
      }
      for (let level = top; level >= 1; level--) {
        const e = entries[level - 1]!;
        out.push({ pa: table + Number((u >> BigInt(12 + 9 * (level - 1))) & 0x1ffn) * 8, lo: lo(e), hi: hi(e) });
        table = e.target;
      }
      const ctx = () => {
        const c = contextOf(mode, mode === MODE_PAE ? 0 : root, maxPhyAddr, bits);
        if (mode === MODE_PAE) {
          c.pdpteLo[pdpte.i] = pdpte.lo;
          c.pdpteHi[pdpte.i] = pdpte.hi;
        }
        return c;
      };
      return { mode, ctx, entries: out, va, access };
    });

/** A fresh pool at `base` (64 frames in its array, a budget of 256) over 64 KiB of guest RAM, with the scenario's entries written. */
function build(s: Scenario, base: number): SptePoolMemory {
  const mem = new SptePoolMemory(new SptePool(256, base), new GuestMemory(64 * 1024));
  for (const e of s.entries) {
    mem.write32(e.pa, e.lo);
    mem.write32(e.pa + 4, e.hi);
  }
  return mem;
}

/** What the walk saw and left: its outcome, the entries it read, and every entry's memory afterwards. */
function outcome(s: Scenario, mem: PhysicalMemory, words: PhysicalMemory): unknown {
  const r = new WalkResult();
  const status = walk(s.ctx(), mem, s.va, s.access, WALK_SIDE_EFFECTS, r);
  const read = [];
  for (let l = r.topLevel; l >= 1; l--) read.push([r.entryPa[l], r.entryLo[l], r.entryHi[l]]);
  return {
    status,
    errorCode: r.errorCode,
    pa: status === 0 ? r.pa : null,
    leaf: [r.leafLevel, r.pageSize, r.writable, r.user, r.executable, r.dirty, r.pkey, r.global],
    read,
    after: s.entries.map((e) => [words.read32(e.pa), words.read32(e.pa + 4)]),
  };
}

/**
 * A `DirectWords` memory whose window is more than 4 GiB long: `WINDOW_WORDS` words from `base` (4 GiB
 * aligned), so that tables in the window's second 4 GiB (address bits 51:32 one above the base's) are read
 * directly too, as a pool of more than 2^20 frames would be. The words are sparse (a Map behind a Proxy that
 * counts the direct reads); read32 and write32 reach the same Map, at any address.
 */
const WINDOW_WORDS = 2 ** 30 + 2 ** 20; // 4 GiB + 4 MiB
class WideWindow implements DirectWords {
  readonly words = new Map<number, number>(); // by address / 4
  /** Words read through `directWords`, and of those, in the window's second 4 GiB. */
  directReads = 0;
  highDirectReads = 0;
  readonly directWords: Uint32Array;
  readonly directBaseHi: number;
  constructor(readonly directBase: number) {
    this.directBaseHi = directBase % 2 ** 32 === 0 ? directBase / 2 ** 32 : -1;
    const first = directBase / 4;
    this.directWords = new Proxy(
      {},
      {
        get: (_t, k) => {
          if (k === 'length') return WINDOW_WORDS;
          const i = Number(k);
          if (!Number.isInteger(i) || i < 0 || i >= WINDOW_WORDS) return undefined;
          this.directReads++;
          if (i >= 2 ** 30) this.highDirectReads++;
          return this.words.get(first + i) ?? 0;
        },
      },
    ) as Uint32Array;
  }
  read32(pa: number): number {
    return this.words.get(pa / 4) ?? 0;
  }
  write32(pa: number, value: number): void {
    this.words.set(pa / 4, value >>> 0);
  }
}

/** Walks over a pool at `base` give what read32 alone gives; returns how many read pool tables. */
function checkAgainstRead32(base: number, runs: number): number {
  let pool = 0;
  fc.assert(
    fc.property(scenarioArb(base), (s) => {
      const a = build(s, base);
      const b = build(s, base);
      // `b` through read32/write32 only: no directWords to see.
      const plain: PhysicalMemory = { read32: (pa) => b.read32(pa), write32: (pa, v) => b.write32(pa, v) };
      expect(outcome(s, a, a)).toEqual(outcome(s, plain, b));
      if (s.entries.some((e) => e.pa >= base)) pool++;
    }),
    { seed: 0xd1ec7, numRuns: runs },
  );
  return pool;
}

/**
 * 4-level walks down a chain of pool tables (PML4 at `base`, PDPT, PD and PT in the next three frames), biased
 * to go deep: each entry present 9 times in 10, PS in the PML4E 1 time in 16 and below it 3 in 16, a high half
 * with more than address bits 1 time in 3, and a PS entry at level 3 or 2 (a leaf) with random address bits and
 * one reserved bit set 1 time in 4, so that 1 GiB and 2 MiB translations, their reserved bits, XD and the rights
 * of every level are all reached (the general scenarios above mostly end at the first levels).
 */
const deepWalkArb = (base: number) =>
  fc
    .record({
      maxPhyAddr: fc.constantFrom(46, 52), // the pool's address bit 45 is reserved under a smaller MAXPHYADDR
      bits: fc.array(fc.boolean(), { minLength: 7, maxLength: 7 }),
      flags: fc.array(fc.integer({ min: 0, max: 0xfff }), { minLength: 4, maxLength: 4 }),
      present: fc.array(fc.integer({ min: 0, max: 9 }), { minLength: 4, maxLength: 4 }),
      keepPs: fc.array(fc.integer({ min: 0, max: 7 }), { minLength: 4, maxLength: 4 }),
      leafBits: fc.integer({ min: 0, max: 0x1ffff }),
      leafPick: fc.integer({ min: 0, max: 3 }),
      extraHi: fc.array(fc.constantFrom(0, 0, 0, 0, 0, 0, ...EXTRA_HI), { minLength: 4, maxLength: 4 }),
      vaLo: fc.integer({ min: 0, max: 0xffffffff }),
      vaHi: fc.integer({ min: -(2 ** 15), max: 2 ** 15 - 1 }),
      access: fc.constantFrom(0, ACC_WRITE, ACC_FETCH, ACC_USER, ACC_USER | ACC_WRITE, ACC_USER | ACC_FETCH),
    })
    .map(({ maxPhyAddr, bits, flags, present, keepPs, leafBits, leafPick, extraHi, vaLo, vaHi, access }): Scenario => {
      const va = vaHi * 2 ** 32 + vaLo;
      const u = BigInt.asUintN(64, BigInt(va));
      const hiBase = Math.floor(base / 2 ** 32);
      const entries: Scenario['entries'] = [];
      for (let level = 4; level >= 1; level--) {
        const table = base + (4 - level) * 0x1000;
        let f = flags[4 - level]! & ~1;
        if (keepPs[4 - level]! > (level === 4 ? 0 : 2)) f &= ~0x80; // PS kept 1 time in 8 at level 4, 3 in 8 below
        const p = present[4 - level]! !== 0 ? 1 : 0;
        // A non-leaf entry points at the next table; a PS entry at level 3 or 2 is a leaf with random address bits
        // 29:13 (1 GiB) or 20:13 (2 MiB), its reserved ones clear 3 times in 4, else exactly one of them set.
        const leaf = (level === 3 || level === 2) && (f & 0x80) !== 0;
        const rsvd = level === 3 ? 0x3fffe000 : 0x001fe000;
        const leafLo = ((leafBits << 13) & ~rsvd) | (leafPick === 0 ? 1 << (13 + (leafBits % (level === 3 ? 17 : 8))) : 0);
        const lo = leaf ? (leafLo | f | p) >>> 0 : (((base + (5 - level) * 0x1000) % 2 ** 32) | f | p) >>> 0;
        const hi = ((level === 1 || leaf ? 0 : hiBase) | extraHi[4 - level]!) >>> 0;
        entries.push({ pa: table + Number((u >> BigInt(12 + 9 * (level - 1))) & 0x1ffn) * 8, lo, hi });
      }
      const ctx = () => contextOf(MODE_LONG4, base, maxPhyAddr, bits);
      return { mode: MODE_LONG4, ctx, entries, va, access };
    });

describe('walk over DirectWords (properties)', () => {
  it('reads tables in the second 4 GiB of a window longer than 4 GiB directly, with exactly the results of read32', () => {
    // Tables in the first and the second 4 GiB of the window (address bits 51:32 equal to the base's, and one
    // above), past its end (read32), and below it (read32).
    const base = POOL_BASE;
    const high = base + 2 ** 32;
    const targets = [base, base + 0x1000, high, high + 0x1000, high + 0x2000, high + 2 ** 22 + 0x1000, 0x1000];
    let high2nd = 0;
    let direct = 0;
    let highDirect = 0;
    fc.assert(
      fc.property(scenarioArb(base, targets), (s) => {
        const fill = (m: WideWindow) => {
          for (const e of s.entries) {
            m.write32(e.pa, e.lo);
            m.write32(e.pa + 4, e.hi);
          }
          return m;
        };
        const a = fill(new WideWindow(base));
        const b = fill(new WideWindow(base));
        const plain: PhysicalMemory = { read32: (pa) => b.read32(pa), write32: (pa, v) => b.write32(pa, v) };
        const r1 = outcome(s, a, a);
        expect(r1).toEqual(outcome(s, plain, b));
        if (s.entries.some((e) => e.pa >= high && e.pa < base + WINDOW_WORDS * 4)) high2nd++;
        direct += a.directReads;
        highDirect += a.highDirectReads;
      }),
      { seed: 0x4c1b, numRuns: 1500 },
    );
    // Many walks read a table in the second 4 GiB, and the window's words were read directly, there too.
    expect(high2nd).toBeGreaterThan(500);
    expect(direct).toBeGreaterThan(1000);
    expect(highDirect).toBeGreaterThan(200);
  });

  it('reads the pool directly with exactly the result, entries and A/D writes of read32', () => {
    // most walks read pool tables, so the direct path is exercised
    expect(checkAgainstRead32(POOL_BASE, 3000)).toBeGreaterThan(1000);
  });

  it('walks down to every level of pool tables with exactly the result, entries and A/D writes of read32', () => {
    // The deep walks: how many end (with a translation or a fault) at each level, and how many translate to a
    // 4 KiB, 2 MiB and 1 GiB page, for the coverage below.
    const endedAt = [0, 0, 0, 0, 0];
    const translated = [0, 0, 0, 0];
    fc.assert(
      fc.property(deepWalkArb(POOL_BASE), (s) => {
        const a = build(s, POOL_BASE);
        const b = build(s, POOL_BASE);
        const plain: PhysicalMemory = { read32: (pa) => b.read32(pa), write32: (pa, v) => b.write32(pa, v) };
        const direct = outcome(s, a, a) as { status: number; leaf: number[] };
        expect(direct).toEqual(outcome(s, plain, b));
        endedAt[direct.leaf[0]!]!++; // the level of the entry that ended the walk
        if (direct.status === 0) translated[direct.leaf[0]!]!++;
      }),
      { seed: 0xdee9, numRuns: 3000 },
    );
    expect(endedAt[1]).toBeGreaterThan(600);
    for (const level of [2, 3, 4]) expect(endedAt[level]).toBeGreaterThan(300);
    for (const level of [1, 2, 3]) expect(translated[level]).toBeGreaterThan(50);
  });

  it('reads a pool whose frames do not start on a 4 GiB boundary through read32, with the same results', () => {
    // The direct reads locate a table by its address bits 51:32 relative to the pool's: a pool at another
    // base (a TDP MMU's under a small MAXPHYADDR) goes through read32 instead.
    expect(checkAgainstRead32(2 ** 39 + 2 ** 31, 1000)).toBeGreaterThan(300);
  });
});
