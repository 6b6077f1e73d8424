import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_LA57,
  CR4_PAE,
  CR4_PCIDE,
  CR4_PGE,
  CR4_PKE,
  CR4_PSE,
  CR4_SMAP,
  CR4_SMEP,
  EFER_LME,
  EFER_NXE,
} from '../../src/arch/constants.js';
import { GuestAbort } from '../../src/machine/errors.js';
import type { Vcpu } from '../../src/machine/vcpu.js';
import { Machine } from '../../src/machine/machine.js';
import { loadRam, ramBytes, ramView } from '../machine/tables.js';

/*
 * SDM Vol. 3A §4.10: the TLB caches translations, and while the paging structures do not change, what an
 * access does cannot depend on what the TLB holds. Entries are only "stale" when software changed the tables
 * without invalidating (§4.10.4.3), which these scenarios never do: the page tables stay fixed (but for the
 * A/D bits the accesses themselves set, §4.8), and every control-bit change the TLB's permission bits depend on
 * goes through the vCPU, which invalidates as §4.10.4.1 requires or more (CR0.WP, CR4.PGE/SMEP/SMAP/PKE,
 * EFLAGS.AC via STAC/CLAC, WRPKRU; §4.10.2.2 lets a processor drop entries at any time).
 *
 * Each scenario: a paging mode (32-bit paging with CR4.PSE, PAE, 4-level, 5-level), random tables for six
 * linear addresses that share upper-level tables (4 KiB, 2 MiB / 4 MiB and 1 GiB pages; random P, R/W, U/S, XD,
 * G, A, D, protection keys, and an occasional reserved bit), random CR0.WP, CR4.PGE/PCIDE/SMEP/SMAP/PKE,
 * EFER.NXE, EFLAGS.AC and PKRU, and a random sequence of user and supervisor reads, writes and fetches mixed
 * with CR3 writes (other PCIDs, with and without the no-flush bit, the same tables), INVLPG, WP/PGE/SMEP/SMAP/PKE
 * toggles, STAC/CLAC and WRPKRU. It runs twice on fresh machines: once as is, and once with the TLB flushed before
 * every access (always a cold TLB: every access is a walk). Each access's outcome (the value read, so the
 * physical address; or the exception vector, #PF error code and CR2) and the final memory (data, and the tables'
 * A/D bits) must be the same.
 */

const RAM = 4 * 1024 * 1024;
/** Data frames lie below 3 MiB, the tables above: no access writes a paging structure. */
const DATA_TOP = 3 * 1024 * 1024;
const TABLES = DATA_TOP;
/** Every data word holds its own physical address + 1, so a read shows where the access went. */
const TEMPLATE = (() => {
  const words = new Uint32Array(DATA_TOP / 4);
  for (let i = 0; i < words.length; i++) words[i] = i * 4 + 1;
  return new Uint8Array(words.buffer);
})();

type ModeName = 'legacy32' | 'pae' | 'long4' | 'long5';
const MODES: readonly ModeName[] = ['legacy32', 'pae', 'long4', 'long5'];
const SLOTS = 6;

const levelArb = fc.record({
  present: fc.integer({ min: 0, max: 15 }), // 0: not present (1 in 16)
  rw: fc.integer({ min: 0, max: 3 }), // 0: read-only
  us: fc.integer({ min: 0, max: 3 }), // 0: supervisor
  xd: fc.integer({ min: 0, max: 7 }), // 0: XD
  rsvd: fc.integer({ min: 0, max: 39 }), // 0: a reserved bit
  a: fc.boolean(),
  d: fc.boolean(),
});
type LevelSpec = typeof levelArb extends fc.Arbitrary<infer T> ? T : never;

const slotArb = fc.record({
  /** Table indices from the top level down; small, so that slots share tables and entries. */
  idx: fc.array(fc.integer({ min: 0, max: 1 }), { minLength: 5, maxLength: 5 }),
  /** The top index: 1 or 0x1ff (4/5-level: the upper half, negative signed-canonical addresses); PAE: 0..3. */
  top: fc.integer({ min: 0, max: 3 }),
  /** 1: a 4 KiB page; 2: 4 MiB (32-bit) or 2 MiB; 3: 1 GiB (4/5-level only). */
  leaf: fc.constantFrom(1, 1, 2, 3),
  levels: fc.array(levelArb, { minLength: 5, maxLength: 5 }),
  global: fc.boolean(),
  pkey: fc.integer({ min: 0, max: 3 }),
  frame: fc.integer({ min: 0, max: DATA_TOP / 4096 - 1 }),
  bigFrame: fc.integer({ min: 0, max: 1 }),
});
type SlotSpec = typeof slotArb extends fc.Arbitrary<infer T> ? T : never;

const opArb = fc.oneof(
  {
    weight: 12,
    arbitrary: fc.record({
      op: fc.constant('access' as const),
      slot: fc.constantFrom(0, 0, 0, 1, 1, 2, 3, 4, 5), // some addresses more often, so that the TLB hits
      off: fc.integer({ min: 0, max: 511 }),
      kind: fc.constantFrom('read', 'write', 'fetch'),
      user: fc.boolean(),
      value: fc.integer({ min: 0, max: 0xffffffff }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('cr3' as const),
      pcid: fc.integer({ min: 0, max: 3 }),
      noFlush: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('invlpg' as const),
      slot: fc.integer({ min: 0, max: SLOTS - 1 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('toggle' as const),
      what: fc.constantFrom('wp', 'pge', 'smep', 'smap', 'pke', 'ac'),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant('wrpkru' as const), value: fc.integer({ min: 0, max: 0xff }) }),
  },
);
type Op = typeof opArb extends fc.Arbitrary<infer T> ? T : never;

const scenarioArb = fc.record({
  mode: fc.constantFrom(...MODES),
  slots: fc.array(slotArb, { minLength: SLOTS, maxLength: SLOTS }),
  wp: fc.boolean(),
  pge: fc.boolean(),
  pcide: fc.boolean(),
  smep: fc.boolean(),
  smap: fc.boolean(),
  pke: fc.boolean(),
  nxe: fc.boolean(),
  ac: fc.boolean(),
  pkru: fc.integer({ min: 0, max: 0xff }), // keys 0..3, the ones the leaves use
  ops: fc.array(opArb, { minLength: 20, maxLength: 60 }),
});
type Scenario = typeof scenarioArb extends fc.Arbitrary<infer T> ? T : never;

interface Layout {
  /** Levels walked from memory, top first (PAE: 2, below the PDPTE registers). */
  top: number;
  entryBytes: 4 | 8;
  /** log2 of the bytes one entry of `level` maps. */
  shift: (level: number) => number;
}
const LAYOUTS: Record<ModeName, Layout> = {
  legacy32: { top: 2, entryBytes: 4, shift: (l) => 12 + 10 * (l - 1) },
  pae: { top: 2, entryBytes: 8, shift: (l) => 12 + 9 * (l - 1) },
  long4: { top: 4, entryBytes: 8, shift: (l) => 12 + 9 * (l - 1) },
  long5: { top: 5, entryBytes: 8, shift: (l) => 12 + 9 * (l - 1) },
};

/** The linear address of slot `s` (signed-canonical in 4/5-level paging). */
function slotVa(mode: ModeName, s: SlotSpec): number {
  const lay = LAYOUTS[mode];
  let va = mode === 'pae' ? s.top * 2 ** 30 : 0;
  for (let level = lay.top; level >= 1; level--) {
    const i = level === lay.top && (mode === 'long4' || mode === 'long5') ? (s.top % 2 === 0 ? 1 : 0x1ff) : s.idx[level - 1]!;
    va += i * 2 ** lay.shift(level);
  }
  if (mode === 'long4' && va >= 2 ** 47) va -= 2 ** 48; // bits 63:47 copy bit 47
  if (mode === 'long5' && va >= 2 ** 56) va -= 2 ** 57;
  return va;
}

/**
 * Builds the tables of `sc` in `m`'s memory and returns the root (CR3 without PCID) and the slots' addresses.
 * An entry two slots share is the first slot's; a slot that meets a leaf or a not-present entry stops there.
 */
function buildTables(m: Machine, sc: Scenario): { root: number; vas: number[] } {
  const mode = sc.mode;
  const lay = LAYOUTS[mode];
  const view = ramView(m.memory);
  let next = TABLES;
  const alloc = () => {
    const t = next;
    next += 4096;
    return t;
  };
  const written = new Set<number>();
  const root = alloc();
  const pdpt = new Map<number, number>(); // PAE: PDPTE index -> page directory
  if (mode === 'pae') {
    // The four PDPTEs at CR3 (§4.4.1): P and the address only (bits 2:1 and 8:5 are reserved), so the load works.
    for (const s of sc.slots) {
      if (pdpt.has(s.top)) continue;
      const pd = alloc();
      pdpt.set(s.top, pd);
      view.setUint32(root + s.top * 8, pd | (s.levels[4]!.present === 0 ? 0 : 1), true);
    }
  }
  const vas = sc.slots.map((s) => slotVa(mode, s));
  sc.slots.forEach((s, k) => {
    const u = BigInt.asUintN(64, BigInt(vas[k]!));
    let table = mode === 'pae' ? pdpt.get(s.top)! : root;
    if (mode === 'pae' && (view.getUint32(root + s.top * 8, true) & 1) === 0) return;
    for (let level = lay.top; level >= 1; level--) {
      const bitsPerLevel = mode === 'legacy32' ? 10n : 9n;
      const index = Number((u >> BigInt(lay.shift(level))) & ((1n << bitsPerLevel) - 1n));
      const pa = table + index * lay.entryBytes;
      const large = level === s.leaf && level > 1 && (level === 2 || (level === 3 && (mode === 'long4' || mode === 'long5')));
      const isLeaf = level === 1 || large;
      if (written.has(pa)) {
        const lo = view.getUint32(pa, true);
        if ((lo & 1) === 0 || (level > 1 && (lo & 0x80) !== 0)) return; // not present, or a large leaf
        table = lo & 0xfffff000;
        continue;
      }
      written.add(pa);
      const e: LevelSpec = s.levels[level - 1]!;
      let addr: number;
      if (!isLeaf) addr = alloc();
      else if (level === 1) addr = s.frame * 4096;
      else if (level === 2)
        addr = mode === 'legacy32' ? 0 : s.bigFrame * 2 * 1024 * 1024; // below 3 MiB with the offset
      else addr = 0; // 1 GiB: the offset is below 3 MiB (lower indices 0..1)
      let lo = addr | (e.present === 0 ? 0 : 0x1) | (e.rw === 0 ? 0 : 0x2) | (e.us === 0 ? 0 : 0x4) | (e.a ? 0x20 : 0);
      let hi = 0;
      if (isLeaf) {
        lo |= (e.d ? 0x40 : 0) | (s.global ? 0x100 : 0) | (large ? 0x80 : 0);
        if (mode === 'long4' || mode === 'long5') hi |= s.pkey << 27; // bits 62:59 (§4.6.2); reserved in PAE
      }
      if (lay.entryBytes === 8) {
        if (e.xd === 0) hi |= 0x80000000; // XD; a reserved bit when EFER.NXE = 0
        if (e.rsvd === 0) hi |= 1 << 19; // bit 51: reserved with MAXPHYADDR 46
      } else if (e.rsvd === 0 && large) {
        lo |= 1 << 21; // PSE-36: bit 21 of a 4 MiB PDE is always reserved (Table 4-4)
      }
      view.setUint32(pa, lo >>> 0, true);
      if (lay.entryBytes === 8) view.setUint32(pa + 4, hi >>> 0, true);
      if (isLeaf || e.present === 0) return;
      table = addr;
    }
  });
  return { root, vas };
}

interface Seen {
  hits: number;
  ok: number;
  notPresent: number;
  rights: number;
  rsvd: number;
  pk: number;
  large: number;
}

/** Runs `sc` on a fresh machine; `cold` flushes the TLB before every access. The log of what the guest saw, and the memory. */
function run(sc: Scenario, cold: boolean, seen?: Seen): { log: unknown[]; memory: Buffer } {
  const m = new Machine({ memoryBytes: RAM, maxPhyAddr: 46 });
  loadRam(m.memory, TEMPLATE);
  const { root, vas } = buildTables(m, sc);
  const v: Vcpu = m.vcpus[0]!;
  const long = sc.mode === 'long4' || sc.mode === 'long5';
  const pcide = long && sc.pcide; // CR4.PCIDE needs IA-32e mode (§4.10.1)
  const log: unknown[] = [];
  v.setExceptionHandler(14, (_v, vector, ec, cr2) => {
    log.push(['#PF', vector, ec, cr2]);
    throw new GuestAbort('SIGSEGV');
  });
  v.setExceptionHandler(13, (_v, vector, ec) => {
    log.push(['#GP', vector, ec]);
    throw new GuestAbort('SIGSEGV');
  });
  v.writeEfer((long ? EFER_LME : 0) | (sc.nxe && sc.mode !== 'legacy32' ? EFER_NXE : 0));
  v.movToCr4(
    (sc.mode === 'legacy32' ? CR4_PSE : CR4_PAE | CR4_PSE) |
      (sc.mode === 'long5' ? CR4_LA57 : 0) |
      (sc.pge ? CR4_PGE : 0) |
      (sc.smep ? CR4_SMEP : 0) |
      (sc.smap ? CR4_SMAP : 0) |
      (sc.pke && long ? CR4_PKE : 0),
  );
  v.movToCr3(root);
  v.movToCr0(CR0_PG | CR0_PE | (sc.wp ? CR0_WP : 0));
  // PCIDE only once in IA-32e mode, with CR3[11:0] = 0 (§4.10.1; otherwise MOV to CR4 is a #GP, Vol. 2B MOV).
  if (pcide) v.movToCr4(v.cr4 | CR4_PCIDE);
  v.wrpkru(sc.pkru);
  v.setAc(sc.ac);
  expect(v.mode).toBe(MODES.indexOf(sc.mode)); // MODE_LEGACY32 = 0 .. MODE_LONG5 = 3
  const cr4Bit = { pge: CR4_PGE, smep: CR4_SMEP, smap: CR4_SMAP, pke: CR4_PKE } as const;
  for (const o of sc.ops as Op[]) {
    switch (o.op) {
      case 'access': {
        if (cold) {
          v.tlb.flushAll(false);
          expect(v.tlb.validEntries()).toBe(0);
        }
        const va = vas[o.slot]! + o.off * 8;
        v.setCpl(o.user ? 3 : 0);
        const hits = v.tlb.hits;
        try {
          if (o.kind === 'read') log.push(['r', va, v.read(va, 8), v.valueHi]);
          else if (o.kind === 'fetch') log.push(['x', va, v.fetch(va, 4)]);
          else {
            v.write(va, 4, o.value);
            log.push(['w', va]);
          }
          if (seen !== undefined) seen.ok++;
        } catch (e) {
          if (!(e instanceof GuestAbort)) throw e;
          if (seen !== undefined) {
            const ec = v.deliverErrorCode;
            if ((ec & 1) === 0) seen.notPresent++;
            else if ((ec & 8) !== 0) seen.rsvd++;
            else if ((ec & 0x20) !== 0) seen.pk++;
            else seen.rights++;
          }
        }
        if (seen !== undefined) seen.hits += v.tlb.hits - hits;
        break;
      }
      case 'cr3':
        v.movToCr3(root + (pcide ? o.pcid : 0), pcide && o.noFlush);
        break;
      case 'invlpg':
        v.invlpg(vas[o.slot]!);
        break;
      case 'toggle':
        if (o.what === 'wp') v.movToCr0(v.cr0 ^ CR0_WP);
        else if (o.what === 'ac') v.setAc(!v.rflagsAc);
        else if (o.what !== 'pke' || long) v.movToCr4(v.cr4 ^ cr4Bit[o.what]);
        break;
      case 'wrpkru':
        v.wrpkru(o.value);
        break;
    }
  }
  if (seen !== undefined) seen.large += sc.slots.filter((s) => s.leaf > 1).length;
  return { log, memory: ramBytes(m.memory) };
}

describe('Vcpu', () => {
  describe('TLB independence over every paging mode (property, SDM Vol. 3A §4.10)', () => {
    it('gives every access the same outcome and leaves the same memory with a warm TLB as with a cold one', () => {
      const seen: Seen = { hits: 0, ok: 0, notPresent: 0, rights: 0, rsvd: 0, pk: 0, large: 0 };
      const hitsPerMode = new Map<ModeName, number>();
      fc.assert(
        fc.property(scenarioArb, (sc) => {
          const hits = seen.hits;
          const warm = run(sc, false, seen);
          hitsPerMode.set(sc.mode, (hitsPerMode.get(sc.mode) ?? 0) + seen.hits - hits);
          const cold = run(sc, true);
          expect(warm.log).toEqual(cold.log);
          // The memory: data, and the A/D bits in the tables (the first differing word, if any).
          if (!warm.memory.equals(cold.memory)) {
            expect(warm.memory.findIndex((b, i) => b !== cold.memory[i]!)).toBe(-1);
          }
        }),
        { seed: 0x7b_1e55, numRuns: 300 },
      );
      // The scenarios are not vacuous: the warm run hit the TLB often, and accesses succeeded and faulted in
      // every way (not present, rights, reserved bit, protection key), in every mode, with large pages.
      expect(seen.ok).toBeGreaterThan(1000);
      for (const k of ['notPresent', 'rights', 'rsvd', 'pk'] as const) expect(seen[k], k).toBeGreaterThan(50);
      expect(seen.large).toBeGreaterThan(300);
      for (const mode of MODES) expect(hitsPerMode.get(mode), mode).toBeGreaterThan(50);
    });
  });
});
