import type { PagingModeName } from '../arch/modes.js';
import { ACC_FETCH, ACC_USER, ACC_WRITE } from '../arch/constants.js';
import { createNativeVectorMachine, type AccessOutcome } from './machine.js';
import { observeVector } from './runner.js';
import type { ConformanceVector, VectorMemoryEntry, VectorOutcome } from './vector.js';

/*
 * Generated paging vectors, built the way kvm-unit-tests' x86/access.c builds its matrix (`ac_test_t`,
 * `ac_test_setup_ptes`): upper levels fully permissive (P|W|U|A), the PDE and the PTE (or the large-page PDE)
 * from a set of flags, a CPU state from more flags, and one access (twice with AC_ACCESS_TWICE). The flags
 * are access.c's, named as it names them (pte.p, pde.pse, pku.wd, cr4.smap, ...), plus CR4.SMAP with
 * EFLAGS.AC (access.c tests SMAP in a separate function) and a MAXPHYADDR and paging mode per case.
 *
 * A vector's `expect` is the native outcome (the architectural walker): the generated vectors are for
 * differential runs (the same vector natively and under a hypervisor variant), where the native walker is
 * the reference, and they are valid input for `vmexit conformance`.
 */

/** access.c's flags, in the bit order of `AccessCaseFlags` (bit i = ACCESS_CASE_FLAGS[i]). */
export const ACCESS_CASE_FLAGS = [
  'pte.p',
  'pte.rw',
  'pte.user',
  'pte.a',
  'pte.d',
  'pte.nx',
  'pte.51',
  'pte.36',
  'pte.pkey',
  'pde.p',
  'pde.rw',
  'pde.user',
  'pde.a',
  'pde.d',
  'pde.pse',
  'pde.nx',
  'pde.51',
  'pde.36',
  'pde.13',
  'pku.ad',
  'pku.wd',
  'write',
  'user',
  'fetch',
  'twice',
  'efer.nx',
  'cr0.wp',
  'cr4.smep',
  'cr4.smap',
  'cr4.pke',
  'eflags.ac',
] as const;

/** One of access.c's flags (`pte.p`, `pde.pse`, `pku.wd`, `cr4.smap`, `twice`, ...). */
export type AccessCaseFlag = (typeof ACCESS_CASE_FLAGS)[number];

/** The number of flags: a case's flags are an integer below 2^ACCESS_CASE_FLAG_COUNT. */
export const ACCESS_CASE_FLAG_COUNT = ACCESS_CASE_FLAGS.length;

const bitOf = (name: AccessCaseFlag): number => 2 ** ACCESS_CASE_FLAGS.indexOf(name);

/** One generated case: a paging mode, the guest's MAXPHYADDR and the access.c flags. */
export interface AccessCase {
  /** The paging mode. */
  mode: PagingModeName;
  /** The guest's MAXPHYADDR (CPUID.80000008H:EAX[7:0]). */
  maxPhyAddr: 36 | 46 | 52;
  /** Bit i set = flag ACCESS_CASE_FLAGS[i]. */
  flags: number;
}

/** The MAXPHYADDR values the sweep crosses every flag combination with: the architecture's least (36) and most (52), and the common 46. */
export const ACCESS_CASE_MAXPHYADDRS = [36, 46, 52] as const;

/** The linear address of every 32-bit case (access.c's is in the same spirit: every index and offset nonzero). */
const VA32 = 0x56789abc;
/** The linear address of the IA-32e cases: nonzero indices at every level, user half. */
const VA64 = 0x0000_2345_6789_abcn;
/** The data frame a 4 KiB leaf maps, and the frame a large page maps (aligned to 4 MiB and 1 GiB-safe). */
const DATA_FRAME = 0x0200_0000n;
const LARGE_FRAME = 0x4000_0000n;
const BIT51 = 1n << 51n;
const BIT36 = 1n << 36n;
const NX = 1n << 63n;

function has(flags: number, name: AccessCaseFlag): boolean {
  return Math.floor(flags / bitOf(name)) % 2 === 1;
}

/** The flags of `c` that mean something in its mode (a 4-byte entry has no bit 36, 51, 63 or key). */
export function effectiveFlags(c: AccessCase): number {
  let f = c.flags;
  const clear = (name: AccessCaseFlag) => {
    if (has(f, name)) f -= bitOf(name);
  };
  // access.c: a fetch is not a write (AC_ACCESS_WRITE and AC_ACCESS_FETCH are exclusive).
  if (has(f, 'write')) clear('fetch');
  if (c.mode === 'legacy32') {
    for (const n of ['pte.nx', 'pte.51', 'pte.36', 'pte.pkey', 'pde.nx', 'pde.51'] as const) clear(n);
    // PSE-36: bits 20:13 of a 4 MiB PDE are physical-address bits 39:32; pde.36 is bit 17 there (PA bit 36).
    if (!has(f, 'pde.pse')) {
      clear('pde.36');
      clear('pde.13');
    }
  }
  return f;
}

/** A short name for a case: its mode, MAXPHYADDR and the flags set (access.c's `ac_test_show` style). */
export function accessCaseId(c: AccessCase): string {
  const f = effectiveFlags(c);
  const names = ACCESS_CASE_FLAGS.filter((n) => has(f, n));
  return `${c.mode}/m${c.maxPhyAddr}/${names.length === 0 ? '-' : names.join('+')}`;
}

/**
 * The vector of case `c` (its `expect` is the native outcome, see observeAccessCase). Tables: CR3 = 0x1000,
 * then one page per level at 0x2000, 0x3000, ... (PAE: the PDPTEs at CR3, loaded from memory); a PDE with
 * pde.36 / pde.51 points its page table at that address bit too, as access.c's do.
 */
export function accessCaseVector(c: AccessCase, file = '(generated)', line = 0): ConformanceVector {
  const f = effectiveFlags(c);
  const is = (n: AccessCaseFlag) => has(f, n);
  const mode = c.mode;
  const is32 = mode === 'legacy32' || mode === 'pae';
  const entrySize = mode === 'legacy32' ? 4 : 8;
  const va = is32 ? BigInt(VA32) : VA64;
  const levels = mode === 'legacy32' ? 2 : mode === 'pae' ? 3 : mode === 'long4' ? 4 : 5;
  const indexOf = (level: number): bigint => {
    if (mode === 'legacy32') return (va >> (level === 2 ? 22n : 12n)) & 1023n;
    if (mode === 'pae' && level === 3) return (va >> 30n) & 3n;
    return (va >> BigInt(12 + 9 * (level - 1))) & 511n;
  };
  const memory: VectorMemoryEntry[] = [];
  // Upper levels: table at 0x1000 * (levels - level + 1), each entry pointing at the next page, P|W|U|A
  // (a PAE PDPTE has only P: its bits 2:1 and 8:5 are reserved, SDM Vol. 3A §4.4.1).
  let table = 0x1000n;
  for (let level = levels; level > 2; level--) {
    const next = table + 0x1000n;
    const value = mode === 'pae' ? next | 1n : next | 0x27n;
    memory.push({ pa: table + indexOf(level) * BigInt(entrySize), value, size: entrySize as 4 | 8 });
    table = next;
  }
  // The PDE.
  const pse = is('pde.pse');
  let pde = (is('pde.p') ? 1n : 0n) | (is('pde.rw') ? 2n : 0n) | (is('pde.user') ? 4n : 0n) | (is('pde.a') ? 0x20n : 0n);
  pde |= (is('pde.d') ? 0x40n : 0n) | (is('pde.nx') ? NX : 0n) | (is('pde.51') ? BIT51 : 0n);
  const ptPage = table + 0x1000n;
  if (pse) {
    pde |= 0x80n | LARGE_FRAME;
    if (mode === 'legacy32') pde |= is('pde.36') ? 1n << 17n : 0n;
    else pde |= is('pde.36') ? BIT36 : 0n;
    pde |= is('pde.13') ? 1n << 13n : 0n;
    if (is('pte.pkey')) pde |= 1n << 59n;
  } else {
    pde |= ptPage | (is('pde.36') ? BIT36 : 0n);
  }
  memory.push({ pa: table + indexOf(2) * BigInt(entrySize), value: pde, size: entrySize as 4 | 8 });
  if (!pse) {
    let pte = (is('pte.p') ? 1n : 0n) | (is('pte.rw') ? 2n : 0n) | (is('pte.user') ? 4n : 0n) | (is('pte.a') ? 0x20n : 0n);
    pte |= (is('pte.d') ? 0x40n : 0n) | (is('pte.nx') ? NX : 0n) | (is('pte.51') ? BIT51 : 0n) | (is('pte.36') ? BIT36 : 0n);
    pte |= DATA_FRAME | (is('pte.pkey') ? 1n << 59n : 0n);
    const ptBase = ptPage | (is('pde.36') ? BIT36 : 0n) | (is('pde.51') ? BIT51 : 0n);
    memory.push({ pa: ptBase + indexOf(1) * BigInt(entrySize), value: pte, size: entrySize as 4 | 8 });
  }
  // PKRU: key 0 open, key 1's AD (bit 2) and WD (bit 3) from the flags (access.c AC_PKU_AD / AC_PKU_WD).
  const pkru = (is('pku.ad') ? 4 : 0) | (is('pku.wd') ? 8 : 0);
  const access = (is('write') ? ACC_WRITE : 0) | (is('user') ? ACC_USER : 0) | (is('fetch') ? ACC_FETCH : 0);
  const vector: ConformanceVector = {
    file,
    line,
    id: accessCaseId(c),
    mode,
    cpu: {
      cr0Wp: is('cr0.wp'),
      cr4Pse: true,
      cr4Pge: false,
      cr4Smep: is('cr4.smep'),
      cr4Smap: is('cr4.smap'),
      cr4Pke: is('cr4.pke') && !is32,
      eferNxe: is('efer.nx') && mode !== 'legacy32',
      eflagsAc: is('eflags.ac'),
      cpl: is('user') ? 3 : 0,
      pkru,
      maxPhyAddr: c.maxPhyAddr,
    },
    cr3: 0x1000n,
    pdptes: null,
    memory,
    va,
    preAccess: is('twice') ? access : null,
    access,
    expect: { fault: false, errorCode: null, pa: 0n, memoryAfter: memory.map((e) => ({ ...e })), memoryAfterDontCare: [] },
    preExpect: null,
  };
  // The expectation: what the architectural walker does.
  const seen = observeVector(vector, createNativeVectorMachine);
  vector.expect = { ...outcomeOf(seen.main), memoryAfter: memory.map((e, i) => ({ ...e, value: seen.memoryAfter[i]! })), memoryAfterDontCare: [] };
  if (seen.pre !== null) vector.preExpect = outcomeOf(seen.pre);
  return vector;
}

function outcomeOf(o: AccessOutcome): VectorOutcome {
  return o.result === 'ok' ? { fault: false, errorCode: null, pa: o.pa } : { fault: true, errorCode: o.errorCode, pa: null };
}

/**
 * The `index`-th case of a sweep with seed `seed`: the mode and MAXPHYADDR cycle with the index (so every
 * stratum gets the same number of cases), the flags are drawn from a counter-based generator (splitmix32 of
 * seed and index: any case can be regenerated from its index alone). Present bits are set with probability
 * 7/8 and the reserved-address bits (pte/pde.51, .36, .13) with 1/4, so that most cases get past the
 * not-present check and reach the rights, reserved-bit and key checks, where the differences hide; every
 * other flag is a fair coin.
 */
export function sweepCase(seed: number, index: number): AccessCase {
  const modes: PagingModeName[] = ['legacy32', 'pae', 'long4', 'long5'];
  const mode = modes[index % 4]!;
  const maxPhyAddr = ACCESS_CASE_MAXPHYADDRS[Math.floor(index / 4) % 3]!;
  let state = (seed ^ Math.imul(index, 0x9e3779b9)) >>> 0;
  const next = (): number => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  let flags = 0;
  for (const name of ACCESS_CASE_FLAGS) {
    const r = next() & 7;
    const set = name === 'pte.p' || name === 'pde.p' ? r !== 0 : /\.(51|36|13)$/.test(name) ? r < 2 : r < 4;
    if (set) flags += bitOf(name);
  }
  return { mode, maxPhyAddr, flags };
}
