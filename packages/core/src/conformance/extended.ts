import { ACC_FETCH, ACC_READ, ACC_USER, ACC_WRITE } from '../arch/constants.js';
import type { PagingModeName } from '../arch/modes.js';
import { createReferenceVectorMachine } from './reference.js';
import { observeVector } from './runner.js';
import type { ConformanceVector, VectorCpu, VectorMemoryEntry, VectorOutcome } from './vector.js';

/*
 * Cases outside access.c's flag space (generate.ts), where that space holds a part of the state fixed: the
 * entries above the PDE (always P|W|U|A there), 1 GiB pages, address bits other than 36 and 51, the key and
 * PKRU bits of keys other than 1, the PAE PDPTE registers apart from memory, CR3's low bits, CR4.PSE=0 and
 * EFER.NXE=1 in 32-bit paging, user fetches with CR4.SMEP (access.c never combines them), and twice cases whose
 * first access fills the TLB (a shadow pte) with rights the second must not inherit. Each case
 * names its SDM section and the outcome derived from it by hand (`want`); the vector's `expect` (with the
 * A/D bits) is the reference machine's (reference.ts), and a test checks that the two agree.
 */

/** Entry bits (SDM Vol. 3A §4.3-4.5). */
const P = 0x1n;
const W = 0x2n;
const U = 0x4n;
const PS = 0x80n;
const XD = 1n << 63n;
const PUW = P | W | U;
const bit = (n: number): bigint => 1n << BigInt(n);
const key = (k: number): bigint => BigInt(k) << 59n;

/** The linear addresses: every index and offset nonzero (5-level: below 2^53, which validateVector requires). */
const VA = { legacy32: 0x56789abcn, pae: 0x56789abcn, long4: 0x0000_2345_6789_abcn, long5: 0x0012_3456_789a_bcden } as const;
const TOP = { legacy32: 2, pae: 3, long4: 4, long5: 5 } as const;
/** The frame a 4 KiB leaf maps, and the frame of a large page (1 GiB aligned). */
const DATA_FRAME = 0x0200_0000n;
const LARGE_FRAME = 0x4000_0000n;

/** One extended case. */
export interface ExtendedCase {
  /** A readable name: mode, what is tested. */
  id: string;
  /** The SDM section (Vol. 3A) the outcome comes from. */
  sdm: string;
  mode: PagingModeName;
  maxPhyAddr?: 36 | 46 | 52;
  cpu?: Partial<Omit<VectorCpu, 'cpl'>>;
  /**
   * The entries of the walk, top level first (PAE: the PDPTE in memory at CR3), down to the one that maps the
   * page: each one's flag bits; the builder adds the next table's address (0x2000, 0x3000, ...) or the frame
   * (DATA_FRAME for a 4 KiB page, LARGE_FRAME for a larger one).
   */
  entries: bigint[];
  /** PAE: the PDPTE registers, when they are not what memory holds at CR3. */
  pdptes?: bigint[];
  cr3?: bigint;
  access: number;
  pre?: number;
  /** The hand-derived outcome of `access`: 'ok' with the physical address, or the #PF error code. */
  want: { pa: bigint } | { ec: number };
}

const CPU: VectorCpu = {
  cr0Wp: false,
  cr4Pse: true,
  cr4Pge: false,
  cr4Smep: false,
  cr4Smap: false,
  cr4Pke: false,
  eferNxe: false,
  eflagsAc: false,
  cpl: 0,
  pkru: 0,
  maxPhyAddr: 46,
};

const R = ACC_READ;
const WR = ACC_WRITE;
const F = ACC_FETCH;
const UR = ACC_USER;
const UW = ACC_USER | ACC_WRITE;
const UF = ACC_USER | ACC_FETCH;
/** pa of a 4 KiB page at DATA_FRAME (+ high bits) for mode's va; of a large page of 2^shift bytes. */
const pa4k = (mode: PagingModeName, high = 0n): bigint => DATA_FRAME + high + (VA[mode] & 0xfffn);
const paLarge = (mode: PagingModeName, shift: number): bigint => LARGE_FRAME + (VA[mode] & (bit(shift) - 1n));

/** The cases. Error codes (§4.7): P=1 W/R=2 U/S=4 RSVD=8 I/D=16 PK=32. */
export const EXTENDED_CASES: readonly ExtendedCase[] = [
  // §4.6.1: the rights of a translation come from every paging-structure entry, not only the PDE and PTE.
  { id: 'long4.pml4e.supervisor.user-read', sdm: '§4.6.1', mode: 'long4', entries: [P | W, PUW, PUW, PUW], access: UR, want: { ec: 5 } },
  { id: 'long4.pdpte.ro.user-write', sdm: '§4.6.1', mode: 'long4', entries: [PUW, P | U, PUW, PUW], access: UW, want: { ec: 7 } },
  { id: 'long4.pdpte.ro.sup-write.wp1', sdm: '§4.6.1', mode: 'long4', cpu: { cr0Wp: true }, entries: [PUW, P | U, PUW, PUW], access: WR, want: { ec: 3 } },
  { id: 'long4.pdpte.ro.sup-write.wp0', sdm: '§4.6.1', mode: 'long4', entries: [PUW, P | U, PUW, PUW], access: WR, want: { pa: pa4k('long4') } },
  {
    id: 'long4.pml4e.xd.user-fetch',
    sdm: '§4.6.1, §4.7',
    mode: 'long4',
    cpu: { eferNxe: true },
    entries: [PUW | XD, PUW, PUW, PUW],
    access: UF,
    want: { ec: 0x15 },
  },
  { id: 'long4.pml4e.xd.nxe0.reserved', sdm: '§4.5.4', mode: 'long4', entries: [PUW | XD, PUW, PUW, PUW], access: R, want: { ec: 9 } },
  // A supervisor-mode address (U/S=0 in some entry, here the PML4E): SMAP, SMEP and keys do not apply.
  {
    id: 'long4.pml4e.supervisor.smap-read',
    sdm: '§4.6.1',
    mode: 'long4',
    cpu: { cr4Smap: true },
    entries: [P | W, PUW, PUW, PUW],
    access: R,
    want: { pa: pa4k('long4') },
  },
  {
    id: 'long4.pml4e.supervisor.smep-fetch',
    sdm: '§4.6.1',
    mode: 'long4',
    cpu: { cr4Smep: true },
    entries: [P | W, PUW, PUW, PUW],
    access: F,
    want: { pa: pa4k('long4') },
  },
  {
    id: 'long4.pml4e.supervisor.pkru-ad',
    sdm: '§4.6.2',
    mode: 'long4',
    cpu: { cr4Pke: true, pkru: 0x4 },
    entries: [P | W, PUW, PUW, PUW | key(1)],
    access: R,
    want: { pa: pa4k('long4') },
  },
  // §4.6.2: the key is the leaf's; bits 62:59 of a non-leaf entry are ignored (§4.5.4, Table 4-16).
  {
    id: 'long4.pdpte.key-ignored',
    sdm: '§4.6.2',
    mode: 'long4',
    cpu: { cr4Pke: true, pkru: 0x4 },
    entries: [PUW, PUW | key(1), PUW, PUW],
    access: UR,
    want: { pa: pa4k('long4') },
  },
  { id: 'long5.pml5e.supervisor.user-read', sdm: '§4.6.1', mode: 'long5', entries: [P | W, PUW, PUW, PUW, PUW], access: UR, want: { ec: 5 } },
  { id: 'long5.pml5e.ro.user-write', sdm: '§4.6.1', mode: 'long5', entries: [P | U, PUW, PUW, PUW, PUW], access: UW, want: { ec: 7 } },
  {
    id: 'long5.pml5e.xd.sup-fetch',
    sdm: '§4.6.1, §4.7',
    mode: 'long5',
    cpu: { eferNxe: true },
    entries: [PUW | XD, PUW, PUW, PUW, PUW],
    access: F,
    want: { ec: 0x11 },
  },
  // §4.5.4: reserved bits of upper levels: PS in a PML4E / PML5E, bits 51:MAXPHYADDR.
  { id: 'long4.pml4e.ps.reserved', sdm: '§4.5.4', mode: 'long4', entries: [PUW | PS, PUW, PUW, PUW], access: UR, want: { ec: 13 } },
  { id: 'long5.pml4e.ps.reserved', sdm: '§4.5.4', mode: 'long5', entries: [PUW, PUW | PS, PUW, PUW, PUW], access: WR, want: { ec: 11 } },
  { id: 'long4.pml4e.bit51.m46', sdm: '§4.5.4', mode: 'long4', entries: [PUW | bit(51), PUW, PUW, PUW], access: R, want: { ec: 9 } },
  { id: 'long4.pdpte.bit46.m46', sdm: '§4.5.4', mode: 'long4', entries: [PUW, PUW | bit(46), PUW, PUW], access: R, want: { ec: 9 } },
  // MAXPHYADDR's edge in the leaf: bit M-1 is an address bit, bit M reserved; bits 62:52 are ignored.
  { id: 'long4.pte.bit45.m46', sdm: '§4.5.4', mode: 'long4', entries: [PUW, PUW, PUW, PUW | bit(45)], access: R, want: { pa: pa4k('long4', bit(45)) } },
  { id: 'long4.pte.bit46.m46', sdm: '§4.5.4', mode: 'long4', entries: [PUW, PUW, PUW, PUW | bit(46)], access: R, want: { ec: 9 } },
  {
    id: 'long4.pte.bit35.m36',
    sdm: '§4.5.4',
    mode: 'long4',
    maxPhyAddr: 36,
    entries: [PUW, PUW, PUW, PUW | bit(35)],
    access: R,
    want: { pa: pa4k('long4', bit(35)) },
  },
  {
    id: 'long4.pte.bits62-52.ignored',
    sdm: '§4.5.4',
    mode: 'long4',
    entries: [PUW, PUW, PUW, PUW | (bit(63) - bit(52))],
    access: UW,
    want: { pa: pa4k('long4') },
  },
  // §4.5.4 Table 4-15: a PDPTE with PS maps a 1 GiB page (bits 29:13 reserved); its key and XD count.
  { id: 'long4.1g.user-write', sdm: '§4.5.4, §4.8', mode: 'long4', entries: [PUW, PUW | PS], access: UW, want: { pa: paLarge('long4', 30) } },
  { id: 'long4.1g.bit29.reserved', sdm: '§4.5.4', mode: 'long4', entries: [PUW, PUW | PS | bit(29)], access: R, want: { ec: 9 } },
  {
    id: 'long4.1g.pkey2.ad.user-read',
    sdm: '§4.6.2',
    mode: 'long4',
    cpu: { cr4Pke: true, pkru: 0x10 },
    entries: [PUW, PUW | PS | key(2)],
    access: UR,
    want: { ec: 0x25 },
  },
  { id: 'long4.1g.xd.user-fetch', sdm: '§4.6.1', mode: 'long4', cpu: { eferNxe: true }, entries: [PUW, PUW | PS | XD], access: UF, want: { ec: 0x15 } },
  { id: 'long5.1g.sup-write.wp1.ro', sdm: '§4.6.1', mode: 'long5', cpu: { cr0Wp: true }, entries: [PUW, PUW, P | U | PS], access: WR, want: { ec: 3 } },
  // Bit 12 of a 2 MiB leaf is PAT, not an address bit (Table 4-17).
  { id: 'long4.2m.pat-bit12', sdm: '§4.5.4', mode: 'long4', entries: [PUW, PUW, PUW | PS | bit(12)], access: R, want: { pa: paLarge('long4', 21) } },
  // §4.6.2: keys other than 1; WD with a supervisor write counts only with CR0.WP=1.
  {
    id: 'long4.pkey15.wd.user-write',
    sdm: '§4.6.2',
    mode: 'long4',
    cpu: { cr4Pke: true, pkru: 0x80000000 },
    entries: [PUW, PUW, PUW, PUW | key(15)],
    access: UW,
    want: { ec: 0x27 },
  },
  {
    id: 'long4.pkey15.wd.sup-write.wp0',
    sdm: '§4.6.2',
    mode: 'long4',
    cpu: { cr4Pke: true, pkru: 0x80000000 },
    entries: [PUW, PUW, PUW, PUW | key(15)],
    access: WR,
    want: { pa: pa4k('long4') },
  },
  {
    id: 'long4.pkey0.ad.user-read',
    sdm: '§4.6.2',
    mode: 'long4',
    cpu: { cr4Pke: true, pkru: 0x1 },
    entries: [PUW, PUW, PUW, PUW],
    access: UR,
    want: { ec: 0x25 },
  },
  {
    id: 'long4.pkey0.ad.user-fetch',
    sdm: '§4.6.2',
    mode: 'long4',
    cpu: { cr4Pke: true, pkru: 0x1 },
    entries: [PUW, PUW, PUW, PUW],
    access: UF,
    want: { pa: pa4k('long4') },
  },
  // §4.5.2: CR3 bits 11:0 (PWT, PCD, or the PCID) do not locate the PML4; §4.4.1: PAE's PDPT is 32-byte aligned.
  { id: 'long4.cr3.low-bits', sdm: '§4.5.2', mode: 'long4', cr3: 0x1018n, entries: [PUW, PUW, PUW, PUW], access: UR, want: { pa: pa4k('long4') } },
  { id: 'pae.cr3.32-byte-aligned', sdm: '§4.4.1', mode: 'pae', cr3: 0x1020n, entries: [P, PUW, PUW], access: UW, want: { pa: pa4k('pae') } },
  // §4.4.1: the PDPTE registers are loaded at MOV CR3; a walk uses them, not what memory holds later.
  {
    id: 'pae.pdpte-registers.memory-not-present',
    sdm: '§4.4.1',
    mode: 'pae',
    pdptes: [0n, 0x2001n, 0n, 0n],
    entries: [0n, PUW, PUW],
    access: UR,
    want: { pa: pa4k('pae') },
  },
  { id: 'pae.pdpte-registers.not-present', sdm: '§4.4.1, §4.7', mode: 'pae', pdptes: [0n, 0n, 0n, 0n], entries: [P, PUW, PUW], access: UW, want: { ec: 6 } },
  // §4.3: 32-bit paging: CR4.PSE=0 ignores PS; EFER.NXE has no effect and no I/D bit (§4.7 needs CR4.PAE); SMEP gives I/D.
  {
    id: 'legacy32.pse0.pde-ps-ignored',
    sdm: '§4.3',
    mode: 'legacy32',
    cpu: { cr4Pse: false },
    entries: [PUW | PS, PUW],
    access: UW,
    want: { pa: pa4k('legacy32') },
  },
  { id: 'legacy32.nxe.fetch.not-present', sdm: '§4.7', mode: 'legacy32', cpu: { eferNxe: true }, entries: [PUW, 0n], access: F, want: { ec: 0 } },
  {
    id: 'legacy32.smep.user-fetch.supervisor-page',
    sdm: '§4.6.1, §4.7',
    mode: 'legacy32',
    cpu: { cr4Smep: true },
    entries: [P | W, PUW],
    access: UF,
    want: { ec: 0x15 },
  },
  { id: 'legacy32.smep.user-fetch.not-present', sdm: '§4.7', mode: 'legacy32', cpu: { cr4Smep: true }, entries: [PUW, 0n], access: UF, want: { ec: 0x14 } },
  {
    id: 'legacy32.smep.user-fetch.user-page',
    sdm: '§4.6.1',
    mode: 'legacy32',
    cpu: { cr4Smep: true },
    entries: [PUW, PUW],
    access: UF,
    want: { pa: pa4k('legacy32') },
  },
  { id: 'legacy32.4m.user-write', sdm: '§4.3, §4.8', mode: 'legacy32', entries: [PUW | PS], access: UW, want: { pa: paLarge('legacy32', 22) } },
  { id: 'legacy32.4m.bit21.m52', sdm: '§4.3 Table 4-4', mode: 'legacy32', maxPhyAddr: 52, entries: [PUW | PS | bit(21)], access: R, want: { ec: 9 } },
  { id: 'legacy32.cr3.low-bits', sdm: '§4.3', mode: 'legacy32', cr3: 0x1018n, entries: [PUW, PUW], access: UR, want: { pa: pa4k('legacy32') } },
  // §4.10 / access.c twice: a supervisor read first (TLB fill), then an access the supervisor translation does not allow.
  { id: 'long4.1g.supervisor.twice.user-read', sdm: '§4.6.1, §4.10.2', mode: 'long4', entries: [PUW, P | W | PS], pre: R, access: UR, want: { ec: 5 } },
  { id: 'long4.pdpte.ro.twice.user-write', sdm: '§4.6.1, §4.8', mode: 'long4', entries: [PUW, P | U, PUW, PUW], pre: R, access: UW, want: { ec: 7 } },
  {
    id: 'long4.smap.twice.sup-read',
    sdm: '§4.6.1',
    mode: 'long4',
    cpu: { cr4Smap: true, eflagsAc: true },
    entries: [PUW, PUW, PUW, PUW],
    pre: R,
    access: WR,
    want: { pa: pa4k('long4') },
  },
  // access.c check_smep_andnot_wp and KVM's CR0.WP=0 emulation (mmu.c: a supervisor write to a read-only user
  // page gets a supervisor-only writable spte): the page stays a user page with R/W=0 to the guest (§4.6.1).
  {
    id: 'long4.wp0.sup-write-ro-user.then-user-read',
    sdm: '§4.6.1',
    mode: 'long4',
    entries: [PUW, PUW, PUW, P | U],
    pre: WR,
    access: UR,
    want: { pa: pa4k('long4') },
  },
  { id: 'long4.wp0.sup-write-ro-user.then-user-write', sdm: '§4.6.1', mode: 'long4', entries: [PUW, PUW, PUW, P | U], pre: WR, access: UW, want: { ec: 7 } },
  {
    id: 'long4.wp0.smep.sup-write-ro-user.then-sup-fetch',
    sdm: '§4.6.1, §4.7',
    mode: 'long4',
    cpu: { cr4Smep: true },
    entries: [PUW, PUW, PUW, P | U],
    pre: WR,
    access: F,
    want: { ec: 0x11 },
  },
  {
    id: 'pae.wp0.smep.sup-write-ro-user.then-sup-fetch',
    sdm: '§4.6.1, §4.7',
    mode: 'pae',
    cpu: { cr4Smep: true },
    entries: [P, PUW, P | U],
    pre: WR,
    access: F,
    want: { ec: 0x11 },
  },
  {
    id: 'legacy32.wp0.smep.sup-write-ro-user.then-sup-fetch',
    sdm: '§4.6.1, §4.7',
    mode: 'legacy32',
    cpu: { cr4Smep: true },
    entries: [PUW, P | U],
    pre: WR,
    access: F,
    want: { ec: 0x11 },
  },
  {
    id: 'long4.wp0.smap-ac.sup-write-ro-user.then-user-read',
    sdm: '§4.6.1',
    mode: 'long4',
    cpu: { cr4Smap: true, eflagsAc: true },
    entries: [PUW, PUW, PUW, P | U],
    pre: WR,
    access: UR,
    want: { pa: pa4k('long4') },
  },
  { id: 'long4.wp0.sup-write-ro-user-2m.then-user-write', sdm: '§4.6.1', mode: 'long4', entries: [PUW, PUW, P | U | PS], pre: WR, access: UW, want: { ec: 7 } },
  // A user read first (a user translation in the TLB), then a supervisor fetch under SMEP, a supervisor write under WP=1.
  {
    id: 'long4.smep.user-read.then-sup-fetch',
    sdm: '§4.6.1',
    mode: 'long4',
    cpu: { cr4Smep: true },
    entries: [PUW, PUW, PUW, PUW],
    pre: UR,
    access: F,
    want: { ec: 0x11 },
  },
  {
    id: 'long4.wp1.user-read.then-sup-write-ro',
    sdm: '§4.6.1',
    mode: 'long4',
    cpu: { cr0Wp: true },
    entries: [PUW, PUW, PUW, P | U],
    pre: UR,
    access: WR,
    want: { ec: 3 },
  },
];

/** The vector of one extended case; `expect` (and `pre_expect`) from the reference machine. */
export function extendedCaseVector(c: ExtendedCase, file = '(extended)', line = 0): ConformanceVector {
  const mode = c.mode;
  const size: 4 | 8 = mode === 'legacy32' ? 4 : 8;
  const va = VA[mode];
  const top = TOP[mode];
  const leafLevel = top - c.entries.length + 1;
  const indexOf = (level: number): bigint => {
    if (mode === 'legacy32') return (va >> (level === 2 ? 22n : 12n)) & 1023n;
    if (mode === 'pae' && level === 3) return (va >> 30n) & 3n;
    return (va >> BigInt(12 + 9 * (level - 1))) & 511n;
  };
  const cr3 = c.cr3 ?? 0x1000n;
  const memory: VectorMemoryEntry[] = [];
  let table = mode === 'pae' ? cr3 & 0xffffffe0n : cr3 & ~0xfffn;
  c.entries.forEach((flags, i) => {
    const level = top - i;
    const next = 0x1000n * BigInt(i + 2);
    const target = level > leafLevel ? next : leafLevel === 1 ? DATA_FRAME : LARGE_FRAME;
    memory.push({ pa: table + indexOf(level) * BigInt(size), value: flags | target, size });
    table = next;
  });
  const access = c.access;
  const vector: ConformanceVector = {
    file,
    line,
    id: c.id,
    mode,
    cpu: { ...CPU, maxPhyAddr: c.maxPhyAddr ?? 46, ...c.cpu, cpl: (access & ACC_USER) !== 0 ? 3 : 0 },
    cr3,
    pdptes: c.pdptes ?? null,
    memory,
    va,
    preAccess: c.pre ?? null,
    access,
    // memory_after lists the entries of memory: observeVector reads their final values.
    expect: { fault: false, errorCode: null, pa: 0n, memoryAfter: memory.map((e) => ({ ...e })), memoryAfterDontCare: [] },
    preExpect: null,
  };
  const seen = observeVector(vector, createReferenceVectorMachine);
  const outcome = (o: typeof seen.main): VectorOutcome =>
    o.result === 'ok' ? { fault: false, errorCode: null, pa: o.pa } : { fault: true, errorCode: o.errorCode, pa: null };
  vector.expect = { ...outcome(seen.main), memoryAfter: memory.map((e, i) => ({ ...e, value: seen.memoryAfter[i]! })), memoryAfterDontCare: [] };
  if (seen.pre !== null) vector.preExpect = outcome(seen.pre);
  return vector;
}

/** Every extended case as a vector, `line` its 1-based index in EXTENDED_CASES. */
export function extendedCaseVectors(file = '(extended)'): ConformanceVector[] {
  return EXTENDED_CASES.map((c, i) => extendedCaseVector(c, file, i + 1));
}
