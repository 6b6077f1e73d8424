import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ACC_FETCH, ACC_READ, ACC_USER, ACC_WRITE, CR0_PE, CR0_PG, CR4_PAE, CR4_PSE, EFER_LME, EFER_NXE } from '../../src/arch/constants.js';
import { MODE_LEGACY32, MODE_LONG4, MODE_LONG5, MODE_PAE, type PagingModeId } from '../../src/arch/modes.js';
import { SparsePhysicalMemory } from '../../src/memory/sparse.js';
import { Machine } from '../../src/machine/machine.js';
import type { Vcpu } from '../../src/machine/vcpu.js';
import { GuestAbort } from '../../src/machine/errors.js';
import { NativeHooks } from '../../src/machine/hooks.js';
import { EptStage } from '../../src/paging/ept.js';
import { NptStage } from '../../src/paging/npt.js';
import { WALK_NESTED_FAULT, WALK_OK, WALK_PAGE_FAULT, WALK_SIDE_EFFECTS, WalkResult, type SecondStage } from '../../src/paging/types.js';
import { createPagingContext, loadPdptes, walk } from '../../src/paging/walker.js';

/*
 * The two-dimensional walk against hand-built second-stage tables (SDM Vol. 3C §29.3 for EPT, APM Vol. 2
 * §15.25 for NPT). Guest-physical page g lives at host-physical g + OFFSET; the second-stage tables live in a
 * pool at 2^40 (above 4 GiB, so addresses take the double arithmetic path).
 */
const OFFSET = 0x4000_0000;
const POOL = 2 ** 40;
const P = 1;
const W = 2;
const U = 4;
const A = 0x20;
const D = 0x40;
const PS = 0x80;
const EPT_RWX = 7;
const EPT_WB = 6 << 3;
const EPT_A = 0x100;
const EPT_D = 0x200;

/** Builds EPT or NPT tables in `host`: 4 KiB (or larger at `pageLevel`) mappings with given leaf and upper bits. */
class StageTables {
  private next = POOL + 4096;
  constructor(
    readonly host: SparsePhysicalMemory,
    readonly format: 'ept' | 'npt',
    readonly levels: 4 | 5,
  ) {}
  get upper(): number {
    return this.format === 'ept' ? EPT_RWX : P | W | U;
  }
  get leafDefault(): number {
    return this.format === 'ept' ? EPT_RWX | EPT_WB : P | W | U;
  }
  /** Maps gpa -> hpa; returns the entry addresses by level. */
  map(gpa: number, hpa: number, leaf = this.leafDefault, pageLevel = 1): number[] {
    const at: number[] = [];
    let table = POOL;
    for (let level = this.levels; level >= pageLevel; level--) {
      const idx = Math.floor(gpa / 2 ** (12 + 9 * (level - 1))) % 512;
      const pa = table + idx * 8;
      at[level] = pa;
      if (level === pageLevel) {
        const base = hpa - (hpa % 2 ** (12 + 9 * (level - 1)));
        this.host.set64(pa, ((base % 2 ** 32) | leaf | (level > 1 ? PS : 0)) >>> 0, Math.floor(base / 2 ** 32));
        break;
      }
      let lo = this.host.read32(pa);
      let hi = this.host.read32(pa + 4);
      if ((lo & 7) === 0) {
        const t = this.next;
        this.next += 4096;
        lo = ((t % 2 ** 32) | this.upper) >>> 0;
        hi = Math.floor(t / 2 ** 32);
        this.host.set64(pa, lo, hi);
      }
      table = (lo & 0xfffff000) >>> 0;
      table += hi * 2 ** 32;
    }
    return at;
  }
}

interface Guest {
  host: SparsePhysicalMemory;
  tables: StageTables;
  /** Guest-physical address of each guest paging-structure entry used for VA, by level. */
  entryGpa: number[];
  cr3: number;
  mode: PagingModeId;
}

const VA = 0x7f12_3456_7abc;
const VA32 = 0x4567_8abc;
const DATA = 0x20_0000; // the data page's gpa

/** Guest tables for VA (VA32 in 32-bit modes) mapping DATA, each guest page mapped through the second stage. */
function guest(mode: PagingModeId, format: 'ept' | 'npt', levels: 4 | 5, guestBits = P | W | U | A | D): Guest {
  const host = new SparsePhysicalMemory();
  const tables = new StageTables(host, format, levels);
  const entryGpa: number[] = [];
  const cr3 = 0x1000;
  const mapPage = (gpa: number) => tables.map(gpa, gpa + OFFSET);
  if (mode === MODE_LEGACY32) {
    const pde = cr3 + (VA32 >>> 22) * 4;
    const pte = 0x3000 + ((VA32 >>> 12) & 0x3ff) * 4;
    host.write32(pde + OFFSET, 0x3000 | guestBits);
    host.write32(pte + OFFSET, DATA | guestBits);
    entryGpa[2] = pde;
    entryGpa[1] = pte;
    [cr3, 0x3000, DATA].forEach(mapPage);
    return { host, tables, entryGpa, cr3, mode };
  }
  const top = mode === MODE_PAE ? 2 : mode === MODE_LONG5 ? 5 : 4;
  const va = mode === MODE_PAE ? VA32 : VA;
  let table = mode === MODE_PAE ? 0x2000 : cr3;
  mapPage(cr3);
  for (let level = top; level >= 1; level--) {
    const idx = Math.floor(va / 2 ** (12 + 9 * (level - 1))) % 512;
    const gpa = table + idx * 8;
    entryGpa[level] = gpa;
    mapPage(table);
    const next = level === 1 ? DATA : 0x10000 + level * 0x1000;
    host.set64(gpa + OFFSET, next | guestBits, 0);
    table = next;
  }
  mapPage(DATA);
  if (mode === MODE_PAE) host.set64(cr3 + OFFSET + (VA32 >>> 30) * 8, 0x2000 | P, 0);
  return { host, tables, entryGpa, cr3, mode };
}

function stageOf(g: Guest, opts: { ad?: boolean; executeOnly?: boolean; maxPhyAddr?: number } = {}): SecondStage {
  const m = opts.maxPhyAddr ?? 46;
  if (g.tables.format === 'npt') return new NptStage(g.host, POOL, { maxPhyAddr: m, levels: g.tables.levels });
  const eptp = POOL + ((g.tables.levels - 1) << 3) + (opts.ad === true ? 0x40 : 0) + 6;
  return new EptStage(g.host, eptp, { maxPhyAddr: m, executeOnly: opts.executeOnly });
}

function run(g: Guest, stage: SecondStage, access: number, guestMaxPhyAddr = 46): WalkResult {
  const ctx = createPagingContext({ mode: g.mode, cr3: g.cr3, maxPhyAddr: guestMaxPhyAddr, eferNxe: true, nested: stage });
  if (g.mode === MODE_PAE) expect(loadPdptes(ctx, g.host)).toBe(true);
  const out = new WalkResult();
  walk(ctx, g.host, g.mode === MODE_LEGACY32 || g.mode === MODE_PAE ? VA32 : VA, access, WALK_SIDE_EFFECTS, out);
  return out;
}

const read64lo = (h: SparsePhysicalMemory, pa: number) => h.read32(pa);

describe('walkNested (two-dimensional paging)', () => {
  describe('memory references (n guest levels, m second-stage levels: n * (m + 1) + m)', () => {
    const cases: Array<[string, PagingModeId, 4 | 5, number]> = [
      ['legacy32 over 4-level EPT', MODE_LEGACY32, 4, 2 * 5 + 4],
      ['PAE over 4-level EPT (PDPTEs are registers)', MODE_PAE, 4, 2 * 5 + 4],
      ['4-level over 4-level EPT: 24', MODE_LONG4, 4, 24],
      ['5-level over 5-level EPT: 35', MODE_LONG5, 5, 35],
      ['5-level over 4-level EPT', MODE_LONG5, 4, 5 * 5 + 4],
    ];
    for (const [name, mode, levels, refs] of cases) {
      it(name, () => {
        for (const format of ['ept', 'npt'] as const) {
          const g = guest(mode, format, levels);
          const r = run(g, stageOf(g), ACC_READ);
          expect([format, r.status, r.refs, r.pa]).toEqual([
            format,
            WALK_OK,
            refs,
            DATA + OFFSET + ((mode === MODE_LONG4 || mode === MODE_LONG5 ? VA : VA32) & 0xfff),
          ]);
        }
      });
    }
    it('a 2 MiB second-stage leaf for the final address saves one reference (4 x 5 + 3)', () => {
      const g = guest(MODE_LONG4, 'ept', 4);
      g.tables.map(DATA, DATA + OFFSET, EPT_RWX | EPT_WB, 2); // the final gpa through a 2 MiB EPT page
      const r = run(g, stageOf(g), ACC_READ);
      expect([r.status, r.refs]).toEqual([WALK_OK, 4 * 5 + 3]);
    });
  });

  describe('EPT (SDM Vol. 3C §29.3)', () => {
    it('sets guest A/D in host memory, and EPT A/D only with EPTP bit 6 (table accesses then count as writes)', () => {
      const g = guest(MODE_LONG4, 'ept', 4, P | W | U);
      const leafOfTable = g.tables.map(g.entryGpa[1]! - (g.entryGpa[1]! % 4096), g.entryGpa[1]! - (g.entryGpa[1]! % 4096) + OFFSET);
      const leafOfData = g.tables.map(DATA, DATA + OFFSET);
      let r = run(g, stageOf(g), ACC_WRITE);
      expect(r.status).toBe(WALK_OK);
      expect(read64lo(g.host, g.entryGpa[1]! + OFFSET) & (A | D)).toBe(A | D);
      expect(read64lo(g.host, leafOfData[1]!) & (EPT_A | EPT_D)).toBe(0);
      r = run(g, stageOf(g, { ad: true }), ACC_READ);
      expect([r.status, r.nestedDirty]).toEqual([WALK_OK, false]); // a read: the data page's EPT D stays clear
      expect(read64lo(g.host, leafOfData[1]!) & (EPT_A | EPT_D)).toBe(EPT_A);
      expect(read64lo(g.host, leafOfTable[1]!) & (EPT_A | EPT_D)).toBe(EPT_A | EPT_D); // treated as a write (§29.3.5)
      r = run(g, stageOf(g, { ad: true }), ACC_WRITE);
      expect([r.status, r.nestedDirty]).toEqual([WALK_OK, true]);
      expect(read64lo(g.host, leafOfData[1]!) & EPT_D).toBe(EPT_D);
    });

    it('refuses by the AND of R/W/X, reports the rights, and allows execute-only pages where the capability is on', () => {
      const g = guest(MODE_LONG4, 'ept', 4);
      g.tables.map(DATA, DATA + OFFSET, 1 /* R */ | EPT_WB);
      let r = run(g, stageOf(g), ACC_WRITE);
      expect([r.status, r.nestedGpa, r.nestedFinal, r.nestedRights, r.nestedAccess, r.nestedMisconfig]).toEqual([
        WALK_NESTED_FAULT,
        DATA + (VA & 0xfff),
        true,
        1,
        ACC_WRITE,
        false,
      ]);
      expect(run(g, stageOf(g), ACC_READ).nestedRights).toBe(1); // granted: R
      g.tables.map(DATA, DATA + OFFSET, 4 /* X only */ | EPT_WB);
      expect(run(g, stageOf(g), ACC_FETCH).status).toBe(WALK_OK);
      r = run(g, stageOf(g), ACC_READ);
      expect([r.status, r.nestedRights]).toEqual([WALK_NESTED_FAULT, 4]);
      r = run(g, stageOf(g, { executeOnly: false }), ACC_FETCH);
      expect([r.status, r.nestedMisconfig]).toEqual([WALK_NESTED_FAULT, true]);
    });

    it('reports a not-present entry with no rights, on the guest table access (not final)', () => {
      const g = guest(MODE_LONG4, 'ept', 4);
      const at = g.tables.map(g.entryGpa[2]!, g.entryGpa[2]! + OFFSET);
      g.host.set64(at[1]!, 0, 0);
      const r = run(g, stageOf(g), ACC_READ);
      expect([r.status, r.nestedGpa, r.nestedFinal, r.nestedRights, r.refs]).toEqual([WALK_NESTED_FAULT, g.entryGpa[2], false, 0, 2 * 5 + 4]);
    });

    it('misconfigurations: W without R, a reserved address bit, memory type 7, bits 6:3 of a non-leaf, bit 7 of a PML4E', () => {
      const g = guest(MODE_LONG4, 'ept', 4);
      const at = g.tables.map(DATA, DATA + OFFSET);
      const lo = g.host.read32(at[1]!);
      const cases: Array<[number, number, number]> = [
        [1, (lo & ~7) | 2, 0], // XWR = 010
        [1, lo, 1 << 14], // bit 46 with MAXPHYADDR 46
        [1, (lo & ~0x38) | (7 << 3), 0], // memory type 7
        [2, g.host.read32(at[2]!) | 0x8, 0], // bit 3 of a non-leaf EPT PDE
        [4, g.host.read32(at[4]!) | 0x80, 0], // bit 7 of the PML4E
      ];
      for (const [level, newLo, newHi] of cases) {
        const saveLo = g.host.read32(at[level]!);
        const saveHi = g.host.read32(at[level]! + 4);
        g.host.set64(at[level]!, newLo >>> 0, newHi);
        const r = run(g, stageOf(g), ACC_READ);
        // The PML4E serves the guest's tables too: its misconfiguration shows on the first table access.
        expect([level, r.status, r.nestedMisconfig, r.nestedFinal]).toEqual([level, WALK_NESTED_FAULT, true, level !== 4]);
        g.host.set64(at[level]!, saveLo, saveHi);
      }
      expect(run(g, stageOf(g), ACC_READ).status).toBe(WALK_OK);
    });

    it('a guest A/D update is a write: a read-only EPT mapping of the table refuses it without EPTP bit 6, and any walk with it', () => {
      const g = guest(MODE_LONG4, 'ept', 4, P | W | U); // A clear everywhere
      const ptPage = g.entryGpa[1]! - (g.entryGpa[1]! % 4096);
      g.tables.map(ptPage, ptPage + OFFSET, 1 | EPT_WB); // the guest PT page read-only
      let r = run(g, stageOf(g), ACC_READ);
      expect([r.status, r.nestedGpa, r.nestedFinal, r.nestedAccess, r.nestedRights]).toEqual([WALK_NESTED_FAULT, g.entryGpa[1], false, ACC_WRITE, 1]);
      g.host.write32(g.entryGpa[1]! + OFFSET, g.host.read32(g.entryGpa[1]! + OFFSET) | A); // now only upper levels need A
      for (const l of [4, 3, 2]) g.host.write32(g.entryGpa[l]! + OFFSET, g.host.read32(g.entryGpa[l]! + OFFSET) | A);
      expect(run(g, stageOf(g), ACC_READ).status).toBe(WALK_OK); // a plain read of the PT: allowed
      r = run(g, stageOf(g, { ad: true }), ACC_READ);
      expect([r.status, r.nestedGpa, r.nestedFinal, r.nestedAccess]).toEqual([WALK_NESTED_FAULT, g.entryGpa[1], false, ACC_WRITE]);
    });

    it('4-level EPT refuses a gpa with bits 51:48 set; 5-level EPT maps it', () => {
      for (const levels of [4, 5] as const) {
        const g = guest(MODE_LONG4, 'ept', levels);
        const high = 2 ** 49 + DATA;
        g.host.set64(g.entryGpa[1]! + OFFSET, DATA | P | W | U | A | D, 2 ** 17); // PTE frame = 2^49 + DATA
        g.tables.map(high, DATA + OFFSET);
        const r = run(g, stageOf(g, { maxPhyAddr: 52 }), ACC_READ, 52);
        expect([levels, r.status]).toEqual([levels, levels === 4 ? WALK_NESTED_FAULT : WALK_OK]);
      }
    });
  });

  describe('NPT (APM Vol. 2 §15.25)', () => {
    it('walks are user accesses: U=0 in a nested entry refuses even a supervisor access, as P|W|U on a table (bit 33 case)', () => {
      const g = guest(MODE_LONG4, 'npt', 4);
      const at = g.tables.map(g.cr3, g.cr3 + OFFSET);
      g.host.set64(at[1]!, (g.host.read32(at[1]!) & ~U) >>> 0, 0);
      const r = run(g, stageOf(g), ACC_READ);
      expect([r.status, r.nestedGpa, r.nestedFinal, r.nestedCode]).toEqual([WALK_NESTED_FAULT, g.entryGpa[4], false, P | W | U]);
    });

    it("a read-only nested mapping of the guest's CR3 page gives P|W|U on the table access (kvm-unit-tests npt_rw_pfwalk)", () => {
      const g = guest(MODE_LONG4, 'npt', 4);
      g.tables.map(g.cr3, g.cr3 + OFFSET, P | U);
      const r = run(g, stageOf(g), ACC_READ);
      expect([r.status, r.nestedGpa - (r.nestedGpa % 4096), r.nestedFinal, r.nestedCode]).toEqual([WALK_NESTED_FAULT, g.cr3, false, 7]);
    });

    it('final accesses: a write to a read-only page is P|W|U, a fetch from an NX page P|U|I/D, a reserved bit P|U|RSV', () => {
      const g = guest(MODE_LONG4, 'npt', 4);
      const at = g.tables.map(DATA, DATA + OFFSET, P | U);
      expect([run(g, stageOf(g), ACC_WRITE).nestedCode, run(g, stageOf(g), ACC_WRITE).nestedFinal]).toEqual([P | W | U, true]);
      expect(run(g, stageOf(g), ACC_READ).nestedRights).toBe(1 | 4);
      g.host.set64(at[1]!, (DATA + OFFSET) | P | W | U, 0x80000000);
      expect(run(g, stageOf(g), ACC_FETCH).nestedCode).toBe(P | U | 0x10);
      g.host.set64(at[1]!, (DATA + OFFSET) | P | W | U, 1 << 15); // bit 47 with MAXPHYADDR 46
      expect(run(g, stageOf(g), ACC_READ).nestedCode).toBe(P | U | 8);
    });
  });

  describe("the processor MAXPHYADDR (the host's)", () => {
    it("a guest pte with a bit between the guest's and the host's MAXPHYADDR is no #PF under TDP: the gpa reaches the second stage", () => {
      const g = guest(MODE_LONG4, 'ept', 4);
      g.host.set64(g.entryGpa[1]! + OFFSET, DATA | P | W | U | A | D, 1 << 8); // bit 40: reserved for a 36-bit guest
      const r = run(g, stageOf(g), ACC_READ, 36);
      expect([r.status, r.nestedGpa, r.nestedFinal, r.nestedRights]).toEqual([WALK_NESTED_FAULT, 2 ** 40 + DATA + (VA & 0xfff), true, 0]);
      // The one-dimensional walk of the same tables with the guest's MAXPHYADDR: a reserved-bit #PF, which
      // is what KVM makes the guest see (it emulates the access with the guest's MAXPHYADDR).
      const flat = new SparsePhysicalMemory();
      for (const l of [4, 3, 2, 1]) flat.set64(g.entryGpa[l]!, g.host.read32(g.entryGpa[l]! + OFFSET), g.host.read32(g.entryGpa[l]! + OFFSET + 4));
      const out = new WalkResult();
      walk(createPagingContext({ mode: MODE_LONG4, cr3: g.cr3, maxPhyAddr: 36 }), flat, VA, ACC_READ, 0, out);
      expect([out.status, out.errorCode]).toEqual([WALK_PAGE_FAULT, 9]);
    });
  });

  describe('identity second stage granting everything (property)', () => {
    it('gives the 1D result, with refs = n * (m + 1) + m for the entries the guest walk read', () => {
      // Guest tables in the low 4 MiB; an identity EPT/NPT of 1 GiB pages over [0, 8 GiB) (m = 2 references
      // per translation: PML4E, PDPTE); random guest entries per level.
      const entryArb = fc.record({
        p: fc.integer({ min: 0, max: 7 }),
        w: fc.boolean(),
        u: fc.boolean(),
        ps: fc.integer({ min: 0, max: 3 }),
        a: fc.boolean(),
        d: fc.boolean(),
      });
      fc.assert(
        fc.property(
          fc.constantFrom(MODE_LEGACY32, MODE_PAE, MODE_LONG4, MODE_LONG5),
          fc.constantFrom('ept' as const, 'npt' as const),
          fc.array(entryArb, { minLength: 5, maxLength: 5 }),
          fc.constantFrom(ACC_READ, ACC_WRITE, ACC_FETCH, ACC_READ | ACC_USER, ACC_WRITE | ACC_USER, ACC_FETCH | ACC_USER),
          (mode, format, entries, access) => {
            const build = (): SparsePhysicalMemory => {
              const mem = new SparsePhysicalMemory();
              const bits = (e: (typeof entries)[number], leafOk: boolean) =>
                (e.p === 0 ? 0 : P) | (e.w ? W : 0) | (e.u ? U : 0) | (e.a ? A : 0) | (e.d ? D : 0) | (leafOk && e.ps === 0 ? PS : 0);
              if (mode === MODE_LEGACY32) {
                mem.write32(0x1000 + (VA32 >>> 22) * 4, (0x3000 | bits(entries[0]!, true)) >>> 0);
                mem.write32(0x3000 + ((VA32 >>> 12) & 0x3ff) * 4, (DATA | bits(entries[1]!, false)) >>> 0);
                return mem;
              }
              const top = mode === MODE_PAE ? 2 : mode === MODE_LONG5 ? 5 : 4;
              const va = mode === MODE_PAE ? VA32 : VA;
              let table = mode === MODE_PAE ? 0x2000 : 0x1000;
              if (mode === MODE_PAE) mem.set64(0x1000 + (VA32 >>> 30) * 8, 0x2000 | P, 0);
              for (let level = top; level >= 1; level--) {
                const e = entries[top - level]!;
                const next = level === 1 ? DATA : 0x10000 + level * 0x1000;
                const large = level === 2 || level === 3 ? (level === 2 ? 0x400000 : 0) : -1;
                const isLarge = large >= 0 && e.ps === 0 && !(mode === MODE_PAE && level === 3);
                mem.set64(table + (Math.floor(va / 2 ** (12 + 9 * (level - 1))) % 512) * 8, ((isLarge ? large : next) | bits(e, isLarge)) >>> 0, 0);
                if (isLarge) break;
                table = next;
              }
              return mem;
            };
            const ctx = createPagingContext({ mode, cr3: 0x1000, maxPhyAddr: 46, eferNxe: true, cr4Pse: true });
            const flat = build();
            if (mode === MODE_PAE) loadPdptes(ctx, flat);
            const one = new WalkResult();
            const va = mode === MODE_LEGACY32 || mode === MODE_PAE ? VA32 : VA;
            walk(ctx, flat, va, access, WALK_SIDE_EFFECTS, one);
            const host = build();
            const tables = new StageTables(host, format, 4);
            for (let gpa = 0; gpa < 8 * 2 ** 30; gpa += 2 ** 30) tables.map(gpa, gpa, tables.leafDefault, 3);
            const stage = format === 'ept' ? new EptStage(host, POOL + 0x18 + 6) : new NptStage(host, POOL);
            const two = new WalkResult();
            walk({ ...ctx, nested: stage }, host, va, access, WALK_SIDE_EFFECTS, two);
            expect([two.status, two.errorCode, two.pa, two.pageSize, two.writable, two.user, two.executable]).toEqual([
              one.status,
              one.errorCode,
              one.status === WALK_OK ? one.pa : two.pa,
              one.pageSize,
              one.writable,
              one.user,
              one.executable,
            ]);
            const guestRead = (mode === MODE_PAE ? 2 : one.topLevel) - one.leafLevel + 1;
            expect(two.refs).toBe(guestRead * (2 + 1) + (one.status === WALK_OK ? 2 : 0));
            for (let l = one.leafLevel; l <= (mode === MODE_PAE ? 2 : one.topLevel); l++)
              expect(host.read32(one.entryPa[l]!)).toBe(flat.read32(one.entryPa[l]!));
          },
        ),
        { seed: 0x2d_0a1c, numRuns: 400 },
      );
    });
  });
});

describe('Vcpu under TDP', () => {
  /** A long4 guest (tables at 0x1000.., data 0x200000..) on an identity EPT with 4 KiB pages; `ro` pages read-only in EPT. */
  function tdpMachine(format: 'ept' | 'npt', ro: number[]): { v: Vcpu; log: unknown[]; host: SparsePhysicalMemory; tables: StageTables } {
    const m = new Machine({ memoryBytes: 4 * 2 ** 20, maxPhyAddr: 46 });
    const v = m.vcpus[0]!;
    const mem = m.memory;
    // Guest tables: PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000; va 0x400000 + i*4096 -> 0x200000 + i*4096.
    const set = (pa: number, lo: number) => {
      mem.write32(pa, lo);
      mem.write32(pa + 4, 0);
    };
    set(0x1000, 0x2000 | 7);
    set(0x2000, 0x3000 | 7);
    set(0x3000 + 2 * 8, 0x4000 | 7);
    for (let i = 0; i < 16; i++) set(0x4000 + i * 8, (0x200000 + i * 4096) | 7);
    const host = new SparsePhysicalMemory();
    const tables = new StageTables(host, format, 4);
    for (let gpa = 0; gpa < 4 * 2 ** 20; gpa += 4096) tables.map(gpa, gpa, ro.includes(gpa) ? (format === 'ept' ? 5 | EPT_WB : P | U) : tables.leafDefault);
    v.setSecondStage(format === 'ept' ? new EptStage(host, POOL + 0x18 + 0x40 + 6) : new NptStage(host, POOL));
    const log: unknown[] = [];
    const hooks = new NativeHooks();
    hooks.nestedFault = (_v, address, access, r) => {
      log.push(['nested', address, access, r.nestedGpa, r.nestedFinal, r.nestedCode]);
      throw new GuestAbort('nested');
    };
    v.hooks = hooks;
    v.setExceptionHandler(14, (_v, _vec, ec, cr2) => {
      log.push(['#PF', ec, cr2]);
      throw new GuestAbort('SIGSEGV');
    });
    v.writeEfer(EFER_LME | EFER_NXE);
    v.movToCr4(CR4_PAE | CR4_PSE);
    v.movToCr3(0x1000);
    v.movToCr0(CR0_PG | CR0_PE);
    expect(v.mode).toBe(MODE_LONG4);
    return { v, log, host, tables };
  }

  it('a warm TLB gives the same results as a cold one (property), and walk refs count 24 per 4 KiB miss', () => {
    const seen = { hits: 0, nested: 0 };
    for (const format of ['ept', 'npt'] as const) {
      fc.assert(
        fc.property(
          fc.array(fc.record({ page: fc.integer({ min: 0, max: 17 }), kind: fc.constantFrom('r', 'w', 'x'), user: fc.boolean() }), {
            minLength: 1,
            maxLength: 40,
          }),
          fc.subarray([0x200000, 0x201000, 0x202000, 0x203000]),
          (ops, ro) => {
            const results = [false, true].map((cold) => {
              const { v, log, host } = tdpMachine(format, ro);
              for (const o of ops) {
                if (cold) v.tlb.flushAll(false);
                v.setCpl(o.user ? 3 : 0);
                const va = 0x400000 + o.page * 4096 + 8;
                try {
                  if (o.kind === 'r') log.push(['r', v.read(va, 4)]);
                  else if (o.kind === 'x') log.push(['x', v.fetch(va, 4)]);
                  else v.write(va, 4, o.page);
                } catch (e) {
                  if (!(e instanceof GuestAbort)) throw e;
                }
              }
              const words: number[] = [];
              for (let f = POOL; f < POOL + 16 * 4096; f += 8) words.push(host.read32(f));
              if (!cold) {
                seen.hits += v.tlb.hits;
                seen.nested += log.filter((e) => (e as unknown[])[0] === 'nested').length;
              }
              return { log, ram: v.memory.digest(), ept: words, walks: v.walks, refs: v.walkRefs };
            });
            expect(results[0]!.log).toEqual(results[1]!.log);
            expect(results[0]!.ram).toBe(results[1]!.ram);
            expect(results[0]!.ept).toEqual(results[1]!.ept);
            // Every cold access walked; a complete 4 KiB walk is 24 references, a refused one fewer.
            expect(results[1]!.refs).toBeLessThanOrEqual(24 * results[1]!.walks);
          },
        ),
        { seed: 0x71b, numRuns: 60 },
      );
    }
    // Not vacuous: the warm runs hit the TLB, and second-stage faults (writes to read-only pages, pages 16-17
    // beyond the guest's PT entries give guest #PFs) happened.
    expect(seen.hits).toBeGreaterThan(50);
    expect(seen.nested).toBeGreaterThan(20);
  });

  it('counts 24 references for one cold 4 KiB read, and none for a TLB hit', () => {
    const { v } = tdpMachine('ept', []);
    v.read(0x400008, 4);
    expect([v.walks, v.walkRefs]).toEqual([1, 24]);
    v.read(0x400010, 4);
    expect([v.walks, v.walkRefs]).toEqual([1, 24]);
  });

  it('one TLB miss whose walk faults in the guest walks twice: 20 + 24 references, at most 24 per walk', () => {
    for (const format of ['ept', 'npt'] as const) {
      const { v, log } = tdpMachine(format, []);
      // Page 16 (va 0x410000) has no entry in the guest's PT: the guest's handler maps it (with a physical
      // write, as a kernel that writes its pte: no access of its own through the TLB) and returns.
      v.setExceptionHandler(14, (vc, _vec, ec, cr2) => {
        log.push(['#PF', ec, cr2]);
        vc.memory.write32(0x4000 + 16 * 8, (0x200000 + 16 * 4096) | 7);
      });
      v.read(0x410008, 4);
      expect(log).toEqual([['#PF', 0, 0x410008]]);
      // Walk 1: PML4E, PDPTE, PDE, PTE, each after the 4 second-stage references of its gpa (4 x 5 = 20), and the
      // PTE is not present: #PF, no final translation. The guest's handler runs, the access is re-executed, its
      // TLB lookup is not counted again (the access missed once) but it walks again: 4 x 5 + 4 = 24.
      expect([v.tlb.misses, v.walks, v.walkRefs]).toEqual([1, 2, 20 + 24]);
      expect(v.walkRefs / v.walks).toBeLessThanOrEqual(24);
    }
  });

  it('a second-stage fault drops the combined mapping of its linear address (SDM Vol. 3C §29.4.3.1)', () => {
    for (const format of ['ept', 'npt'] as const) {
      const { v, log, tables } = tdpMachine(format, [0x200000]);
      v.memory.write32(0x200008, 0xaaaa);
      v.memory.write32(0x205008, 0xbbbb);
      expect(v.read(0x400008, 4)).toBe(0xaaaa); // the TLB holds gpa 0x200000 -> hpa 0x200000, read-only
      // The hypervisor points the gpa at another host page, read-only still, without invalidating; a write faults.
      tables.map(0x200000, 0x205000, format === 'ept' ? 5 | EPT_WB : P | U);
      try {
        v.write(0x400008, 4, 1);
      } catch (e) {
        if (!(e instanceof GuestAbort)) throw e;
      }
      expect(log.map((e) => (e as unknown[])[0])).toEqual(['nested']);
      // The fault dropped the entry: the read walks both stages again and reads the new host page.
      expect(v.read(0x400008, 4)).toBe(0xbbbb);
    }
  });
});
