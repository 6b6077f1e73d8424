import type { PagingModeName } from '../arch/modes.js';
import { ACC_FETCH, ACC_READ, ACC_USER, ACC_WRITE } from '../arch/constants.js';
import type { AccessOutcome } from './machine.js';
import { createReferenceVectorMachine } from './reference.js';
import { observeVector } from './runner.js';
import type { ConformanceVector, VectorMemoryEntry, VectorOutcome } from './vector.js';

/*
 * Generated paging vectors, built the way kvm-unit-tests' x86/access.c builds its matrix (`ac_test_t`,
 * `ac_test_setup_ptes`): upper levels fully permissive (P|W|U|A), the PDE and the PTE (or the large-page PDE)
 * from a set of flags, a CPU state from more flags, and one access (with AC_ACCESS_TWICE preceded by a
 * supervisor read, as access.c's `ac_test_do_access` does before it switches to user mode). The flags
 * are access.c's, named as it names them (pte.p, pde.pse, pku.wd, cr4.smap, ...), plus CR4.SMAP with
 * EFLAGS.AC (access.c tests SMAP in a separate function) and a MAXPHYADDR and paging mode per case.
 *
 * A vector's `expect` is the outcome of the reference machine (reference.ts), a reading of the SDM that shares
 * no code with the walker: a generated vector checks the walker natively, and a hypervisor variant against
 * the SDM, in differential runs. They are valid input for `vmexit conformance`.
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
 * The vector of case `c` (its `expect` is the reference machine's outcome, see above). Tables: CR3 = 0x1000,
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
    // access.c AC_ACCESS_TWICE: a supervisor read first (`mov (addr), reg` at CPL 0), then the access.
    preAccess: is('twice') ? ACC_READ : null,
    access,
    expect: { fault: false, errorCode: null, pa: 0n, memoryAfter: memory.map((e) => ({ ...e })), memoryAfterDontCare: [] },
    preExpect: null,
  };
  // The expectation: what the SDM says (the reference machine, not the walker under test).
  const seen = observeVector(vector, createReferenceVectorMachine);
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

/*
 * The whole flag space, enumerated. access.c walks every flag combination that `ac_test_legal` accepts; the
 * space here is the same combinations with each one named once: a flag the architecture ignores for the
 * case (it cannot change what either access does, natively) is cleared, so that two combinations whose
 * guest state differs only in ignored bits are one case (`canonicalAccessFlags`). The rules:
 *
 * - access.c's own (`ac_test_legal`): a fetch is not a write; no user access with CR4.SMEP (access.c maps
 *   its code supervisor under SMEP); PKRU.AD/WD only with CR4.PKE; pde.13 only with pde.pse; at most one
 *   reserved-address bit (pte/pde .51 .36, pde.13, and the NX bits when EFER.NXE=0; here also a PAE
 *   entry's key bits, which PAE reserves, SDM Vol. 3A Table 4-11) per case.
 * - Bits that are not there: 32-bit entries have no bit 36/51/63 or key (effectiveFlags); CR4.PKE and
 *   PKRU exist only in IA-32e paging (SDM Vol. 3A §4.6.2), EFER.NXE has no effect in 32-bit paging (§4.3).
 * - A walk that stops: a not-present PDE or PTE ignores its other bits and the PTE after it (§4.3-4.5:
 *   "ignored" when P=0); a reserved bit ends the walk with the same error code whatever the entry's
 *   rights (§4.7: RSVD with W/R, U/S and I/D from the access), so the rights of that entry and the PTE
 *   after it are cleared. Bit 6 of a PDE that references a page table is ignored (Table 4-19).
 * - CPU state that neither access of the case can see (the first access of `twice` is a supervisor read):
 *   CR0.WP applies to supervisor writes only (§4.6.1); CR4.SMEP to supervisor fetches only (and to the
 *   I/D bit of a fetch's error code, §4.7); CR4.SMAP and EFLAGS.AC to supervisor data accesses only, AC
 *   only with SMAP; CR4.PKE to data accesses only (§4.6.2), a key bit in an entry only with CR4.PKE,
 *   PKRU's key-1 bits only for a page with key 1; EFER.NXE only with an NX bit set or a fetch.
 *
 * Which address bit is reserved depends on MAXPHYADDR: bit 51 below 52, bit 36 at 36 (a PSE-36 PDE's bit
 * 17 is physical bit 36, its bit 13 physical bit 32); an address bit that is not reserved maps the table or
 * page above guest RAM (MMIO), which is a case of its own.
 */

const F = (name: AccessCaseFlag): number => 1 << ACCESS_CASE_FLAGS.indexOf(name);
const PDE_ALL = ['pde.p', 'pde.rw', 'pde.user', 'pde.a', 'pde.d', 'pde.pse', 'pde.nx', 'pde.51', 'pde.36', 'pde.13'].map((n) => F(n as AccessCaseFlag));
const PTE_ALL = ['pte.p', 'pte.rw', 'pte.user', 'pte.a', 'pte.d', 'pte.nx', 'pte.51', 'pte.36', 'pte.pkey'].map((n) => F(n as AccessCaseFlag));
const PKU = F('pku.ad') | F('pku.wd');
const maskOf = (bits: number[]): number => bits.reduce((a, b) => a | b, 0);
const PDE_MASK = maskOf(PDE_ALL);
const PTE_MASK = maskOf(PTE_ALL);

/** The flags that are reserved bits of the PDE (a walk stops there) for this mode, MAXPHYADDR and EFER.NXE. */
function pdeReserved(mode: PagingModeName, maxPhyAddr: number, nxe: boolean, pse: boolean): number {
  if (mode === 'legacy32') return pse && maxPhyAddr <= 36 ? F('pde.36') : 0;
  return (
    (maxPhyAddr < 52 ? F('pde.51') : 0) |
    (maxPhyAddr <= 36 ? F('pde.36') : 0) |
    (pse ? F('pde.13') : 0) |
    (nxe ? 0 : F('pde.nx')) |
    (pse && mode === 'pae' ? F('pte.pkey') : 0)
  );
}

/** The flags that are reserved bits of the PTE. */
function pteReserved(mode: PagingModeName, maxPhyAddr: number, nxe: boolean): number {
  if (mode === 'legacy32') return 0;
  return (maxPhyAddr < 52 ? F('pte.51') : 0) | (maxPhyAddr <= 36 ? F('pte.36') : 0) | (nxe ? 0 : F('pte.nx')) | (mode === 'pae' ? F('pte.pkey') : 0);
}

/** access.c's `ac_test_legal` (and one reserved bit at a time), on flags already through effectiveFlags. */
export function accessFlagsLegal(c: AccessCase): boolean {
  const f = effectiveFlags(c);
  const is = (n: AccessCaseFlag) => (f & F(n)) !== 0;
  if (is('fetch') && is('write')) return false;
  if (is('user') && is('cr4.smep')) return false;
  if (!is('cr4.pke') && (f & PKU) !== 0) return false;
  if (!is('pde.pse') && is('pde.13')) return false;
  let reserved = F('pde.51') | F('pde.36') | F('pde.13') | F('pte.51') | F('pte.36');
  if (!is('efer.nx') && c.mode !== 'legacy32') reserved |= F('pde.nx') | F('pte.nx');
  if (c.mode === 'pae') reserved |= F('pte.pkey');
  reserved &= f;
  return (reserved & (reserved - 1)) === 0;
}

/** The flags of `c` with every flag cleared that the architecture ignores for the case (see above); idempotent. */
export function canonicalAccessFlags(c: AccessCase): number {
  const mode = c.mode;
  const long = mode === 'long4' || mode === 'long5';
  let f = effectiveFlags(c);
  const is = (n: AccessCaseFlag) => (f & F(n)) !== 0;
  const clear = (bits: number) => {
    f &= ~bits;
  };
  if (!long) clear(F('cr4.pke'));
  if (mode === 'legacy32') clear(F('efer.nx'));
  const write = is('write');
  const fetch = is('fetch');
  const user = is('user');
  const twice = is('twice');
  // CPU state the accesses cannot see.
  if (!(twice || (!user && !fetch))) clear(F('cr4.smap'));
  if (!is('cr4.smap')) clear(F('eflags.ac'));
  if (!(write && !user)) clear(F('cr0.wp'));
  if (!fetch) clear(F('cr4.smep'));
  if (!(twice || !fetch)) clear(F('cr4.pke'));
  if (long && !is('cr4.pke')) clear(F('pte.pkey'));
  // The walk.
  const nxe = is('efer.nx');
  if (!is('pde.p')) clear(PDE_MASK | PTE_MASK);
  else {
    const pse = is('pde.pse');
    const res = pdeReserved(mode, c.maxPhyAddr, nxe, pse);
    if ((f & res) !== 0) {
      // Keep P, PS and the reserved bit(s); the rights of the PDE and everything below go.
      const keep = F('pde.p') | F('pde.pse') | (f & res);
      clear((PDE_MASK | PTE_MASK) & ~keep);
    } else {
      if (!pse) clear(F('pde.d'));
      if (pse) clear(PTE_MASK & ~F('pte.pkey'));
      else if (!is('pte.p')) clear(PTE_MASK);
      else {
        const pres = pteReserved(mode, c.maxPhyAddr, nxe);
        if ((f & pres) !== 0) clear(PTE_MASK & ~(F('pte.p') | (f & pres)));
      }
    }
  }
  if (!(long && is('cr4.pke') && is('pte.pkey'))) clear(PKU);
  if (!fetch && !is('pde.nx') && !is('pte.nx')) clear(F('efer.nx'));
  return f;
}

/**
 * Every case of the flag space of `mode` at `maxPhyAddr`: each legal combination (accessFlagsLegal) named
 * once (canonicalAccessFlags), in a fixed order. Built by choosing, in turn, the access, the CPU state the
 * access can see, the PDE and the PTE, so each case comes out exactly once.
 */
export function accessCaseSpace(mode: PagingModeName, maxPhyAddr: 36 | 46 | 52): Uint32Array {
  const out: number[] = [];
  const long = mode === 'long4' || mode === 'long5';
  const l32 = mode === 'legacy32';
  /** Each subset of `bits` (their OR), the empty one first. */
  const subsets = (bits: number[]): number[] => {
    let acc = [0];
    for (const b of bits) acc = acc.flatMap((s) => [s, s | b]);
    return acc;
  };
  const one = (bits: number[]): number[] => [0, ...bits.filter((b) => b !== 0)];
  for (const kind of ['read', 'write', 'fetch'] as const) {
    for (const user of [false, true]) {
      for (const twice of [false, true]) {
        const write = kind === 'write';
        const fetch = kind === 'fetch';
        const access = (write ? F('write') : 0) | (fetch ? F('fetch') : 0) | (user ? F('user') : 0) | (twice ? F('twice') : 0);
        const smapOpts = twice || (!user && !fetch) ? [0, F('cr4.smap'), F('cr4.smap') | F('eflags.ac')] : [0];
        const wpOpts = write && !user ? [0, F('cr0.wp')] : [0];
        const smepOpts = fetch && !user ? [0, F('cr4.smep')] : [0];
        const pkeOpts = long && (twice || !fetch) ? [0, F('cr4.pke')] : [0];
        for (const nxe of l32 ? [false] : [false, true]) {
          for (const cpu of subsetsProduct([smapOpts, wpOpts, smepOpts, pkeOpts])) {
            const pke = (cpu & F('cr4.pke')) !== 0;
            const base = access | cpu | (nxe ? F('efer.nx') : 0);
            // The key of the leaf and PKRU's key-1 bits (only with CR4.PKE in IA-32e paging).
            const keyOpts = long && pke ? [0, F('pte.pkey'), F('pte.pkey') | F('pku.ad'), F('pte.pkey') | F('pku.wd'), F('pte.pkey') | PKU] : [0];
            const emit = (entries: number) => {
              const f = base | entries;
              // EFER.NXE is seen only by a fetch or an NX bit.
              if (nxe && !fetch && (f & (F('pde.nx') | F('pte.nx'))) === 0) return;
              out.push(f >>> 0);
            };
            // A not-present PDE.
            emit(0);
            for (const pse of [0, F('pde.pse')]) {
              const pres = pdeReserved(mode, maxPhyAddr, nxe, pse !== 0);
              // A reserved bit in the PDE: the walk stops there.
              for (const r of bitsOf(pres)) emit(F('pde.p') | pse | r);
              // The PDE's address bits that are not reserved here (one at a time), and its rights.
              const addr = pse ? (l32 ? [F('pde.36'), F('pde.13')] : [F('pde.51'), F('pde.36')]) : l32 ? [] : [F('pde.51'), F('pde.36')];
              const pdeAddr = one(addr.filter((b) => (b & pres) === 0));
              const rights = subsets([F('pde.rw'), F('pde.user'), F('pde.a'), ...(pse ? [F('pde.d')] : []), ...(nxe ? [F('pde.nx')] : [])]);
              for (const a of pdeAddr) {
                for (const rw of rights) {
                  const pde = F('pde.p') | pse | a | rw;
                  if (pse) {
                    for (const k of keyOpts) emit(pde | k);
                    continue;
                  }
                  emit(pde); // a not-present PTE
                  const ptres = pteReserved(mode, maxPhyAddr, nxe);
                  // (one reserved-address bit per case: none here when the PDE has an address bit)
                  if (a === 0) for (const r of bitsOf(ptres)) emit(pde | F('pte.p') | r);
                  const pteAddr = a !== 0 ? [0] : one((l32 ? [] : [F('pte.51'), F('pte.36')]).filter((b) => (b & ptres) === 0));
                  const pteRights = subsets([F('pte.rw'), F('pte.user'), F('pte.a'), F('pte.d'), ...(nxe ? [F('pte.nx')] : [])]);
                  for (const pa of pteAddr) for (const pr of pteRights) for (const k of keyOpts) emit(pde | F('pte.p') | pa | pr | k);
                }
              }
            }
          }
        }
      }
    }
  }
  return Uint32Array.from(out);
}

function bitsOf(mask: number): number[] {
  const r: number[] = [];
  for (let i = 0; i < ACCESS_CASE_FLAG_COUNT; i++) if ((mask & (1 << i)) !== 0) r.push(1 << i);
  return r;
}

/** Every OR of one element from each list. */
function subsetsProduct(lists: number[][]): number[] {
  let acc = [0];
  for (const l of lists) acc = acc.flatMap((s) => l.map((x) => s | x));
  return acc;
}
