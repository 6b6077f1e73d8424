import { describe, expect, it } from 'vitest';
import { ACC_FETCH, ACC_READ, ACC_USER, ACC_WRITE } from '../../src/arch/constants.js';
import { MODE_LEGACY32, MODE_LONG4, MODE_LONG5, MODE_PAE } from '../../src/arch/modes.js';
import { SparsePhysicalMemory } from '../../src/memory/sparse.js';
import {
  WALK_GP,
  WALK_NESTED_FAULT,
  WALK_OK,
  WALK_PAGE_FAULT,
  WALK_SIDE_EFFECTS,
  WalkResult,
  type PagingContext,
  NESTED_FINAL,
  type SecondStage,
} from '../../src/paging/types.js';
import { createPagingContext, loadPdptes, rightsFault, walk, type PagingContextInit } from '../../src/paging/walker.js';
import { map32, map64, RecordingMemory, tableAt, type Entry } from './helpers.js';

// Entry bits (SDM Vol. 3A Tables 4-4..4-20) and error-code bits (§4.7), spelled out so expectations read as numbers.
const P = 1;
const W = 2;
const U = 4;
const A = 0x20;
const D = 0x40;
const PS = 0x80;
const G = 0x100;
const XD_HI = 0x80000000;
const EC_P = 1;
const EC_W = 2;
const EC_U = 4;
const EC_RSVD = 8;
const EC_ID = 0x10;
const EC_PK = 0x20;

/** 0xffff_9234_5678_9abc, the upper-half address of the sample vectors, in signed-canonical form. */
const VA64 = Number(BigInt.asIntN(64, 0xffff923456789abcn));
const VA32 = 0x56789abc;
const ROOT = 0x1000;

function long4(init: PagingContextInit = {}): PagingContext {
  return createPagingContext({ mode: MODE_LONG4, cr3: ROOT, maxPhyAddr: 46, ...init });
}

/** A 4-level walk of VA64 through four user, writable levels to frame `frame` (leaf flags `leafLo`, `leafHi`). */
function tables4(leafLo = P | W | U, leafHi = 0, upper = P | W | U): { mem: SparsePhysicalMemory; at: number[] } {
  const mem = new SparsePhysicalMemory();
  const at = map64(mem, ROOT, 4, VA64, [{ lo: upper }, { lo: upper }, { lo: upper }, { lo: (0x2000000 | leafLo) >>> 0, hi: leafHi }]);
  return { mem, at };
}

function run(ctx: PagingContext, mem: SparsePhysicalMemory | RecordingMemory, va: number, access: number, flags = WALK_SIDE_EFFECTS): WalkResult {
  const r = new WalkResult();
  walk(ctx, mem, va, access, flags, r);
  return r;
}

function fault(r: WalkResult): number | 'ok' | 'gp' | 'nested' {
  return r.status === WALK_OK ? 'ok' : r.status === WALK_PAGE_FAULT ? r.errorCode : r.status === WALK_GP ? 'gp' : 'nested';
}

describe('walk', () => {
  describe('32-bit paging (SDM Vol. 3A §4.3)', () => {
    const ctx32 = (init: PagingContextInit = {}) => createPagingContext({ mode: MODE_LEGACY32, cr3: ROOT, maxPhyAddr: 36, ...init });

    it('translates through a PDE and a 4-byte PTE (4 KiB page, §4.3 Figure 4-2)', () => {
      const mem = new SparsePhysicalMemory();
      map32(mem, ROOT, VA32, P | W | U, 0x2000000 | P | W | U);
      const r = run(ctx32(), mem, VA32, ACC_READ);
      expect(r.status).toBe(WALK_OK);
      expect(r.pa).toBe(0x2000abc);
      expect([r.leafLevel, r.pageSize, r.topLevel]).toEqual([1, 4096, 2]);
    });

    it('maps a 4 MiB page with PDE.PS when CR4.PSE=1, and ignores PS when CR4.PSE=0 (§4.3, Table 4-4)', () => {
      const mem = new SparsePhysicalMemory();
      mem.write32(ROOT + (VA32 >>> 22) * 4, 0x02000000 | PS | P);
      const big = run(ctx32({ cr4Pse: true }), mem, VA32, ACC_READ);
      expect(big.status).toBe(WALK_OK);
      expect([big.pa, big.pageSize, big.leafLevel]).toEqual([0x2389abc, 4 * 1024 * 1024, 2]);

      // CR4.PSE=0: the same PDE points to a page table at 0x2000000 (PS ignored, §4.3 Table 4-5).
      mem.write32(0x2000000 + ((VA32 >>> 12) & 0x3ff) * 4, 0x5000 | P);
      const small = run(ctx32({ cr4Pse: false }), mem, VA32, ACC_READ);
      expect([small.status, small.pa, small.pageSize]).toEqual([WALK_OK, 0x5abc, 4096]);
    });

    it('takes PSE-36 address bits (M-20):13 and reserves bits 21:(M-19), M = min(MAXPHYADDR, 40) (Table 4-4)', () => {
      const mem = new SparsePhysicalMemory();
      const pdePa = ROOT + (VA32 >>> 22) * 4;
      mem.write32(pdePa, 0x02000000 | (0xf << 13) | PS | P); // bits 16:13 = 0xf
      expect(run(ctx32({ cr4Pse: true, maxPhyAddr: 36 }), mem, VA32, ACC_READ).pa).toBe(0xf_0238_9abc);
      mem.write32(pdePa, 0x02000000 | (0xff << 13) | PS | P); // bits 20:13 = 0xff: bits 20:17 reserved when M = 36
      expect(fault(run(ctx32({ cr4Pse: true, maxPhyAddr: 36 }), mem, VA32, ACC_READ))).toBe(EC_P | EC_RSVD);
      expect(run(ctx32({ cr4Pse: true, maxPhyAddr: 40 }), mem, VA32, ACC_READ).pa).toBe(0xff_0238_9abc);
      expect(run(ctx32({ cr4Pse: true, maxPhyAddr: 52 }), mem, VA32, ACC_READ).pa).toBe(0xff_0238_9abc); // M capped at 40
      mem.write32(pdePa, 0x02000000 | (1 << 21) | PS | P); // bit 21 is reserved for every MAXPHYADDR
      expect(fault(run(ctx32({ cr4Pse: true, maxPhyAddr: 52 }), mem, VA32, ACC_WRITE))).toBe(EC_P | EC_W | EC_RSVD);
    });

    it('has no reserved bits in 4 KiB PDEs and PTEs and no XD (§4.3, Tables 4-5, 4-6)', () => {
      const mem = new SparsePhysicalMemory();
      map32(mem, ROOT, VA32, 0xf80 | P | W | U, (0x2000000 | 0xf80 | P | W | U) >>> 0); // PAT/G/ignored bits set
      const r = run(ctx32({ eferNxe: true }), mem, VA32, ACC_FETCH);
      expect(fault(r)).toBe('ok');
      expect(r.executable).toBe(true);
    });
  });

  describe('PAE paging (SDM Vol. 3A §4.4)', () => {
    function pae(init: PagingContextInit = {}): { ctx: PagingContext; mem: SparsePhysicalMemory } {
      const mem = new SparsePhysicalMemory();
      mem.set64(ROOT + 8, 0x2000 | P, 0); // PDPTE 1 (VA bits 31:30 = 01)
      const ctx = createPagingContext({ mode: MODE_PAE, cr3: ROOT, maxPhyAddr: 36, ...init });
      expect(loadPdptes(ctx, mem)).toBe(true);
      return { ctx, mem };
    }

    it('walks from the PDPTE registers, not from memory (§4.4.1)', () => {
      const { ctx, mem } = pae();
      map64(mem, 0x2000, 2, VA32, [{ lo: P | W | U }, { lo: 0x2000000 | P | W | U }]);
      mem.set64(ROOT + 8, 0, 0); // the guest clears the PDPTE in memory: no effect until the next load
      const r = run(ctx, mem, VA32, ACC_READ);
      expect([r.status, r.pa, r.topLevel]).toEqual([WALK_OK, 0x2000abc, 3]);
    });

    it('gives #PF with P=0 for a not-present PDPTE register (§4.4.1, §4.7)', () => {
      const { ctx, mem } = pae();
      expect(fault(run(ctx, mem, 0x16789abc, ACC_WRITE | ACC_USER))).toBe(EC_W | EC_U); // PDPTE 0 is not present
    });

    it('maps 2 MiB pages and reserves PDE bits 20:13 (§4.4.2, Table 4-9)', () => {
      const { ctx, mem } = pae();
      const at = map64(mem, 0x2000, 2, VA32, [{ lo: 0x40000000 | PS | P | W }]);
      expect(run(ctx, mem, VA32, ACC_READ).pa).toBe(0x40189abc);
      mem.set64(at[2]!, 0x40000000 | (1 << 13) | PS | P | W, 0);
      expect(fault(run(ctx, mem, VA32, ACC_READ))).toBe(EC_P | EC_RSVD);
    });

    it('reserves bits 62:MAXPHYADDR, unlike IA-32e paging where 62:52 are ignored (§4.4.2, Tables 4-10, 4-11)', () => {
      const { ctx, mem } = pae({ maxPhyAddr: 52 });
      map64(mem, 0x2000, 2, VA32, [{ lo: P | W }, { lo: 0x2000000 | P | W, hi: 1 << 20 }]); // bit 52
      expect(fault(run(ctx, mem, VA32, ACC_READ))).toBe(EC_P | EC_RSVD);
      const { ctx: c36, mem: m36 } = pae({ maxPhyAddr: 36 });
      map64(m36, 0x2000, 2, VA32, [{ lo: P | W }, { lo: 0x2000000 | P | W, hi: 1 << 4 }]); // bit 36
      expect(fault(run(c36, m36, VA32, ACC_READ))).toBe(EC_P | EC_RSVD);
      c36.maxPhyAddr = 40;
      expect(run(c36, m36, VA32, ACC_READ).pa).toBe(0x10_0200_0abc);
    });

    it('has no protection keys: bits 62:59 are reserved, PKRU is not consulted (§4.6.2)', () => {
      const { ctx, mem } = pae({ cr4Pke: true, pkru: 0xffffffff });
      map64(mem, 0x2000, 2, VA32, [{ lo: P | W | U }, { lo: 0x2000000 | P | W | U }]);
      expect(fault(run(ctx, mem, VA32, ACC_WRITE | ACC_USER))).toBe('ok');
    });
  });

  describe('4-level paging (SDM Vol. 3A §4.5)', () => {
    it('translates a 4 KiB page through PML4E, PDPTE, PDE and PTE (§4.5.4, Figure 4-8)', () => {
      const { mem } = tables4();
      const r = run(long4(), mem, VA64, ACC_READ);
      expect([r.status, r.pa, r.leafLevel, r.pageSize, r.topLevel]).toEqual([WALK_OK, 0x2000abc, 1, 4096, 4]);
    });

    it('maps 2 MiB pages with PDE.PS and 1 GiB pages with PDPTE.PS (§4.5.4, Tables 4-15, 4-17)', () => {
      const mem = new SparsePhysicalMemory();
      map64(mem, ROOT, 4, VA64, [{ lo: P | W }, { lo: P | W }, { lo: 0x40000000 | PS | P | W }]);
      const r2 = run(long4(), mem, VA64, ACC_READ);
      expect([r2.pa, r2.pageSize, r2.leafLevel]).toEqual([0x40189abc, 2 * 1024 * 1024, 2]);

      const mem1 = new SparsePhysicalMemory();
      const at = map64(mem1, ROOT, 4, VA64, [{ lo: P | W }, { lo: (0x80000000 | PS | P | W) >>> 0, hi: 1 }]);
      const r1 = run(long4(), mem1, VA64, ACC_READ);
      expect([r1.pa, r1.pageSize, r1.leafLevel]).toEqual([0x1_9678_9abc, 1024 * 1024 * 1024, 3]);
      mem1.set64(at[3]!, (0x80000000 | (1 << 29) | PS | P | W) >>> 0, 1); // bits 29:13 of a 1 GiB PDPTE are reserved
      expect(fault(run(long4(), mem1, VA64, ACC_READ))).toBe(EC_P | EC_RSVD);
    });

    it('reserves PS in a PML4E (§4.5.4, Table 4-15)', () => {
      const mem = new SparsePhysicalMemory();
      map64(mem, ROOT, 4, VA64, [{ lo: 0x40000000 | PS | P | W }]);
      expect(fault(run(long4(), mem, VA64, ACC_USER))).toBe(EC_P | EC_U | EC_RSVD);
    });

    it('reserves bits 51:MAXPHYADDR in every level and ignores bits 62:52 (§4.5.4, Tables 4-14..4-20; MAXPHYADDR: §4.1.4)', () => {
      const bit51 = tables4(P | W, 1 << 19).mem;
      expect(fault(run(long4({ maxPhyAddr: 46 }), bit51, VA64, ACC_READ))).toBe(EC_P | EC_RSVD);
      expect(run(long4({ maxPhyAddr: 52 }), bit51, VA64, ACC_READ).pa).toBe(2 ** 51 + 0x2000abc);
      const bit36 = new SparsePhysicalMemory();
      map64(bit36, ROOT, 4, VA64, [{ lo: P }, { lo: P, hi: 1 << 4 }]); // a PDPTE pointing at 0x10_0010_2000
      expect(fault(run(long4({ maxPhyAddr: 36 }), bit36, VA64, ACC_READ))).toBe(EC_P | EC_RSVD);
      const ignored = tables4(P | W, 0x7ff00000).mem; // bits 62:52
      expect(run(long4({ maxPhyAddr: 52 }), ignored, VA64, ACC_READ).pa).toBe(0x2000abc);
      expect(run(long4({ maxPhyAddr: 36 }), ignored, VA64, ACC_READ).pa).toBe(0x2000abc);
    });

    it('treats bit 7 of a 4 KiB PTE as PAT, not as a reserved bit (§4.5.4, Table 4-20)', () => {
      expect(fault(run(long4(), tables4(PS | P | W).mem, VA64, ACC_READ))).toBe('ok');
    });

    it('uses CR3 bits M-1:12 and ignores its low flag/PCID bits (§4.5.2)', () => {
      const { mem } = tables4();
      expect(run(long4({ cr3: ROOT | 0x18 }), mem, VA64, ACC_READ).pa).toBe(0x2000abc);
      expect(run(long4({ cr3: ROOT | 0x7ff }), mem, VA64, ACC_READ).pa).toBe(0x2000abc);
    });
  });

  describe('5-level paging (SDM Vol. 3A §4.5, CR4.LA57)', () => {
    const va = 0x12_3456_789a_bcde; // bits 56:48 = 0x12: PML5 index 0x12
    it('walks a PML5E before the 4-level structures and reserves PS in it', () => {
      const mem = new SparsePhysicalMemory();
      const at = map64(mem, ROOT, 5, va, [{ lo: P | W }, { lo: P | W }, { lo: P | W }, { lo: P | W }, { lo: 0x3000000 | P | W }]);
      expect(at[5]).toBe(ROOT + 0x12 * 8);
      const ctx = createPagingContext({ mode: MODE_LONG5, cr3: ROOT, maxPhyAddr: 52 });
      const r = run(ctx, mem, va, ACC_WRITE);
      expect([r.status, r.pa, r.topLevel]).toEqual([WALK_OK, 0x3000cde, 5]);
      mem.set64(at[5]!, (tableAt(4) | PS | P | W) >>> 0, 0);
      expect(fault(run(ctx, mem, va, ACC_WRITE))).toBe(EC_P | EC_W | EC_RSVD);
    });
  });

  describe('canonical addresses (SDM Vol. 1 §3.3.7.1; Vol. 3A §4.5)', () => {
    it('gives #GP, not #PF, for a non-canonical 4-level address, without reading memory', () => {
      const mem = new RecordingMemory(tables4().mem);
      for (const va of [2 ** 47, -(2 ** 47) - 4096, 2 ** 52, -(2 ** 63)]) expect(fault(run(long4(), mem, va, ACC_READ))).toBe('gp');
      expect(mem.reads).toBe(0);
      expect(fault(run(long4(), mem, 2 ** 47 - 4096, ACC_READ))).toBe(0); // canonical: walked, not present
      expect(fault(run(long4(), mem, -(2 ** 47), ACC_READ))).toBe(0);
    });

    it('takes 57-bit canonical addresses in 5-level paging', () => {
      const ctx = createPagingContext({ mode: MODE_LONG5, cr3: ROOT });
      const mem = new SparsePhysicalMemory();
      expect(fault(run(ctx, mem, 2 ** 47, ACC_READ))).toBe(0); // canonical with LA57: a not-present PML5E
      expect(fault(run(ctx, mem, -(2 ** 52), ACC_READ))).toBe(0);
      expect(fault(run(ctx, mem, 2 ** 56, ACC_READ))).toBe('gp');
      expect(fault(run(ctx, mem, -(2 ** 56) - 2 ** 44, ACC_READ))).toBe('gp');
    });
  });

  describe('access rights (SDM Vol. 3A §4.6.1)', () => {
    it('U/S: a user access needs U/S=1 at every level; a supervisor read does not', () => {
      const mem = new SparsePhysicalMemory();
      map64(mem, ROOT, 4, VA64, [{ lo: P | W | U }, { lo: P | W | U }, { lo: P | W }, { lo: 0x2000000 | P | W | U }]); // PDE U=0
      expect(fault(run(long4(), mem, VA64, ACC_USER))).toBe(EC_P | EC_U);
      expect(fault(run(long4(), mem, VA64, ACC_READ))).toBe('ok');
    });

    it('R/W with CR0.WP: a supervisor write to a read-only page faults only with WP=1; a user write always', () => {
      const mem = new SparsePhysicalMemory();
      map64(mem, ROOT, 4, VA64, [{ lo: P | W | U }, { lo: P | U }, { lo: P | W | U }, { lo: 0x2000000 | P | W | U }]); // PDPTE R/W=0
      expect(fault(run(long4({ cr0Wp: false }), mem, VA64, ACC_WRITE))).toBe('ok');
      expect(fault(run(long4({ cr0Wp: true }), mem, VA64, ACC_WRITE))).toBe(EC_P | EC_W);
      expect(fault(run(long4({ cr0Wp: false }), mem, VA64, ACC_WRITE | ACC_USER))).toBe(EC_P | EC_W | EC_U);
    });

    it('XD with EFER.NXE: a fetch from a page with XD=1 at any level faults (I/D set)', () => {
      const mem = new SparsePhysicalMemory();
      map64(mem, ROOT, 4, VA64, [{ lo: P | W | U }, { lo: P | W | U, hi: XD_HI }, { lo: P | W | U }, { lo: 0x2000000 | P | W | U }]);
      expect(fault(run(long4({ eferNxe: true }), mem, VA64, ACC_FETCH))).toBe(EC_P | EC_ID);
      expect(fault(run(long4({ eferNxe: true }), mem, VA64, ACC_FETCH | ACC_USER))).toBe(EC_P | EC_U | EC_ID);
      expect(fault(run(long4({ eferNxe: true }), mem, VA64, ACC_WRITE))).toBe('ok');
    });

    it('XD is a reserved bit when EFER.NXE=0 (§4.5.4, Table 4-14 and following)', () => {
      const mem = tables4(P | W | U, XD_HI).mem;
      expect(fault(run(long4({ eferNxe: false }), mem, VA64, ACC_READ))).toBe(EC_P | EC_RSVD);
      expect(fault(run(long4({ eferNxe: false }), mem, VA64, ACC_FETCH))).toBe(EC_P | EC_RSVD); // no I/D: NXE=0, SMEP=0
    });

    it('SMEP: a supervisor fetch from a user page faults; a user fetch does not', () => {
      const { mem } = tables4();
      expect(fault(run(long4({ cr4Smep: true }), mem, VA64, ACC_FETCH))).toBe(EC_P | EC_ID);
      expect(fault(run(long4({ cr4Smep: true }), mem, VA64, ACC_FETCH | ACC_USER))).toBe('ok');
      expect(fault(run(long4({ cr4Smep: false }), mem, VA64, ACC_FETCH))).toBe('ok');
    });

    it('SMAP with EFLAGS.AC: explicit supervisor data accesses to user pages fault unless AC=1; fetches are exempt', () => {
      const { mem } = tables4(P | U); // a read-only user page
      expect(fault(run(long4({ cr4Smap: true }), mem, VA64, ACC_READ))).toBe(EC_P);
      expect(fault(run(long4({ cr4Smap: true }), mem, VA64, ACC_WRITE))).toBe(EC_P | EC_W);
      expect(fault(run(long4({ cr4Smap: true, eflagsAc: true }), mem, VA64, ACC_READ))).toBe('ok');
      expect(fault(run(long4({ cr4Smap: true, eflagsAc: true, cr0Wp: false }), mem, VA64, ACC_WRITE))).toBe('ok');
      expect(fault(run(long4({ cr4Smap: true, eflagsAc: true, cr0Wp: true }), mem, VA64, ACC_WRITE))).toBe(EC_P | EC_W);
      expect(fault(run(long4({ cr4Smap: true }), mem, VA64, ACC_FETCH))).toBe('ok');
      expect(fault(run(long4({ cr4Smap: true }), mem, VA64, ACC_USER))).toBe('ok');
    });

    it('global pages: G in the leaf counts only with CR4.PGE (§4.10.2.4)', () => {
      const { mem } = tables4(P | W | G);
      expect(run(long4({ cr4Pge: true }), mem, VA64, ACC_READ).global).toBe(true);
      expect(run(long4({ cr4Pge: false }), mem, VA64, ACC_READ).global).toBe(false);
      const upperOnly = tables4(P | W, 0, P | W | U | G).mem; // G in non-leaf entries is ignored
      expect(run(long4({ cr4Pge: true }), upperOnly, VA64, ACC_READ).global).toBe(false);
    });
  });

  describe('access rights in 32-bit and PAE paging (SDM Vol. 3A §4.6, §4.6.1; error codes §4.7)', () => {
    // Two walks per mode: 32-bit paging, PDE (level 2) then a 4-byte PTE (§4.3); PAE paging, the PDPTE register
    // (no rights: its bits 2:1 are reserved, §4.4.1 Table 4-8), then a PDE and an 8-byte PTE (§4.4.2).
    const ctx32 = (init: PagingContextInit = {}) => createPagingContext({ mode: MODE_LEGACY32, cr3: ROOT, maxPhyAddr: 36, ...init });
    function tables32(pde: number, pte: number): SparsePhysicalMemory {
      const mem = new SparsePhysicalMemory();
      map32(mem, ROOT, VA32, pde, (0x2000000 | pte) >>> 0);
      return mem;
    }
    const ctxPae = (init: PagingContextInit = {}) =>
      createPagingContext({ mode: MODE_PAE, cr3: ROOT, maxPhyAddr: 36, pdpteLo: [0, 0x2000 | P, 0, 0], ...init });
    function tablesPae(pde: Entry, pte: Entry): SparsePhysicalMemory {
      const mem = new SparsePhysicalMemory();
      map64(mem, 0x2000, 2, VA32, [pde, { lo: (0x2000000 | pte.lo) >>> 0, hi: pte.hi }]);
      return mem;
    }
    type Mode = readonly [
      string,
      (init?: PagingContextInit) => PagingContext,
      (pde: number, pte: number, pdeHi?: number, pteHi?: number) => SparsePhysicalMemory,
    ];
    const MODES: readonly Mode[] = [
      ['32-bit paging', ctx32, (pde, pte) => tables32(pde, pte)],
      ['PAE paging', ctxPae, (pde, pte, pdeHi = 0, pteHi = 0) => tablesPae({ lo: pde, hi: pdeHi }, { lo: pte, hi: pteHi })],
    ];

    describe.each(MODES)('%s', (_name, ctx, tables) => {
      it('U/S: a user access needs U/S=1 in the PDE and the PTE; supervisor reads and writes do not (§4.6.1)', () => {
        const pdeSup = tables(P | W, P | W | U);
        expect(fault(run(ctx(), pdeSup, VA32, ACC_USER))).toBe(EC_P | EC_U);
        expect(fault(run(ctx(), pdeSup, VA32, ACC_USER | ACC_WRITE))).toBe(EC_P | EC_W | EC_U);
        expect(fault(run(ctx(), pdeSup, VA32, ACC_READ))).toBe('ok');
        expect(fault(run(ctx({ cr0Wp: true }), pdeSup, VA32, ACC_WRITE))).toBe('ok');
        const pteSup = tables(P | W | U, P | W);
        expect(fault(run(ctx(), pteSup, VA32, ACC_USER))).toBe(EC_P | EC_U);
        expect(fault(run(ctx(), tables(P | W | U, P | W | U), VA32, ACC_USER))).toBe('ok');
      });

      it('R/W with CR0.WP: a supervisor write to a read-only page faults only with WP=1; a user write always (§4.6.1)', () => {
        for (const [pde, pte] of [
          [P | U, P | W | U], // read-only PDE
          [P | W | U, P | U], // read-only PTE
        ] as const) {
          const mem = tables(pde, pte);
          expect(fault(run(ctx({ cr0Wp: false }), mem, VA32, ACC_WRITE))).toBe('ok');
          expect(fault(run(ctx({ cr0Wp: true }), mem, VA32, ACC_WRITE))).toBe(EC_P | EC_W);
          expect(fault(run(ctx({ cr0Wp: false }), mem, VA32, ACC_WRITE | ACC_USER))).toBe(EC_P | EC_W | EC_U);
          expect(fault(run(ctx({ cr0Wp: true }), mem, VA32, ACC_USER))).toBe('ok'); // reads are allowed
        }
      });

      it('SMEP: a supervisor fetch from a user page faults with I/D; a user fetch and a supervisor page do not (§4.6.1, §4.7)', () => {
        const user = tables(P | W | U, P | W | U);
        expect(fault(run(ctx({ cr4Smep: true }), user, VA32, ACC_FETCH))).toBe(EC_P | EC_ID);
        expect(fault(run(ctx({ cr4Smep: true }), user, VA32, ACC_FETCH | ACC_USER))).toBe('ok');
        expect(fault(run(ctx({ cr4Smep: false }), user, VA32, ACC_FETCH))).toBe('ok');
        // One level with U/S=0 makes the page a supervisor page: SMEP does not apply.
        expect(fault(run(ctx({ cr4Smep: true }), tables(P | W, P | W | U), VA32, ACC_FETCH))).toBe('ok');
      });

      it('SMAP with EFLAGS.AC: explicit supervisor data accesses to a user page fault unless AC=1; fetches are exempt (§4.6.1)', () => {
        const mem = tables(P | W | U, P | U); // a read-only user page
        expect(fault(run(ctx({ cr4Smap: true }), mem, VA32, ACC_READ))).toBe(EC_P);
        expect(fault(run(ctx({ cr4Smap: true }), mem, VA32, ACC_WRITE))).toBe(EC_P | EC_W);
        expect(fault(run(ctx({ cr4Smap: true, eflagsAc: true }), mem, VA32, ACC_READ))).toBe('ok');
        expect(fault(run(ctx({ cr4Smap: true, eflagsAc: true, cr0Wp: false }), mem, VA32, ACC_WRITE))).toBe('ok');
        expect(fault(run(ctx({ cr4Smap: true, eflagsAc: true, cr0Wp: true }), mem, VA32, ACC_WRITE))).toBe(EC_P | EC_W); // AC lifts SMAP, not WP
        expect(fault(run(ctx({ cr4Smap: true }), mem, VA32, ACC_FETCH))).toBe('ok');
        expect(fault(run(ctx({ cr4Smap: true }), mem, VA32, ACC_USER))).toBe('ok');
        expect(fault(run(ctx({ cr4Smap: true }), tables(P | W, P | W | U), VA32, ACC_READ))).toBe('ok'); // a supervisor page
      });
    });

    it('32-bit paging: the rights of a 4 MiB page are those of its PDE (§4.3 Table 4-4, §4.6.1)', () => {
      const mem = new SparsePhysicalMemory();
      mem.write32(ROOT + (VA32 >>> 22) * 4, 0x02000000 | PS | P | U); // user, read-only
      const pse = (init: PagingContextInit) => ctx32({ cr4Pse: true, ...init });
      expect(fault(run(pse({}), mem, VA32, ACC_USER))).toBe('ok');
      expect(fault(run(pse({}), mem, VA32, ACC_USER | ACC_WRITE))).toBe(EC_P | EC_W | EC_U);
      expect(fault(run(pse({ cr0Wp: true }), mem, VA32, ACC_WRITE))).toBe(EC_P | EC_W);
      expect(fault(run(pse({ cr4Smep: true }), mem, VA32, ACC_FETCH))).toBe(EC_P | EC_ID);
      expect(fault(run(pse({ cr4Smap: true }), mem, VA32, ACC_READ))).toBe(EC_P);
    });

    it('32-bit paging has no XD: with EFER.NXE=1 every page is executable and a fetch fault has no I/D without SMEP (§4.6.1, §4.7)', () => {
      const mem = tables32(P | W | U, (0xf80 | P | W | U) >>> 0);
      expect(fault(run(ctx32({ eferNxe: true }), mem, VA32, ACC_FETCH | ACC_USER))).toBe('ok');
      const supervisor = tables32(P | W, P | W);
      expect(fault(run(ctx32({ eferNxe: true }), supervisor, VA32, ACC_FETCH | ACC_USER))).toBe(EC_P | EC_U); // not EC_ID
      expect(fault(run(ctx32({ eferNxe: true, cr4Smep: true }), supervisor, VA32, ACC_FETCH | ACC_USER))).toBe(EC_P | EC_U | EC_ID);
    });

    it('PAE paging: XD with EFER.NXE: a fetch from a page with XD=1 in the PDE or the PTE faults with I/D (§4.6.1, §4.7)', () => {
      for (const mem of [tablesPae({ lo: P | W | U, hi: XD_HI }, { lo: P | W | U }), tablesPae({ lo: P | W | U }, { lo: P | W | U, hi: XD_HI })]) {
        expect(fault(run(ctxPae({ eferNxe: true }), mem, VA32, ACC_FETCH))).toBe(EC_P | EC_ID);
        expect(fault(run(ctxPae({ eferNxe: true }), mem, VA32, ACC_FETCH | ACC_USER))).toBe(EC_P | EC_U | EC_ID);
        expect(fault(run(ctxPae({ eferNxe: true }), mem, VA32, ACC_WRITE | ACC_USER))).toBe('ok'); // data accesses ignore XD
      }
      // XD=0 everywhere: executable; a fetch fault for another reason still reports I/D (PAE paging with NXE).
      const readOnlySup = tablesPae({ lo: P | W }, { lo: P | W });
      expect(fault(run(ctxPae({ eferNxe: true }), readOnlySup, VA32, ACC_FETCH))).toBe('ok');
      expect(fault(run(ctxPae({ eferNxe: true }), readOnlySup, VA32, ACC_FETCH | ACC_USER))).toBe(EC_P | EC_U | EC_ID);
    });

    it('PAE paging: XD (bit 63) is a reserved bit when EFER.NXE=0, in the PDE and the PTE, and I/D is not reported (§4.4.2 Tables 4-9..4-11, §4.7)', () => {
      for (const mem of [tablesPae({ lo: P | W | U, hi: XD_HI }, { lo: P | W | U }), tablesPae({ lo: P | W | U }, { lo: P | W | U, hi: XD_HI })]) {
        expect(fault(run(ctxPae({ eferNxe: false }), mem, VA32, ACC_READ))).toBe(EC_P | EC_RSVD);
        expect(fault(run(ctxPae({ eferNxe: false }), mem, VA32, ACC_FETCH | ACC_USER))).toBe(EC_P | EC_U | EC_RSVD);
        expect(fault(run(ctxPae({ eferNxe: false, cr4Smep: true }), mem, VA32, ACC_FETCH))).toBe(EC_P | EC_RSVD | EC_ID); // SMEP: I/D
      }
      const big = new SparsePhysicalMemory(); // a 2 MiB PDE with XD
      map64(big, 0x2000, 2, VA32, [{ lo: 0x40000000 | PS | P | W | U, hi: XD_HI }]);
      expect(fault(run(ctxPae({ eferNxe: false }), big, VA32, ACC_WRITE))).toBe(EC_P | EC_W | EC_RSVD);
      expect(fault(run(ctxPae({ eferNxe: true }), big, VA32, ACC_FETCH))).toBe(EC_P | EC_ID);
    });
  });

  describe('protection keys (SDM Vol. 3A §4.6.2)', () => {
    const KEY1 = 1 << 27; // bits 62:59 of the leaf = key 1
    const AD1 = 1 << 2;
    const WD1 = 1 << 3;
    const pk = (init: PagingContextInit) => long4({ cr4Pke: true, ...init });

    it('PKRU.AD forbids every data access to a user page with that key, user or supervisor, but not fetches', () => {
      const { mem } = tables4(P | W | U, KEY1);
      expect(fault(run(pk({ pkru: AD1 }), mem, VA64, ACC_USER))).toBe(EC_P | EC_U | EC_PK);
      expect(fault(run(pk({ pkru: AD1 }), mem, VA64, ACC_READ))).toBe(EC_P | EC_PK);
      expect(fault(run(pk({ pkru: AD1 }), mem, VA64, ACC_FETCH | ACC_USER))).toBe('ok');
      expect(fault(run(pk({ pkru: AD1 << 2 }), mem, VA64, ACC_USER))).toBe('ok'); // key 2's bits
    });

    it('PKRU.WD forbids user writes, and supervisor writes only with CR0.WP=1', () => {
      const { mem } = tables4(P | W | U, KEY1);
      expect(fault(run(pk({ pkru: WD1 }), mem, VA64, ACC_WRITE | ACC_USER))).toBe(EC_P | EC_W | EC_U | EC_PK);
      expect(fault(run(pk({ pkru: WD1 }), mem, VA64, ACC_USER))).toBe('ok');
      expect(fault(run(pk({ pkru: WD1, cr0Wp: false }), mem, VA64, ACC_WRITE))).toBe('ok');
      expect(fault(run(pk({ pkru: WD1, cr0Wp: true }), mem, VA64, ACC_WRITE))).toBe(EC_P | EC_W | EC_PK);
    });

    it('applies to user pages only, takes the key of the leaf only, and needs CR4.PKE', () => {
      const supervisor = tables4(P | W, KEY1).mem;
      expect(fault(run(pk({ pkru: AD1 }), supervisor, VA64, ACC_READ))).toBe('ok');
      const keyAbove = new SparsePhysicalMemory(); // key 1 in every non-leaf entry, key 0 in the leaf
      map64(keyAbove, ROOT, 4, VA64, [{ lo: P | W | U, hi: KEY1 }, { lo: P | W | U, hi: KEY1 }, { lo: P | W | U, hi: KEY1 }, { lo: 0x2000000 | P | W | U }]);
      expect(fault(run(pk({ pkru: AD1 }), keyAbove, VA64, ACC_USER))).toBe('ok');
      const { mem } = tables4(P | W | U, KEY1);
      expect(fault(run(long4({ cr4Pke: false, pkru: AD1 }), mem, VA64, ACC_USER))).toBe('ok');
    });

    it('sets PK together with other rights violations (§4.7)', () => {
      const { mem } = tables4(P | U, KEY1); // read-only user page
      expect(fault(run(pk({ pkru: WD1 }), mem, VA64, ACC_WRITE | ACC_USER))).toBe(EC_P | EC_W | EC_U | EC_PK);
      expect(fault(run(pk({ pkru: AD1, cr4Smap: true }), mem, VA64, ACC_READ))).toBe(EC_P | EC_PK);
    });
  });

  describe('the error code (SDM Vol. 3A §4.7)', () => {
    it('P=0 for a not-present entry, with W/R and U/S from the access', () => {
      const mem = new SparsePhysicalMemory();
      map64(mem, ROOT, 4, VA64, [{ lo: P | W | U }, { lo: P | W | U }, { lo: W | U }]); // PDE not present
      expect(fault(run(long4(), mem, VA64, ACC_WRITE | ACC_USER))).toBe(EC_W | EC_U);
      const r = run(long4(), mem, VA64, ACC_READ);
      expect([fault(r), r.leafLevel]).toEqual([0, 2]);
    });

    it('RSVD only with P=1, and the reserved-bit fault wins over later rights violations', () => {
      const mem = new SparsePhysicalMemory();
      map64(mem, ROOT, 4, VA64, [{ lo: P | W }, { lo: P, hi: 1 << 19 }]); // supervisor, read-only, bit 51 set
      expect(fault(run(long4(), mem, VA64, ACC_WRITE | ACC_USER))).toBe(EC_P | EC_W | EC_U | EC_RSVD);
    });

    it('I/D only for fetches, and only with CR4.SMEP or (PAE/IA-32e paging with EFER.NXE)', () => {
      const empty = new SparsePhysicalMemory();
      const ctx32 = (init: PagingContextInit) => createPagingContext({ mode: MODE_LEGACY32, cr3: ROOT, ...init });
      expect(fault(run(ctx32({ eferNxe: true }), empty, VA32, ACC_FETCH))).toBe(0); // 32-bit paging: NXE does not count
      expect(fault(run(ctx32({ cr4Smep: true }), empty, VA32, ACC_FETCH))).toBe(EC_ID);
      const paeCtx = (init: PagingContextInit) => createPagingContext({ mode: MODE_PAE, cr3: ROOT, ...init });
      expect(fault(run(paeCtx({ eferNxe: true }), empty, VA32, ACC_FETCH))).toBe(EC_ID);
      expect(fault(run(paeCtx({ eferNxe: false }), empty, VA32, ACC_FETCH))).toBe(0);
      expect(fault(run(long4({ eferNxe: true }), empty, VA64, ACC_FETCH | ACC_USER))).toBe(EC_U | EC_ID);
      expect(fault(run(long4({ eferNxe: true, cr4Smep: true }), empty, VA64, ACC_READ))).toBe(0);
    });
  });

  describe('accessed and dirty flags (SDM Vol. 3A §4.8)', () => {
    it('sets A in every entry walked and D only in the leaf, for a write', () => {
      const { mem, at } = tables4();
      run(long4(), mem, VA64, ACC_READ);
      expect([4, 3, 2, 1].map((l) => mem.read32(at[l]!) & (A | D))).toEqual([A, A, A, A]);
      const r = run(long4(), mem, VA64, ACC_WRITE);
      expect([4, 3, 2, 1].map((l) => mem.read32(at[l]!) & (A | D))).toEqual([A, A, A, A | D]);
      expect(r.dirty).toBe(true);
    });

    it('sets D in a 2 MiB PDE and a 4 MiB PDE, the leaf of a large page', () => {
      const mem = new SparsePhysicalMemory();
      const at = map64(mem, ROOT, 4, VA64, [{ lo: P | W }, { lo: P | W }, { lo: 0x40000000 | PS | P | W }]);
      run(long4(), mem, VA64, ACC_WRITE);
      expect([4, 3, 2].map((l) => mem.read32(at[l]!) & (A | D))).toEqual([A, A, A | D]);
      const m32 = new SparsePhysicalMemory();
      const [pde] = map32(m32, ROOT, VA32, 0x02000000 | PS | P | W, null);
      run(createPagingContext({ mode: MODE_LEGACY32, cr3: ROOT, cr4Pse: true }), m32, VA32, ACC_WRITE);
      expect(m32.read32(pde)).toBe(0x02000000 | PS | P | W | A | D);
    });

    it('changes nothing on a faulting walk (not present, reserved bit, rights)', () => {
      const mem = new SparsePhysicalMemory();
      map64(mem, ROOT, 4, VA64, [{ lo: P | W | U }, { lo: P | W | U }, { lo: P | W | U }]); // PTE not present
      const rec = new RecordingMemory(mem);
      expect(fault(run(long4(), rec, VA64, ACC_WRITE))).toBe(EC_W);
      const rsvd = new RecordingMemory(tables4(P | W | U, 1 << 19).mem);
      expect(fault(run(long4(), rsvd, VA64, ACC_WRITE))).toBe(EC_P | EC_W | EC_RSVD);
      const rights = new RecordingMemory(tables4(P | U).mem);
      expect(fault(run(long4(), rights, VA64, ACC_WRITE | ACC_USER))).toBe(EC_P | EC_W | EC_U);
      expect([rec.writes, rsvd.writes, rights.writes]).toEqual([[], [], []]);
    });

    it('never writes without WALK_SIDE_EFFECTS, and reports the leaf D bit as found', () => {
      const rec = new RecordingMemory(tables4().mem);
      const r = run(long4(), rec, VA64, ACC_WRITE, 0);
      expect([r.status, r.dirty, rec.writes.length]).toEqual([WALK_OK, false, 0]);
    });

    it('writes nothing when A (and D) are already set', () => {
      const rec = new RecordingMemory(tables4(P | W | U | A | D, 0, P | W | U | A).mem);
      expect(run(long4(), rec, VA64, ACC_WRITE).status).toBe(WALK_OK);
      expect(rec.writes).toEqual([]);
    });

    it('never sets A in memory behind the PAE PDPTE registers (§4.4.1)', () => {
      const mem = new SparsePhysicalMemory();
      mem.set64(ROOT + 8, 0x2000 | P, 0);
      const at = map64(mem, 0x2000, 2, VA32, [{ lo: P | W }, { lo: 0x2000000 | P | W }]);
      const ctx = createPagingContext({ mode: MODE_PAE, cr3: ROOT });
      loadPdptes(ctx, mem);
      run(ctx, mem, VA32, ACC_WRITE);
      expect(mem.get64(ROOT + 8)).toBe(BigInt(0x2000 | P));
      expect([mem.read32(at[2]!) & (A | D), mem.read32(at[1]!) & (A | D)]).toEqual([A, A | D]);
    });

    it('keeps every bit of an entry used at several levels (a self-referencing PML4E)', () => {
      // PML4E[5] points at the PML4 itself; with all four indices 5, the same entry is the PML4E, PDPTE,
      // PDE and PTE, and the page is the PML4 page. After a write it must hold both A and D.
      const mem = new SparsePhysicalMemory();
      mem.set64(ROOT + 5 * 8, ROOT | P | W, 0);
      const va = 5 * 2 ** 39 + 5 * 2 ** 30 + 5 * 2 ** 21 + 5 * 2 ** 12 + 0x10;
      const r = run(long4(), mem, va, ACC_WRITE);
      expect([r.status, r.pa]).toEqual([WALK_OK, ROOT + 0x10]);
      expect(mem.read32(ROOT + 5 * 8)).toBe(ROOT | P | W | A | D);
    });
  });

  describe('the second-stage seam (EPT/NPT, SDM Vol. 3C §29.3.3.2)', () => {
    /** Guest-physical x lives at host-physical x + 0x10000000; refuses `refuse` if given. */
    class OffsetStage implements SecondStage {
      readonly maxPhyAddr = 46;
      calls: Array<[number, boolean]> = [];
      constructor(private readonly refuse = -1) {}
      translate(gpa: number, _access: number, kind: number, _flags: number, out: WalkResult): number {
        const final = kind === NESTED_FINAL;
        this.calls.push([gpa, final]);
        if (gpa === this.refuse) {
          out.nestedGpa = gpa;
          out.nestedFinal = final;
          return -1;
        }
        out.nestedRights = 7;
        out.nestedDirty = true;
        return gpa + 0x10000000;
      }
    }

    function hostTables(): { host: SparsePhysicalMemory; guestAt: number[] } {
      const guest = new SparsePhysicalMemory();
      const guestAt = map64(guest, ROOT, 4, VA64, [{ lo: P | W }, { lo: P | W }, { lo: P | W }, { lo: 0x2000000 | P | W }]);
      const host = new SparsePhysicalMemory();
      for (const l of [4, 3, 2, 1]) {
        const pa = guestAt[l]!;
        host.set64(pa + 0x10000000, guest.read32(pa), guest.read32(pa + 4));
      }
      return { host, guestAt };
    }

    it('translates every paging-structure address (final=false) and the final address (final=true)', () => {
      const { host, guestAt } = hostTables();
      const stage = new OffsetStage();
      const r = run(long4({ nested: stage }), host, VA64, ACC_WRITE);
      expect([r.status, r.pa]).toEqual([WALK_OK, 0x12000abc]);
      expect(stage.calls).toEqual([
        [guestAt[4], false],
        [guestAt[3], false],
        [guestAt[2], false],
        [guestAt[1], false],
        [0x2000abc, true],
      ]);
      expect(host.read32(guestAt[1]! + 0x10000000) & (A | D)).toBe(A | D); // A/D land in the host copy
    });

    it('stops with WALK_NESTED_FAULT when the second stage refuses, writing nothing', () => {
      const { host, guestAt } = hostTables();
      const rec = new RecordingMemory(host);
      const r = run(long4({ nested: new OffsetStage(guestAt[2]) }), rec, VA64, ACC_WRITE);
      expect([r.status, r.nestedGpa, r.nestedFinal, rec.writes.length]).toEqual([WALK_NESTED_FAULT, guestAt[2], false, 0]);
      const f = run(long4({ nested: new OffsetStage(0x2000abc) }), rec, VA64, ACC_WRITE);
      expect([f.status, f.nestedFinal, rec.writes.length]).toEqual([WALK_NESTED_FAULT, true, 0]);
    });
  });
});

describe('rightsFault', () => {
  it('gives for each access kind the same error code as a walk of that kind (SDM Vol. 3A §4.6, §4.7)', () => {
    const { mem } = tables4(P | U, 1 << 27); // read-only user page, key 1
    const ctx = long4({ cr4Smep: true, cr4Smap: true, cr4Pke: true, pkru: 1 << 3, eferNxe: true, cr0Wp: true });
    const r = new WalkResult();
    ctx.cr4Smap = false; // a read by the supervisor succeeds and leaves the rights in r
    expect(walk(ctx, mem, VA64, ACC_READ, 0, r)).toBe(WALK_OK);
    ctx.cr4Smap = true;
    for (const access of [ACC_READ, ACC_WRITE, ACC_FETCH, ACC_USER, ACC_USER | ACC_WRITE, ACC_USER | ACC_FETCH]) {
      const w = new WalkResult();
      walk(ctx, mem, VA64, access, 0, w);
      expect(rightsFault(ctx, r, access)).toBe(w.status === WALK_OK ? 0 : w.errorCode);
    }
    expect(rightsFault(ctx, r, ACC_READ)).toBe(EC_P);
    expect(rightsFault(ctx, r, ACC_FETCH)).toBe(EC_P | EC_ID);
    expect(rightsFault(ctx, r, ACC_USER | ACC_WRITE)).toBe(EC_P | EC_W | EC_U | EC_PK);
    expect(rightsFault(ctx, r, ACC_USER)).toBe(0);
  });
});

describe('loadPdptes (SDM Vol. 3A §4.4.1, Table 4-8)', () => {
  const ctxAt = (cr3: number, maxPhyAddr = 36) => createPagingContext({ mode: MODE_PAE, cr3, maxPhyAddr });

  it('loads the four PDPTEs from the 32-byte-aligned table at CR3[31:5]', () => {
    const mem = new SparsePhysicalMemory();
    for (let i = 0; i < 4; i++) mem.set64(0x1020 + i * 8, (0x5000 + i * 0x1000) | P, i === 3 ? 0xf : 0);
    const ctx = ctxAt(0x1020 | 0x18); // bits 4:3 (PWT/PCD) are not part of the address
    expect(loadPdptes(ctx, mem)).toBe(true);
    expect([...ctx.pdpteLo]).toEqual([0x5001, 0x6001, 0x7001, 0x8001]);
    expect([...ctx.pdpteHi]).toEqual([0, 0, 0, 0xf]);
  });

  it('fails (#GP) on a present PDPTE with bits 2:1, 8:5 or 63:MAXPHYADDR set, leaving the registers unchanged', () => {
    for (const [lo, hi, m] of [
      [0x5000 | P | W, 0, 36],
      [0x5000 | P | U, 0, 36],
      [0x5000 | P | A, 0, 36],
      [0x5000 | P | PS, 0, 36],
      [0x5000 | P | G, 0, 36],
      [0x5000 | P, 1 << 4, 36],
      [0x5000 | P, 1 << 20, 52],
      [0x5000 | P, XD_HI, 52],
    ] as const) {
      const mem = new SparsePhysicalMemory();
      mem.set64(0x1000 + 16, lo, hi);
      const ctx = ctxAt(0x1000, m);
      ctx.pdpteLo[0] = 0x1234;
      expect(loadPdptes(ctx, mem), `lo=${lo.toString(16)} hi=${hi.toString(16)}`).toBe(false);
      expect([...ctx.pdpteLo]).toEqual([0x1234, 0, 0, 0]);
    }
  });

  it('accepts reserved bits in a not-present PDPTE and PCD/PWT in a present one', () => {
    const mem = new SparsePhysicalMemory();
    mem.set64(0x1000, 0xffe, 0xffffffff); // not present
    mem.set64(0x1008, 0x5000 | 0x18 | 0xe00 | P, 0xf); // PWT, PCD, bits 11:9 ignored; bits 35:32 of the address
    const ctx = ctxAt(0x1000);
    expect(loadPdptes(ctx, mem)).toBe(true);
    expect([...ctx.pdpteLo.slice(0, 2)]).toEqual([0xffe, 0x5e19]);
  });
});

describe('createPagingContext', () => {
  // SDM Vol. 3A §4.1.4: MAXPHYADDR is CPUID.80000008H:EAX[7:0] ("generally 36" with PAE when that leaf is
  // missing) and "is at most 52"; the model takes 36..52.
  it('fills defaults and rejects a MAXPHYADDR outside 36..52 (SDM Vol. 3A §4.1.4)', () => {
    const ctx = createPagingContext({ mode: MODE_PAE, pdpteLo: [1, 2, 3, 4] });
    expect([ctx.mode, ctx.maxPhyAddr, ctx.nested, [...ctx.pdpteLo]]).toEqual([MODE_PAE, 46, null, [1, 2, 3, 4]]);
    expect(() => createPagingContext({ maxPhyAddr: 35 })).toThrow(RangeError);
    expect(() => createPagingContext({ maxPhyAddr: 53 })).toThrow(/outside 36..52/);
  });
});
