import { CR0_WP, CR4_PKE, CR4_SMAP, CR4_SMEP, EFER_NXE, type MmuEvent } from '@vmexit/core';
import { ROLE_LEVEL_MASK } from '@vmexit/core/mmu';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { A, D, P, PS, U, W } from './harness.js';
import { LongTables, parityGuest, runBoth, type ParityGuest, type ParityOptions } from './parity.js';

/*
 * The guest must not be able to tell that it runs under shadow paging: the same 64-bit guest (4- and 5-level
 * paging) run natively and under the shadow MMU sees the same #PFs, with the same error codes, and reads the
 * same data, across changes of its leaf ptes (written by the guest itself, so through the MMU's write
 * tracking), CR0.WP, CR4.SMEP/SMAP/PKE, EFLAGS.AC, PKRU and EFER.NXE.
 */

/**
 * A 4 KiB page, one in the upper half of the canonical space (0xffffffff80001000: PML4/PML5 index 511), and one
 * 2 MiB page (a direct shadow page below it).
 */
const PAGES = [0x40000000, -0x7ffff000, 0x40200000];
/** The same for a 32-bit guest: 0x80001000 in the upper half, and a 4 MiB page (PSE) for 32-bit paging. */
const PAGES_32 = [0x40000000, 0x80001000, 0x40200000];
const PAGES_LEGACY32 = [0x40000000, 0x80001000, 0x40400000];

/** One step of the guest, on vCPU `cpu`. */
type Op = { cpu: number } & (
  | { k: 'map'; i: number; w: boolean; u: boolean; xd: boolean; key: number; d: boolean; large: boolean }
  | { k: 'read' | 'write' | 'fetch'; i: number; cpl: 0 | 3 }
  | { k: 'cr0' }
  | { k: 'cr4'; bit: number }
  | { k: 'ac' }
  | { k: 'pkru'; v: number }
  | { k: 'nxe' }
  | { k: 'flush' }
);

const page = fc.integer({ min: 0, max: 2 });
const stepArb = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      k: fc.constant('map' as const),
      i: page,
      w: fc.boolean(),
      u: fc.boolean(),
      xd: fc.boolean(),
      key: fc.integer({ min: 0, max: 1 }),
      d: fc.boolean(),
      large: fc.boolean(),
    }),
  },
  {
    weight: 8,
    arbitrary: fc.record({ k: fc.constantFrom('read' as const, 'write' as const, 'fetch' as const), i: page, cpl: fc.constantFrom(0 as const, 3 as const) }),
  },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('cr0' as const) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('cr4' as const), bit: fc.constantFrom(CR4_SMEP, CR4_SMAP, CR4_PKE) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('ac' as const) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('pkru' as const), v: fc.constantFrom(0, 1, 2, 4, 8) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('nxe' as const) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('flush' as const) }) },
);
/** A step on vCPU 0, or with 2 vCPUs on either (each has its own control registers, PKRU and EFLAGS.AC). */
const opArb = (vcpus: number): fc.Arbitrary<Op> => fc.tuple(stepArb, fc.integer({ min: 0, max: vcpus - 1 })).map(([o, cpu]) => ({ ...o, cpu }) as Op);

export function script(ops: readonly Op[], paging?: 'legacy32' | 'pae'): (g: ParityGuest) => void {
  const pages = paging === 'legacy32' ? PAGES_LEGACY32 : paging === 'pae' ? PAGES_32 : PAGES;
  return (g) => {
    for (const o of ops) {
      const v = g.machine.vcpus[o.cpu]!;
      switch (o.k) {
        case 'map': {
          // The guest writes its own pte (two stores, high half first) and flushes the TLB of every vCPU (a CR3
          // write each: a shootdown, so that no vCPU may natively keep the old translation).
          const large = o.large && o.i === 2;
          const e = g.pt.entryAddr(pages[o.i]!, large ? 2 : 1);
          const pa = large ? (paging === 'legacy32' ? 0xc00000 : 0xa00000) : 0x900000 + o.i * 0x1000;
          // A 4-byte gpte has no high half (no XD, no key); PAE has XD, and bits 62:59 are reserved there.
          if (paging !== 'legacy32') g.write(e + 4, ((o.xd ? 1 << 31 : 0) | (o.key << 27)) >>> 0, 0, o.cpu);
          g.write(e, (pa | P | A | (o.w ? W : 0) | (o.u ? U : 0) | (o.d ? D : 0) | (large ? PS : 0)) >>> 0, 0, o.cpu);
          for (const each of g.machine.vcpus) each.movToCr3(g.pt.root);
          break;
        }
        case 'read':
          g.read(pages[o.i]! + 8, o.cpl, o.cpu);
          break;
        case 'write':
          g.write(pages[o.i]! + 8, 1234 + o.i, o.cpl, o.cpu);
          break;
        case 'fetch':
          g.fetch(pages[o.i]! + 8, o.cpl, o.cpu);
          break;
        case 'cr0': // toggles CR0.WP
          v.movToCr0(v.cr0 ^ CR0_WP);
          break;
        case 'cr4': // toggles SMEP, SMAP or PKE
          v.movToCr4(v.cr4 ^ o.bit);
          break;
        case 'ac': // STAC / CLAC
          v.setAc(!v.rflagsAc);
          break;
        case 'pkru':
          v.wrpkru(o.v);
          break;
        case 'nxe':
          v.writeEfer(v.efer ^ EFER_NXE);
          break;
        case 'flush':
          v.movToCr3(g.pt.root);
          break;
      }
    }
    // The guest's entries after the run (A and D as the walks left them, SDM Vol. 3A §4.8): every level of
    // each page's translation, read without a walk.
    for (const va of pages) {
      for (let level = g.pt instanceof LongTables ? g.pt.levels : 2; level >= 1; level--) {
        const e = g.pt.entryAddr(va, level);
        g.log.push(`pte ${level} ${g.machine.memory.read32(e).toString(16)}`);
        if ((g.machine.memory.read32(e) & (P | PS)) !== P) break;
      }
    }
  };
}

/** The MMU decisions a run is made under: the defaults, update-spte on every pte write, unsync and prefetch. */
const DECIDERS: readonly (readonly [string, ParityOptions['decider']])[] = [
  ['default decisions', null],
  ['update-spte', (ev: MmuEvent) => (ev.kind === 'pte-write' ? 'update-spte' : null)],
  ['unsync + prefetch', (ev: MmuEvent) => (ev.kind === 'unsync' || ev.kind === 'prefetch' ? true : null)],
];
const EXTRAS: readonly ParityOptions[] = [{}, { bypass: true }, { fastDirtyLog: true }, { vcpus: 2 }, { vcpus: 2, bypass: true }];

describe('ShadowMmu parity with the native CPU', () => {
  for (const levels of [4, 5] as const) {
    for (const [name, decider] of DECIDERS) {
      for (const extra of EXTRAS) {
        it(`${levels}-level paging, ${name}${extra.bypass === true ? ', bypass encoding' : ''}${extra.fastDirtyLog === true ? ', fast page fault with dirty logging' : ''}${extra.vcpus === 2 ? ', 2 vCPUs' : ''}: same faults and data (property)`, () => {
          fc.assert(
            fc.property(fc.array(opArb(extra.vcpus ?? 1), { minLength: 1, maxLength: 30 }), fc.boolean(), (ops, wp) => {
              const r = runBoth({ levels, decider, wp, ...extra }, script(ops));
              expect(r.shadow).toEqual(r.native);
            }),
            { numRuns: 150, seed: 0x5eed + levels },
          );
        });
      }
    }
  }

  for (const paging of ['legacy32', 'pae'] as const) {
    for (const [name, decider] of DECIDERS) {
      for (const extra of EXTRAS) {
        if (paging === 'legacy32' && extra.bypass === true) continue; // 4-byte-gpte pages hold no notrap sptes
        it(`${paging} paging, ${name}${extra.bypass === true ? ', bypass encoding' : ''}${extra.fastDirtyLog === true ? ', fast page fault with dirty logging' : ''}${extra.vcpus === 2 ? ', 2 vCPUs' : ''}: same faults and data (property)`, () => {
          fc.assert(
            fc.property(fc.array(opArb(extra.vcpus ?? 1), { minLength: 1, maxLength: 30 }), fc.boolean(), (ops, wp) => {
              const r = runBoth({ paging, decider, wp, ...extra }, script(ops, paging));
              expect(r.shadow).toEqual(r.native);
            }),
            { numRuns: 150, seed: paging === 'pae' ? 0x5eed : 0x5eee },
          );
        });
      }
    }
  }

  describe('5-level paging (CR4.LA57)', () => {
    it('shadows a PML5 with a level-5 root, and tracks a guest write to a PML5 entry', () => {
      const script5 = (g: ParityGuest): void => {
        const va = 2 ** 48 * 3 + 0x5000; // PML5 index 3 (VA bits 56:48)
        const va2 = 2 ** 48 * 4 + 0x5000; // PML5 index 4
        g.pt.map(va, 0x900000, P | W | U | A | D);
        g.pt.map(va2, 0x901000, P | W | U | A | D);
        g.machine.memory.write32(0x900000, 11);
        g.machine.memory.write32(0x901000, 22);
        g.read(va, 3);
        // The guest points PML5 entry 3 at the PML4 of entry 4 (a store into its root table), then flushes.
        g.write(g.pt.root + 3 * 8, g.machine.memory.read32(g.pt.root + 4 * 8));
        g.vcpu.movToCr3(g.pt.root);
        g.read(va, 3);
        // Not present: a user read faults P=0|U.
        g.write(g.pt.root + 3 * 8, 0);
        g.vcpu.movToCr3(g.pt.root);
        g.read(va, 3);
      };
      const n = parityGuest(false, { levels: 5 });
      script5(n);
      expect(n.log).toEqual(['11', 'ok', '22', 'ok', '#PF 4']);
      const s = parityGuest(true, { levels: 5 });
      script5(s);
      expect(s.log).toEqual(n.log);
      const h = s.h!;
      // Exits (5 #PFs, 2 CR3 writes): 1 the first read (no spte: the fault builds levels 4 to 1 below the level-5
      // root, pf_fixed); 2 the first PML5 store (the identity mapping of the table has no spte yet, and its gfn is
      // a shadowed upper-level table: mapped read-only and the store emulated, mmu_pte_write, the root's spte 3
      // cleared, mmu_pde_zapped as the written gpte is present); 3 the read after the CR3 write (pf_fixed through
      // the new PML5 entry); 4 the second PML5 store (the read-only spte: page-track, emulated, mmu_pte_write);
      // 5 the read (the guest walk finds PML5 entry 3 not present: injected).
      expect(s.mmu!.states[0]!.root!.role & ROLE_LEVEL_MASK).toBe(5);
      expect(h.c('pf_fixed')).toBe(2);
      expect(h.c('pf_emulate')).toBe(2);
      expect(h.c('mmu_pte_write')).toBe(2);
      expect(h.c('mmu_pde_zapped')).toBe(1);
      expect(h.c('pf_guest')).toBe(1);
      expect(h.e('cr3')).toBe(2);
      expect(h.e('pf')).toBe(5);
    });
  });
});
