import { ACC_READ, ACC_WRITE, PFERR_PRESENT, PT_PRESENT } from '../arch/constants.js';
import { MODE_LEGACY32, MODE_LONG4, MODE_LONG5, MODE_PAE, type PagingModeId } from '../arch/modes.js';
import type { PhysicalMemory } from '../memory/physical.js';
import { NESTED_FINAL, NESTED_PDPTE, NESTED_TABLE, NESTED_W, WALK_SIDE_EFFECTS, WalkResult, type PagingContext, type SecondStage } from './types.js';

/*
 * The architectural page walk, SDM Vol. 3A ch. 4. The hot path allocates nothing, uses no BigInt and no
 * closure: every 64-bit quantity is a (lo, hi) pair of uint32, and physical addresses (< 2^52) are joined
 * into plain numbers as `lo + hi * 2^32`.
 *
 * Order of checks, as the SDM's translation process implies (§4.3-4.5, §4.7): at each level, a
 * not-present entry ends the walk with P=0; a present entry with a reserved bit set ends it with
 * P=1|RSVD; only a complete translation is checked for access rights (§4.6), which gives P=1 and
 * possibly PK. A/D bits are written only after the whole access is known to succeed (§4.8; our choice of
 * the two behaviours the SDM allows on a fault: a faulting walk changes nothing).
 *
 * How the code is laid out, for speed (bench/paging.bench.mjs, "walk long4 4K resident"):
 * - One straight-line function per mode: `walk4` (§4.5, 4-level), `walk5` (§4.5, 5-level), `walkPae`
 *   (§4.4) and `walk32` (§4.3), with the index shifts of each level fixed. They compute entry addresses in
 *   32-bit integer arithmetic (`((elo & 0xfffff000) | (index << 3)) >>> 0`), which is exact while the
 *   tables are below 4 GiB. When they are not (a non-leaf entry with address bits 51:32 set, CR3 >= 4 GiB)
 *   the walk goes on, from the level it
 *   reached and with what it accumulated, in `walkFrom`: the general level loop with double arithmetic.
 *   Nothing is read twice, so a walk reads the same entries in the same order whichever path it takes.
 *   The high half of an entry is read at `(epa | 4) >>> 0`, which is epa + 4 (entries are 8-byte aligned)
 *   and stays a uint32.
 * - Literal constants in the hot functions, each with its SDM name in a comment, not the imported ones:
 *   V8 (Node 20) reads an imported (or exported) binding through a module cell on every use instead of
 *   folding it (the same fix made the TLB hit path 2x faster, tlb/tlb.ts). Entry bits: P = 0x1, R/W = 0x2,
 *   U/S = 0x4, A = 0x20, D = 0x40, PS = 0x80, G = 0x100 (§4.3-4.5); XD = bit 63 = high-half
 *   0x80000000; the protection key is bits 62:59 = high-half bits 30:27. Error code (§4.7, Figure 4-12):
 *   P = 0x1, W/R = 0x2, U/S = 0x4, RSVD = 0x8, I/D = 0x10, PK = 0x20; access kinds are the same bits
 *   (ACC_WRITE = 0x2, ACC_USER = 0x4, ACC_FETCH = 0x10). Statuses: WALK_OK = 0, WALK_PAGE_FAULT = 1,
 *   WALK_GP = 2, WALK_NESTED_FAULT = 3 (types.ts). Flags: WALK_SIDE_EFFECTS = 1. Modes: MODE_LEGACY32 =
 *   0, MODE_PAE = 1, MODE_LONG4 = 2, MODE_LONG5 = 3 (arch/modes.ts).
 * - The rights of the translation are accumulated while walking, as `acc` (the AND of the low halves: R/W,
 *   U/S and A of every entry read from memory) and `xd` (the OR of the high halves: XD of every level),
 *   and checked from those (`permissionFault`), not reloaded from `out`.
 * - The common case of a walk with side effects writes nothing: A already set on every level, and D in
 *   the leaf for a write. Only when a bit is missing does `setAccessedDirty` run.
 * - Two-dimensional paging (`ctx.nested`, EPT/NPT) is `walkNested`, a function of its own that `walk`
 *   calls first thing: the one-dimensional functions above carry no second-stage code at all.
 */

/** Bits 8:5 and 2:1 of a PAE PDPTE are reserved (SDM Vol. 3A §4.4.1, Table 4-8). */
const PDPTE_RSVD_LO = 0x1e6;
/*
 * Reserved bits of large leaves (literals in the walkers):
 * - bits 20:13 of a 2 MiB leaf, 0x001fe000 (address bits below the page's alignment; §4.4.2 Table 4-9,
 *   §4.5.4 Table 4-17);
 * - bits 29:13 of a 1 GiB leaf, 0x3fffe000 (§4.5.4, Table 4-15);
 * - PS (bit 7, 0x80) in a PML4E and a PML5E (§4.5.4).
 * The canonical ranges of 4-level and 5-level linear addresses (§4.5, Vol. 1 §3.3.7.1): -2^47 <= va < 2^47
 * (140737488355328) and -2^56 <= va < 2^56 (72057594037927936).
 */

/** The I/D error-code bit for `access` in `ctx` (§4.7: set for an instruction fetch only if CR4.SMEP = 1, or CR4.PAE = 1 and IA32_EFER.NXE = 1). */
function idBit(ctx: PagingContext, access: number): number {
  const legacy32 = ctx.mode === 0; /* MODE_LEGACY32 */
  return (access & 0x10) /* ACC_FETCH */ !== 0 && (ctx.cr4Smep || (ctx.eferNxe && !legacy32)) ? 0x10 /* PFERR_FETCH */ : 0;
}

function pageFault(out: WalkResult, errorCode: number): number {
  out.errorCode = errorCode;
  out.status = 1; // WALK_PAGE_FAULT
  return 1;
}

/** §4.7: a not-present entry: P=0, with W/R and U/S from the access, and I/D where the rule allows. */
function notPresent(ctx: PagingContext, out: WalkResult, access: number, level: number): number {
  out.leafLevel = level;
  return pageFault(out, (access & 0x6) /* W/R | U/S */ | idBit(ctx, access));
}

/** §4.7: a reserved bit in a present entry: P=1 and RSVD=1 (RSVD only ever comes with P). */
function reservedFault(ctx: PagingContext, out: WalkResult, access: number, level: number): number {
  out.leafLevel = level;
  return pageFault(out, 0x9 /* P | RSVD */ | (access & 0x6) /* W/R | U/S */ | idBit(ctx, access));
}

function nestedFault(out: WalkResult): number {
  out.status = 3; // WALK_NESTED_FAULT
  return 3;
}

function generalProtection(out: WalkResult): number {
  out.status = 2; // WALK_GP
  return 2;
}

/**
 * The error-code bits of a rights violation for an access of kind `access` (ACC_* bits) to a translation
 * whose accumulated rights are in `out` (`writable`, `user`, `executable`, `pkey`, as a successful walk left
 * them), under the control bits of `ctx`; 0 when the access is allowed. SDM Vol. 3A §4.6 (rights), §4.6.2
 * (protection keys), §4.7 (error code). Depends only on its arguments, so the vCPU can precompute the TLB's
 * permission bits with it.
 *
 * - A user access (CPL 3) needs U/S=1 on every level, R/W=1 on every level for a write (CR0.WP does not
 *   matter), and XD=0 on every level for a fetch (§4.6.1).
 * - A supervisor fetch faults on XD (with NXE) and, with CR4.SMEP, on a user-mode address.
 * - An explicit supervisor data access to a user-mode address faults with CR4.SMAP unless EFLAGS.AC=1; a
 *   supervisor write to a read-only translation faults only with CR0.WP=1 (§4.6.1).
 * - Protection keys (IA-32e paging with CR4.PKE, user-mode addresses, data accesses only; the key of the
 *   leaf): PKRU.ADk forbids any data access; PKRU.WDk forbids a write that is a user access or runs with
 *   CR0.WP=1 (§4.6.2). When the key forbids the access, PK is set even if other rights also fail (§4.7:
 *   the PK flag depends only on those conditions; KVM `permission_fault` does the same).
 */
export function rightsFault(ctx: PagingContext, out: WalkResult, access: number): number {
  return permissionFault(ctx, access, (out.writable ? 0x2 : 0) | (out.user ? 0x4 : 0) | (out.executable ? 0 : 0x80000000), out.pkey);
}

/**
 * `rightsFault` on rights given as entry bits: `rights & 0x2` is R/W=1 on every level, `rights & 0x4` is
 * U/S=1 on every level, `rights & 0x80000000` is XD=1 on some level (the high-half bit, where it is only
 * ever set with NXE: without NXE it is a reserved bit, §4.5.4); `pkey` is the leaf's protection key.
 */
function permissionFault(ctx: PagingContext, access: number, rights: number, pkey: number): number {
  const write = (access & 0x2) /* ACC_WRITE */ !== 0;
  const userAccess = (access & 0x4) /* ACC_USER */ !== 0;
  const fetch = (access & 0x10) /* ACC_FETCH */ !== 0;
  const userPage = (rights & 0x4) /* U/S */ !== 0;
  const writable = (rights & 0x2) /* R/W */ !== 0;
  const executable = (rights & 0x80000000) /* XD */ === 0;
  let fault: boolean;
  if (userAccess) {
    fault = !userPage || (write && !writable) || (fetch && !executable);
  } else if (fetch) {
    fault = !executable || (ctx.cr4Smep && userPage);
  } else {
    fault = (ctx.cr4Smap && userPage && !ctx.eflagsAc) || (write && !writable && ctx.cr0Wp);
  }
  let pk = 0;
  if (ctx.cr4Pke && userPage && !fetch && (ctx.mode === 2 /* MODE_LONG4 */ || ctx.mode === 3) /* MODE_LONG5 */) {
    const keyRights = (ctx.pkru >>> (pkey * 2)) & 3; // PKRU.ADk = bit 2k (1), PKRU.WDk = bit 2k+1 (2), §4.6.2
    if ((keyRights & 1) !== 0 || ((keyRights & 2) !== 0 && write && (userAccess || ctx.cr0Wp))) pk = 0x20; // PFERR_PK
  }
  if (!fault && pk === 0) return 0;
  return 0x1 /* P */ | (access & 0x6) /* W/R | U/S */ | pk | idBit(ctx, access);
}

/**
 * Walks the paging structures of `ctx` in `mem` for the linear address `va` (signed-canonical number, see
 * `PagingContext`) and an access of kind `access` (ACC_* bits). Returns the status and stores it in
 * `out.status`:
 *
 * - WALK_OK: `out.pa` is the physical address; `out.pageSize`, `leafLevel`, the rights and the entries used
 *   are filled. With `flags & WALK_SIDE_EFFECTS`, the A bit is set in every entry used and D in the leaf for
 *   a write (§4.8); the PAE PDPTE registers are not memory and get no A bit (§4.4.1).
 * - WALK_PAGE_FAULT: `out.errorCode` is the §4.7 error code; `out.leafLevel` is the level of the entry that
 *   ended the walk (for a rights fault, the leaf). Nothing was written.
 * - WALK_GP: the address is not canonical (4/5-level paging; Vol. 1 §3.3.7.1). Nothing was read.
 * - WALK_NESTED_FAULT: `ctx.nested` refused a guest-physical address (recorded in `out.nested*`).
 *
 * Without WALK_SIDE_EFFECTS the walk never writes (an inspection walk).
 *
 * PAE paging (§4.4) and 4-/5-level paging (§4.5): 8-byte entries. Reserved bits (§4.4.2 Tables 4-8..4-11,
 * §4.5.4 Tables 4-14..4-20; KVM `__reset_rsvds_bits_mask`), with M = MAXPHYADDR:
 * - PAE PDEs and PTEs: bits 62:M, bit 63 when EFER.NXE=0, bits 20:13 of a 2 MiB PDE;
 * - IA-32e: bits 51:M in every entry, bit 63 when NXE=0, PS (bit 7) in a PML5E/PML4E, bits 29:13 of a
 *   1 GiB PDPTE, bits 20:13 of a 2 MiB PDE. Bits 62:52 are ignored (62:59: the protection key of a leaf).
 */
export function walk(ctx: PagingContext, mem: PhysicalMemory, va: number, access: number, flags: number, out: WalkResult): number {
  // Small enough to be inlined into the caller: the walkers get the linear address as two int32 halves,
  // `lo = va | 0` (bits 31:0) and `hi = floor(va * 2^-32) | 0` (bits 63:32, exact for a signed-canonical
  // va), which V8 passes as small integers, while the double `va` would be boxed in a new heap number on
  // every call (one allocation per walk; bench/paging.bench.mjs).
  out.errorCode = 0;
  out.global = false;
  out.pkey = 0;
  // Two-dimensional paging is its own function (walkNested), so that none of its work touches these paths.
  if (ctx.nested !== null) return walkNested(ctx, mem, va, access, flags, out);
  const mode = ctx.mode;
  if (mode === 2 /* MODE_LONG4 */) {
    // Vol. 1 §3.3.7.1 / Vol. 3A §4.5: a non-canonical linear address is a #GP, never a #PF (-2^47 <= va < 2^47).
    if (!(va >= -140737488355328 && va < 140737488355328)) return generalProtection(out);
    return walk4(ctx, mem, va | 0, Math.floor(va * 2.3283064365386963e-10) | 0, access, flags, out);
  }
  if (mode === 0 /* MODE_LEGACY32 */) return walk32(ctx, mem, va | 0, access, flags, out);
  if (mode === 1 /* MODE_PAE */) return walkPae(ctx, mem, va | 0, access, flags, out);
  // 5-level paging: -2^56 <= va < 2^56.
  if (!(va >= -72057594037927936 && va < 72057594037927936)) return generalProtection(out);
  return walk5(ctx, mem, va | 0, Math.floor(va * 2.3283064365386963e-10) | 0, access, flags, out);
}

/**
 * 32-bit paging, SDM Vol. 3A §4.3: CR3[31:12] locates the page directory; a PDE with PS=1 maps a 4 MiB page
 * when CR4.PSE=1 (with PS ignored when CR4.PSE=0), otherwise a page table of 4-byte PTEs. No XD, no keys.
 * PSE-36 (Table 4-4): with M = min(MAXPHYADDR, 40), PDE bits (M-20):13 are physical-address bits (M-1):32 and
 * bits 21:(M-19) are reserved; 4 KiB PDEs and PTEs have no reserved bits.
 */
function walk32(ctx: PagingContext, mem: PhysicalMemory, lo: number, access: number, flags: number, out: WalkResult): number {
  out.topLevel = 2;
  const ePa = out.entryPa;
  const eLo = out.entryLo;
  const eHi = out.entryHi;
  let epa = (((ctx.cr3 >>> 0) & 0xfffff000) >>> 0) + (lo >>> 22) * 4;
  const pde = mem.read32(epa);
  ePa[2] = epa;
  eLo[2] = pde;
  eHi[2] = 0;
  if ((pde & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 2);

  let leaf = pde;
  let pa: number;
  if (ctx.cr4Pse && (pde & 0x80) /* PS */ !== 0) {
    const m = ctx.maxPhyAddr < 40 ? ctx.maxPhyAddr : 40;
    const rsvd = ((0x3fffff >>> (m - 19)) << (m - 19)) >>> 0; // bits 21:(M-19)
    if ((pde & rsvd) !== 0) return reservedFault(ctx, out, access, 2);
    const high = (pde >>> 13) & ((1 << (m - 32)) - 1); // PA bits (M-1):32
    pa = ((pde & 0xffc00000) >>> 0) + high * 4294967296 + (lo & 0x3fffff);
    out.leafLevel = 2;
    out.pageSize = 4194304; // 4 MiB
  } else {
    epa = ((pde & 0xfffff000) >>> 0) + ((lo >>> 12) & 0x3ff) * 4;
    leaf = mem.read32(epa);
    ePa[1] = epa;
    eLo[1] = leaf;
    eHi[1] = 0;
    if ((leaf & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 1);
    pa = ((leaf & 0xfffff000) >>> 0) + (lo & 0xfff);
    out.leafLevel = 1;
    out.pageSize = 4096;
  }
  const both = pde & leaf; // a 4 MiB page has one level: pde & pde
  out.writable = (both & 0x2) /* R/W */ !== 0;
  out.user = (both & 0x4) /* U/S */ !== 0;
  out.executable = true; // 32-bit paging has no XD (§4.6.1)
  out.global = ctx.cr4Pge && (leaf & 0x100) /* G */ !== 0;
  out.pa = pa;
  return finish(ctx, mem, access, flags, out, 2, both, 0, leaf);
}

/**
 * 4-level paging, SDM Vol. 3A §4.5: PML4 (CR3), PDPT, PD, PT; a PDPTE with PS=1 maps a 1 GiB page, a PDE
 * with PS=1 a 2 MiB page (1 GiB pages are supported: CPUID.80000001H:EDX.Page1GB = 1). Index bits: PML4
 * 47:39, PDPT 38:30, PD 29:21, PT 20:12; in the halves of va, `hi >>> 7`, `(lo >>> 30) | (hi << 2)`,
 * `lo >>> 21`, `lo >>> 12`, each & 0x1ff.
 */
function walk4(ctx: PagingContext, mem: PhysicalMemory, lo: number, hi: number, access: number, flags: number, out: WalkResult): number {
  out.topLevel = 4;
  const ePa = out.entryPa;
  const eLo = out.entryLo;
  const eHi = out.entryHi;
  const m = ctx.maxPhyAddr - 32; // first reserved address bit, in the high half
  const rsvdHi = ((0xfffff >>> m) << m) | (ctx.eferNxe ? 0 : 0x80000000); // bits 51:M, and XD without NXE (§4.5.4)
  const cr3 = ctx.cr3;
  // CR3 bits M-1:12 locate the top table (§4.5.2; bits 11:0 are flags or the PCID).
  if (!(cr3 < 4294967296)) return walkFrom(ctx, mem, lo, hi, access, flags, out, 4, longRoot(cr3, m), rsvdHi, -1, 0);

  // PML4E (§4.5.4): PS is reserved.
  let epa = ((cr3 & 0xfffff000) | (((hi >>> 7) & 0x1ff) << 3)) >>> 0;
  let elo = mem.read32(epa);
  let ehi = mem.read32((epa | 4) >>> 0);
  ePa[4] = epa;
  eLo[4] = elo;
  eHi[4] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 4);
  if ((elo & 0x80) /* PS */ !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 4);
  let acc = elo;
  let xd = ehi;
  if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 3, tableAt(elo, ehi), rsvdHi, acc, xd);

  // PDPTE (§4.5.4; a 1 GiB leaf: Table 4-15).
  epa = ((elo & 0xfffff000) | ((((lo >>> 30) | (hi << 2)) & 0x1ff) << 3)) >>> 0;
  elo = mem.read32(epa);
  ehi = mem.read32((epa | 4) >>> 0);
  ePa[3] = epa;
  eLo[3] = elo;
  eHi[3] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 3);
  let level = 3;
  let offsetMask = 0x3fffffff; // 1 GiB
  if ((elo & 0x80) /* PS */ !== 0) {
    if ((elo & 0x3fffe000) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 3);
  } else {
    if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 3);
    acc &= elo;
    xd |= ehi;
    if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 2, tableAt(elo, ehi), rsvdHi, acc, xd);

    // PDE (§4.5.4; a 2 MiB leaf: Table 4-17).
    epa = ((elo & 0xfffff000) | (((lo >>> 21) & 0x1ff) << 3)) >>> 0;
    elo = mem.read32(epa);
    ehi = mem.read32((epa | 4) >>> 0);
    ePa[2] = epa;
    eLo[2] = elo;
    eHi[2] = ehi;
    if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 2);
    level = 2;
    offsetMask = 0x1fffff; // 2 MiB
    if ((elo & 0x80) /* PS */ !== 0) {
      if ((elo & 0x001fe000) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
    } else {
      if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
      acc &= elo;
      xd |= ehi;
      if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 1, tableAt(elo, ehi), rsvdHi, acc, xd);

      // PTE (§4.5.4): bit 7 is PAT, not PS.
      epa = ((elo & 0xfffff000) | (((lo >>> 12) & 0x1ff) << 3)) >>> 0;
      elo = mem.read32(epa);
      ehi = mem.read32((epa | 4) >>> 0);
      ePa[1] = epa;
      eLo[1] = elo;
      eHi[1] = ehi;
      if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 1);
      if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 1);
      level = 1;
      offsetMask = 0xfff;
    }
  }
  acc &= elo;
  xd |= ehi;
  out.leafLevel = level;
  out.pageSize = offsetMask + 1;
  out.writable = (acc & 0x2) /* R/W */ !== 0;
  out.user = (acc & 0x4) /* U/S */ !== 0;
  out.executable = (xd & 0x80000000) /* XD */ === 0;
  out.global = ctx.cr4Pge && (elo & 0x100) /* G */ !== 0;
  out.pkey = (ehi >>> 27) & 15; // bits 62:59 (§4.6.2)
  out.pa = (((elo & ~offsetMask) | (lo & offsetMask)) >>> 0) + (ehi & 0xfffff) * 4294967296;
  return finish(ctx, mem, access, flags, out, 4, acc, xd, elo);
}

/**
 * 5-level paging, SDM Vol. 3A §4.5: as 4-level paging with a PML5 table above the PML4 (CR4.LA57 = 1);
 * PML5 index bits 56:48, `hi >>> 16`. The levels below the PML5E are `walk4`'s, written out again so that
 * each function keeps its own type feedback.
 */
function walk5(ctx: PagingContext, mem: PhysicalMemory, lo: number, hi: number, access: number, flags: number, out: WalkResult): number {
  out.topLevel = 5;
  const ePa = out.entryPa;
  const eLo = out.entryLo;
  const eHi = out.entryHi;
  const m = ctx.maxPhyAddr - 32; // first reserved address bit, in the high half
  const rsvdHi = ((0xfffff >>> m) << m) | (ctx.eferNxe ? 0 : 0x80000000); // bits 51:M, and XD without NXE (§4.5.4)
  const cr3 = ctx.cr3;
  // CR3 bits M-1:12 locate the top table (§4.5.2; bits 11:0 are flags or the PCID).
  if (!(cr3 < 4294967296)) return walkFrom(ctx, mem, lo, hi, access, flags, out, 5, longRoot(cr3, m), rsvdHi, -1, 0);

  // PML5E (§4.5.4): PS is reserved.
  let epa = ((cr3 & 0xfffff000) | (((hi >>> 16) & 0x1ff) << 3)) >>> 0;
  let elo = mem.read32(epa);
  let ehi = mem.read32((epa | 4) >>> 0);
  ePa[5] = epa;
  eLo[5] = elo;
  eHi[5] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 5);
  if ((elo & 0x80) /* PS */ !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 5);
  let acc = elo;
  let xd = ehi;
  if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 4, tableAt(elo, ehi), rsvdHi, acc, xd);

  // PML4E (§4.5.4): PS is reserved.
  epa = ((elo & 0xfffff000) | (((hi >>> 7) & 0x1ff) << 3)) >>> 0;
  elo = mem.read32(epa);
  ehi = mem.read32((epa | 4) >>> 0);
  ePa[4] = epa;
  eLo[4] = elo;
  eHi[4] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 4);
  if ((elo & 0x80) /* PS */ !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 4);
  acc &= elo;
  xd |= ehi;
  if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 3, tableAt(elo, ehi), rsvdHi, acc, xd);

  // PDPTE (§4.5.4; a 1 GiB leaf: Table 4-15).
  epa = ((elo & 0xfffff000) | ((((lo >>> 30) | (hi << 2)) & 0x1ff) << 3)) >>> 0;
  elo = mem.read32(epa);
  ehi = mem.read32((epa | 4) >>> 0);
  ePa[3] = epa;
  eLo[3] = elo;
  eHi[3] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 3);
  let level = 3;
  let offsetMask = 0x3fffffff; // 1 GiB
  if ((elo & 0x80) /* PS */ !== 0) {
    if ((elo & 0x3fffe000) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 3);
  } else {
    if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 3);
    acc &= elo;
    xd |= ehi;
    if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 2, tableAt(elo, ehi), rsvdHi, acc, xd);

    // PDE (§4.5.4; a 2 MiB leaf: Table 4-17).
    epa = ((elo & 0xfffff000) | (((lo >>> 21) & 0x1ff) << 3)) >>> 0;
    elo = mem.read32(epa);
    ehi = mem.read32((epa | 4) >>> 0);
    ePa[2] = epa;
    eLo[2] = elo;
    eHi[2] = ehi;
    if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 2);
    level = 2;
    offsetMask = 0x1fffff; // 2 MiB
    if ((elo & 0x80) /* PS */ !== 0) {
      if ((elo & 0x001fe000) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
    } else {
      if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
      acc &= elo;
      xd |= ehi;
      if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 1, tableAt(elo, ehi), rsvdHi, acc, xd);

      // PTE (§4.5.4): bit 7 is PAT, not PS.
      epa = ((elo & 0xfffff000) | (((lo >>> 12) & 0x1ff) << 3)) >>> 0;
      elo = mem.read32(epa);
      ehi = mem.read32((epa | 4) >>> 0);
      ePa[1] = epa;
      eLo[1] = elo;
      eHi[1] = ehi;
      if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 1);
      if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 1);
      level = 1;
      offsetMask = 0xfff;
    }
  }
  acc &= elo;
  xd |= ehi;
  out.leafLevel = level;
  out.pageSize = offsetMask + 1;
  out.writable = (acc & 0x2) /* R/W */ !== 0;
  out.user = (acc & 0x4) /* U/S */ !== 0;
  out.executable = (xd & 0x80000000) /* XD */ === 0;
  out.global = ctx.cr4Pge && (elo & 0x100) /* G */ !== 0;
  out.pkey = (ehi >>> 27) & 15; // bits 62:59 (§4.6.2)
  out.pa = (((elo & ~offsetMask) | (lo & offsetMask)) >>> 0) + (ehi & 0xfffff) * 4294967296;
  return finish(ctx, mem, access, flags, out, 5, acc, xd, elo);
}

/**
 * PAE paging, SDM Vol. 3A §4.4: the PDPTE register selected by va bits 31:30, then a PD and a PT of 8-byte
 * entries; a PDE with PS=1 maps a 2 MiB page. No protection keys (§4.6.2: IA-32e paging only).
 */
function walkPae(ctx: PagingContext, mem: PhysicalMemory, lo: number, access: number, flags: number, out: WalkResult): number {
  // §4.4.1: the PDPTE registers, loaded at CR3 load, select the page directory; not-present gives #PF P=0.
  // Their reserved bits were checked at load time (loadPdptes); they carry no rights and get no A bit.
  const i = lo >>> 30;
  const plo = ctx.pdpteLo[i]!;
  const phi = ctx.pdpteHi[i]!;
  const ePa = out.entryPa;
  const eLo = out.entryLo;
  const eHi = out.entryHi;
  out.topLevel = 3;
  ePa[3] = (((ctx.cr3 >>> 0) & 0xffffffe0) >>> 0) + i * 8; // where the register was loaded from
  eLo[3] = plo;
  eHi[3] = phi;
  if ((plo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 3);
  const m = ctx.maxPhyAddr - 32; // first reserved address bit, in the high half
  const rsvdHi = ((0x7fffffff >>> m) << m) | (ctx.eferNxe ? 0 : 0x80000000); // bits 62:M, and XD without NXE (§4.4.2)
  if ((phi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, 0, access, flags, out, 2, tableAt(plo, phi), rsvdHi, -1, 0);

  // PDE (§4.4.2; a 2 MiB leaf: Table 4-9).
  let epa = ((plo & 0xfffff000) | (((lo >>> 21) & 0x1ff) << 3)) >>> 0;
  let elo = mem.read32(epa);
  let ehi = mem.read32((epa | 4) >>> 0);
  ePa[2] = epa;
  eLo[2] = elo;
  eHi[2] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 2);
  let acc = -1;
  let xd = 0;
  let level = 2;
  let offsetMask = 0x1fffff; // 2 MiB
  if ((elo & 0x80) /* PS */ !== 0) {
    if ((elo & 0x001fe000) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
  } else {
    if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
    acc = elo;
    xd = ehi;
    if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, 0, access, flags, out, 1, tableAt(elo, ehi), rsvdHi, acc, xd);

    // PTE (§4.4.2): bit 7 is PAT, not PS.
    epa = ((elo & 0xfffff000) | (((lo >>> 12) & 0x1ff) << 3)) >>> 0;
    elo = mem.read32(epa);
    ehi = mem.read32((epa | 4) >>> 0);
    ePa[1] = epa;
    eLo[1] = elo;
    eHi[1] = ehi;
    if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 1);
    if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 1);
    level = 1;
    offsetMask = 0xfff;
  }
  acc &= elo;
  xd |= ehi;
  out.leafLevel = level;
  out.pageSize = offsetMask + 1;
  out.writable = (acc & 0x2) /* R/W */ !== 0;
  out.user = (acc & 0x4) /* U/S */ !== 0;
  out.executable = (xd & 0x80000000) /* XD */ === 0;
  out.global = ctx.cr4Pge && (elo & 0x100) /* G */ !== 0;
  out.pkey = 0;
  out.pa = (((elo & ~offsetMask) | (lo & offsetMask)) >>> 0) + (ehi & 0xfffff) * 4294967296;
  return finish(ctx, mem, access, flags, out, 2, acc, xd, elo);
}

/** The physical address of the table an entry (lo, hi) points to: bits 51:12 (the bits from M up are reserved, and were checked clear). */
function tableAt(elo: number, ehi: number): number {
  return ((elo & 0xfffff000) >>> 0) + (ehi & 0xfffff) * 4294967296;
}

/** The top table of 4-/5-level paging: CR3 bits M-1:12, with `m` = M - 32 (§4.5.2). */
function longRoot(cr3: number, m: number): number {
  return (((cr3 >>> 0) & 0xfffff000) >>> 0) + (cr3 < 4294967296 ? 0 : ((Math.floor(cr3 / 4294967296) & ((1 << m) - 1)) >>> 0) * 4294967296);
}

/**
 * The general walk of 8-byte entries (PAE and 4-/5-level paging), from `level` (whose table is at the
 * physical address `base`, a plain number) down: table addresses at or above 4 GiB. `acc` and `xd` carry what the levels
 * above accumulated (-1 and 0 when none were walked in memory); `rsvdHi` is the high-half reserved mask of
 * the mode. `out.topLevel` and the entries of the levels above are already filled.
 */
function walkFrom(
  ctx: PagingContext,
  mem: PhysicalMemory,
  lo: number,
  hi: number,
  access: number,
  flags: number,
  out: WalkResult,
  level: number,
  base: number,
  rsvdHi: number,
  acc: number,
  xd: number,
): number {
  const ePa = out.entryPa;
  const eLo = out.entryLo;
  const eHi = out.entryHi;
  let elo: number;
  let ehi: number;
  let pageSize = 4096;
  for (;;) {
    let index: number;
    switch (level) {
      case 1:
        index = (lo >>> 12) & 0x1ff;
        break;
      case 2:
        index = (lo >>> 21) & 0x1ff;
        break;
      case 3:
        index = ((lo >>> 30) | (hi << 2)) & 0x1ff;
        break;
      case 4:
        index = (hi >>> 7) & 0x1ff;
        break;
      default:
        index = (hi >>> 16) & 0x1ff;
        break;
    }
    const epa = base + index * 8;
    elo = mem.read32(epa);
    ehi = mem.read32(epa + 4);
    ePa[level] = epa;
    eLo[level] = elo;
    eHi[level] = ehi;
    if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, level);
    let rsvdLo = 0;
    let isLeaf = level === 1;
    if ((elo & 0x80) /* PS */ !== 0) {
      if (level === 2) {
        isLeaf = true;
        rsvdLo = 0x001fe000; // bits 20:13
        pageSize = 2097152; // 2 MiB
      } else if (level === 3) {
        isLeaf = true; // 1 GiB pages are supported (CPUID.80000001H:EDX.Page1GB = 1)
        rsvdLo = 0x3fffe000; // bits 29:13
        pageSize = 1073741824; // 1 GiB
      } else if (level >= 4) {
        rsvdLo = 0x80; // PS is reserved in a PML4E and a PML5E
      }
      // level 1: bit 7 of a PTE is PAT, not PS
    }
    if ((elo & rsvdLo) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, level);
    acc &= elo;
    xd |= ehi; // XD is non-zero only with NXE (otherwise it is reserved and faulted above)
    if (isLeaf) break;
    base = tableAt(elo, ehi);
    level--;
  }

  const offsetMask = pageSize - 1;
  const pae = ctx.mode === 1; /* MODE_PAE */
  out.leafLevel = level;
  out.pageSize = pageSize;
  out.writable = (acc & 0x2) /* R/W */ !== 0;
  out.user = (acc & 0x4) /* U/S */ !== 0;
  out.executable = (xd & 0x80000000) /* XD */ === 0;
  out.global = ctx.cr4Pge && (elo & 0x100) /* G */ !== 0;
  out.pkey = pae ? 0 : (ehi >>> 27) & 15; // bits 62:59 (§4.6.2); PAE has no keys
  out.pa = ((elo & ~offsetMask) >>> 0) + (ehi & 0xfffff) * 4294967296 + (lo & offsetMask);
  return finish(ctx, mem, access, flags, out, pae ? 2 : out.topLevel, acc, xd, elo);
}

/**
 * The end of a complete translation whose address is in `out.pa` (passed there rather than as an argument,
 * so that it is never boxed): rights (§4.6), then A/D
 * (§4.8) from `fromLevel` (the top level walked in memory) down to the leaf. `acc` is the AND of the low
 * halves of the entries walked in memory (R/W and U/S: the rights; A: A already set on every level, nothing
 * to set for a read), `xd` the OR of their high halves (XD), `leafLo` the leaf's low half (its D bit).
 */
function finish(
  ctx: PagingContext,
  mem: PhysicalMemory,
  access: number,
  flags: number,
  out: WalkResult,
  fromLevel: number,
  acc: number,
  xd: number,
  leafLo: number,
): number {
  const fault = permissionFault(ctx, access, (acc & 0x6) | (xd & 0x80000000), out.pkey);
  if (fault !== 0) return pageFault(out, fault);
  const write = (access & 0x2) /* ACC_WRITE */ !== 0;
  const sideEffects = (flags & 1) /* WALK_SIDE_EFFECTS */ !== 0;
  // The common case needs no update: A already set on every level (and D in the leaf for a write).
  if (sideEffects && ((acc & 0x20) /* A */ === 0 || (write && (leafLo & 0x40) /* D */ === 0))) setAccessedDirty(mem, out, fromLevel, write);
  // D after the walk: the leaf's, or set now by a write with side effects.
  out.dirty = (leafLo & 0x40) /* D */ !== 0 || (sideEffects && write);
  out.status = 0; // WALK_OK
  return 0;
}

/**
 * Sets A in every entry walked from `fromLevel` down to `out.leafLevel`, and D in the leaf for a write
 * (§4.8). Each update is a read-modify-write of the entry's low half that only sets bits, so that entries
 * seen twice in one walk (a recursive mapping) keep every bit set.
 */
function setAccessedDirty(mem: PhysicalMemory, out: WalkResult, fromLevel: number, write: boolean): void {
  const leafLevel = out.leafLevel;
  for (let l = fromLevel; l >= leafLevel; l--) {
    const want = l === leafLevel && write ? 0x60 /* A | D */ : 0x20; /* A */
    const seen = out.entryLo[l]!;
    if ((seen & want) !== want) {
      const epa = out.entryPa[l]!;
      const now = (mem.read32(epa) | want) >>> 0;
      mem.write32(epa, now);
      out.entryLo[l] = now;
    }
  }
}

/** The second-stage rights of the translation of each guest paging-structure entry's gpa, per level (scratch of walkNested). */
const stageRights = new Int32Array(6);

/**
 * The two-dimensional walk (SDM Vol. 3C §29.3.2-29.3.3 for EPT, AMD APM Vol. 2 §15.25.5-15.25.6 for NPT):
 * the guest's paging structures are walked as in `walk`, but every guest-physical address the processor
 * uses goes through `ctx.nested` first: the address of each guest paging-structure entry (NESTED_TABLE),
 * and the final guest-physical address once the guest's rights allow the access (NESTED_FINAL). The guest
 * entries are read at the host-physical addresses the second stage returns, in `mem` (host memory). A TLB
 * miss with 4-level guest tables and 4-level second-stage tables reads 4 x 4 second-stage entries for the
 * guest tables, 4 guest entries and 4 second-stage entries for the final address: 24 references, counted
 * in `out.refs` (n guest levels over m second-stage levels: n * (m + 1) + m; PAE's PDPTEs are registers).
 *
 * Reserved bits of the guest entries are those of the processor's MAXPHYADDR, the stage's (the guest's
 * CPUID value, `ctx.maxPhyAddr`, does not change what the hardware checks; a gpa beyond the guest's
 * MAXPHYADDR reaches the second stage, which KVM leaves unmapped and then handles, see mmu-tdp's design).
 *
 * A/D updates of guest entries are writes (SDM §29.3.3.2: "Writes by the logical processor to guest paging
 * structures to update accessed and dirty flags are considered to be data writes"), done after the final
 * translation succeeded: an entry that needs one and whose second-stage translation did not allow writes
 * ends the walk with a second-stage fault (a write to a guest paging-structure entry, not final). The
 * stage decides what kind of access a paging-structure read is (EPT: a read, a write with EPTP bit 6; NPT:
 * a user write), so for NPT and A/D-enabled EPT that check never fails.
 *
 * `out` as for `walk`, and `out.entryPa` holds host-physical addresses, `out.entryGpa` the guest-physical
 * ones, `out.pa` the host-physical address; `out.nestedRights`/`nestedDirty` describe the final
 * translation (the TLB caches the combined translation, SDM §29.4.1: its rights are the AND of both).
 */
export function walkNested(ctx: PagingContext, mem: PhysicalMemory, va: number, access: number, flags: number, out: WalkResult): number {
  const stage = ctx.nested!;
  out.errorCode = 0;
  out.global = false;
  out.pkey = 0;
  out.refs = 0;
  const mode = ctx.mode;
  if (mode === 2 /* MODE_LONG4 */ && !(va >= -140737488355328 && va < 140737488355328)) return generalProtection(out);
  if (mode === 3 /* MODE_LONG5 */ && !(va >= -72057594037927936 && va < 72057594037927936)) return generalProtection(out);
  const lo = va | 0;
  if (mode === 0 /* MODE_LEGACY32 */) return walkNested32(ctx, stage, mem, lo, access, flags, out);
  const hi = Math.floor(va * 2.3283064365386963e-10) | 0;
  const ePa = out.entryPa;
  const eLo = out.entryLo;
  const eHi = out.entryHi;
  const eGpa = out.entryGpa;
  const m = stage.maxPhyAddr - 32; // first reserved address bit, in the high half (the processor's MAXPHYADDR)
  const nx = ctx.eferNxe ? 0 : 0x80000000; // XD is reserved without NXE
  let level: number;
  let base: number;
  let rsvdHi: number;
  if (mode === 1 /* MODE_PAE */) {
    // §4.4.1: the PDPTE registers (loaded at CR3 load, through the second stage: loadPdptes).
    const i = lo >>> 30;
    const plo = ctx.pdpteLo[i]!;
    const phi = ctx.pdpteHi[i]!;
    out.topLevel = 3;
    eGpa[3] = ePa[3] = (((ctx.cr3 >>> 0) & 0xffffffe0) >>> 0) + i * 8;
    eLo[3] = plo;
    eHi[3] = phi;
    if ((plo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 3);
    rsvdHi = ((0x7fffffff >>> m) << m) | nx; // bits 62:M (§4.4.2)
    level = 2;
    base = tableAt(plo, phi);
  } else {
    rsvdHi = ((0xfffff >>> m) << m) | nx; // bits 51:M (§4.5.4)
    level = mode === 3 ? 5 : 4;
    out.topLevel = level;
    base = longRoot(ctx.cr3, m);
  }
  let acc = -1;
  let xd = 0;
  let elo: number;
  let ehi: number;
  let pageSize = 4096;
  for (;;) {
    let index: number;
    switch (level) {
      case 1:
        index = (lo >>> 12) & 0x1ff;
        break;
      case 2:
        index = (lo >>> 21) & 0x1ff;
        break;
      case 3:
        index = ((lo >>> 30) | (hi << 2)) & 0x1ff;
        break;
      case 4:
        index = (hi >>> 7) & 0x1ff;
        break;
      default:
        index = (hi >>> 16) & 0x1ff;
        break;
    }
    const gpa = base + index * 8;
    const hpa = stage.translate(gpa, access, NESTED_TABLE, flags, out);
    if (hpa < 0) return nestedFault(out);
    stageRights[level] = out.nestedRights;
    elo = mem.read32(hpa);
    ehi = mem.read32(hpa + 4);
    out.refs++;
    ePa[level] = hpa;
    eGpa[level] = gpa;
    eLo[level] = elo;
    eHi[level] = ehi;
    if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, level);
    let rsvdLo = 0;
    let isLeaf = level === 1;
    if ((elo & 0x80) /* PS */ !== 0) {
      if (level === 2) {
        isLeaf = true;
        rsvdLo = 0x001fe000; // bits 20:13
        pageSize = 2097152;
      } else if (level === 3 && mode !== 1) {
        isLeaf = true;
        rsvdLo = 0x3fffe000; // bits 29:13
        pageSize = 1073741824;
      } else if (level >= 4) {
        rsvdLo = 0x80; // PS is reserved in a PML4E and a PML5E
      }
    }
    if ((elo & rsvdLo) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, level);
    acc &= elo;
    xd |= ehi;
    if (isLeaf) break;
    base = tableAt(elo, ehi);
    level--;
  }
  const offsetMask = pageSize - 1;
  out.leafLevel = level;
  out.pageSize = pageSize;
  out.writable = (acc & 0x2) /* R/W */ !== 0;
  out.user = (acc & 0x4) /* U/S */ !== 0;
  out.executable = (xd & 0x80000000) /* XD */ === 0;
  out.global = ctx.cr4Pge && (elo & 0x100) /* G */ !== 0;
  out.pkey = mode === 1 ? 0 : (ehi >>> 27) & 15;
  out.pa = ((elo & ~offsetMask) >>> 0) + (ehi & 0xfffff) * 4294967296 + (lo & offsetMask);
  return finishNested(ctx, stage, mem, access, flags, out, mode === 1 ? 2 : out.topLevel, acc, xd, elo);
}

/** `walkNested` for 32-bit paging (§4.3): a PDE and a PTE of 4 bytes, or a 4 MiB page with CR4.PSE. */
function walkNested32(ctx: PagingContext, stage: SecondStage, mem: PhysicalMemory, lo: number, access: number, flags: number, out: WalkResult): number {
  out.topLevel = 2;
  const ePa = out.entryPa;
  const eLo = out.entryLo;
  const eHi = out.entryHi;
  const eGpa = out.entryGpa;
  let gpa = (((ctx.cr3 >>> 0) & 0xfffff000) >>> 0) + (lo >>> 22) * 4;
  let hpa = stage.translate(gpa, access, NESTED_TABLE, flags, out);
  if (hpa < 0) return nestedFault(out);
  stageRights[2] = out.nestedRights;
  const pde = mem.read32(hpa);
  out.refs++;
  ePa[2] = hpa;
  eGpa[2] = gpa;
  eLo[2] = pde;
  eHi[2] = 0;
  if ((pde & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 2);
  let leaf = pde;
  let pa: number;
  if (ctx.cr4Pse && (pde & 0x80) /* PS */ !== 0) {
    const m = stage.maxPhyAddr < 40 ? stage.maxPhyAddr : 40;
    const rsvd = ((0x3fffff >>> (m - 19)) << (m - 19)) >>> 0; // bits 21:(M-19)
    if ((pde & rsvd) !== 0) return reservedFault(ctx, out, access, 2);
    pa = ((pde & 0xffc00000) >>> 0) + ((pde >>> 13) & ((1 << (m - 32)) - 1)) * 4294967296 + (lo & 0x3fffff);
    out.leafLevel = 2;
    out.pageSize = 4194304;
  } else {
    gpa = ((pde & 0xfffff000) >>> 0) + ((lo >>> 12) & 0x3ff) * 4;
    hpa = stage.translate(gpa, access, NESTED_TABLE, flags, out);
    if (hpa < 0) return nestedFault(out);
    stageRights[1] = out.nestedRights;
    leaf = mem.read32(hpa);
    out.refs++;
    ePa[1] = hpa;
    eGpa[1] = gpa;
    eLo[1] = leaf;
    eHi[1] = 0;
    if ((leaf & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 1);
    pa = ((leaf & 0xfffff000) >>> 0) + (lo & 0xfff);
    out.leafLevel = 1;
    out.pageSize = 4096;
  }
  const both = pde & leaf;
  out.writable = (both & 0x2) /* R/W */ !== 0;
  out.user = (both & 0x4) /* U/S */ !== 0;
  out.executable = true;
  out.global = ctx.cr4Pge && (leaf & 0x100) /* G */ !== 0;
  out.pa = pa;
  return finishNested(ctx, stage, mem, access, flags, out, 2, both, 0, leaf);
}

/**
 * The end of a two-dimensional walk whose guest-physical address is in `out.pa`: the guest's rights (§4.6),
 * the second-stage translation of the final address, then the guest's A/D updates (§4.8), each a write to a
 * guest paging-structure entry that its second-stage translation must allow (`stageRights`, per level).
 * Leaves the host-physical address in `out.pa`.
 */
function finishNested(
  ctx: PagingContext,
  stage: SecondStage,
  mem: PhysicalMemory,
  access: number,
  flags: number,
  out: WalkResult,
  fromLevel: number,
  acc: number,
  xd: number,
  leafLo: number,
): number {
  const fault = permissionFault(ctx, access, (acc & 0x6) | (xd & 0x80000000), out.pkey);
  if (fault !== 0) return pageFault(out, fault);
  const hpa = stage.translate(out.pa, access, NESTED_FINAL, flags, out);
  if (hpa < 0) return nestedFault(out);
  const write = (access & 0x2) /* ACC_WRITE */ !== 0;
  const sideEffects = (flags & 1) /* WALK_SIDE_EFFECTS */ !== 0;
  if (sideEffects && ((acc & 0x20) /* A */ === 0 || (write && (leafLo & 0x40) /* D */ === 0))) {
    const leafLevel = out.leafLevel;
    for (let l = fromLevel; l >= leafLevel; l--) {
      const want = l === leafLevel && write ? 0x60 /* A | D */ : 0x20; /* A */
      if ((out.entryLo[l]! & want) !== want && (stageRights[l]! & NESTED_W) === 0) {
        // SDM §29.3.3.2: the flag update is a data write the second stage does not allow.
        out.nestedGpa = out.entryGpa[l]!;
        out.nestedFinal = false;
        out.nestedAccess = ACC_WRITE;
        out.nestedCode = (stageRights[l]! !== 0 ? PFERR_PRESENT : 0) | ACC_WRITE;
        out.nestedRights = stageRights[l]!;
        out.nestedMisconfig = false;
        return nestedFault(out);
      }
    }
    setAccessedDirty(mem, out, fromLevel, write);
  }
  out.pa = hpa;
  out.dirty = (leafLo & 0x40) /* D */ !== 0 || (sideEffects && write);
  out.status = 0; // WALK_OK
  return 0;
}

/**
 * Loads the four PAE PDPTE registers from the 32-byte-aligned PDPT at CR3[31:5] (SDM Vol. 3A §4.4.1), as
 * MOV to CR3 (and the CR0/CR4 writes that enable PAE paging) do. Returns false, leaving the registers
 * unchanged, when a present PDPTE has a reserved bit set (bits 2:1, 8:5, 63:MAXPHYADDR; Table 4-8): the
 * instruction then raises #GP(0), not #PF. With a second stage, the PDPT's guest-physical address is
 * translated first, as a read (NESTED_PDPTE: "loads of guest PDPTEs are treated as reads and do not cause EPT
 * violations due to a guest-physical address not being writable", SDM Vol. 3C §29.3.3.2), the reserved bits
 * are those of the processor's MAXPHYADDR (the stage's), and a refusal also fails the load (KVM
 * `load_pdptrs` returns false when the translation fails). `scratch` receives a second-stage fault's details.
 */
export function loadPdptes(ctx: PagingContext, mem: PhysicalMemory, scratch: WalkResult = loadScratch): boolean {
  let base = ((ctx.cr3 >>> 0) & 0xffffffe0) >>> 0;
  if (ctx.nested !== null) {
    base = ctx.nested.translate(base, ACC_READ, NESTED_PDPTE, WALK_SIDE_EFFECTS, scratch);
    if (base < 0) return false;
  }
  const m = (ctx.nested !== null ? ctx.nested.maxPhyAddr : ctx.maxPhyAddr) - 32;
  const rsvdHi = ((0xffffffff >>> m) << m) >>> 0; // bits 63:M
  for (let i = 0; i < 4; i++) {
    const lo = mem.read32(base + i * 8);
    const hi = mem.read32(base + i * 8 + 4);
    if ((lo & PT_PRESENT) !== 0 && ((lo & PDPTE_RSVD_LO) !== 0 || (hi & rsvdHi) !== 0)) return false;
  }
  for (let i = 0; i < 4; i++) {
    ctx.pdpteLo[i] = mem.read32(base + i * 8);
    ctx.pdpteHi[i] = mem.read32(base + i * 8 + 4);
  }
  return true;
}

const loadScratch = new WalkResult();

/** The fields of a `PagingContext` one may give to `createPagingContext`; the rest take defaults. */
export type PagingContextInit = Partial<Omit<PagingContext, 'pdpteLo' | 'pdpteHi'>> & {
  pdpteLo?: ArrayLike<number>;
  pdpteHi?: ArrayLike<number>;
};

/**
 * A `PagingContext` with defaults for what `init` leaves out: 4-level paging, CR3 = 0, MAXPHYADDR 46, every
 * control bit clear, PKRU = 0, no second stage, PDPTE registers zero (not present).
 * Throws a RangeError for a MAXPHYADDR outside 36..52 or an unknown mode.
 */
export function createPagingContext(init: PagingContextInit = {}): PagingContext {
  const mode: PagingModeId = init.mode ?? MODE_LONG4;
  if (mode !== MODE_LEGACY32 && mode !== MODE_PAE && mode !== MODE_LONG4 && mode !== MODE_LONG5) {
    throw new RangeError(`createPagingContext: unknown paging mode ${String(mode)}`);
  }
  const maxPhyAddr = init.maxPhyAddr ?? 46;
  if (!Number.isInteger(maxPhyAddr) || maxPhyAddr < 36 || maxPhyAddr > 52) {
    throw new RangeError(`createPagingContext: MAXPHYADDR ${maxPhyAddr} is outside 36..52`);
  }
  const pdpteLo = new Uint32Array(4);
  const pdpteHi = new Uint32Array(4);
  if (init.pdpteLo !== undefined) pdpteLo.set(Array.from(init.pdpteLo).slice(0, 4));
  if (init.pdpteHi !== undefined) pdpteHi.set(Array.from(init.pdpteHi).slice(0, 4));
  return {
    mode,
    cr3: init.cr3 ?? 0,
    pdpteLo,
    pdpteHi,
    maxPhyAddr,
    cr0Wp: init.cr0Wp ?? false,
    cr4Pse: init.cr4Pse ?? false,
    cr4Pge: init.cr4Pge ?? false,
    cr4Smep: init.cr4Smep ?? false,
    cr4Smap: init.cr4Smap ?? false,
    cr4Pke: init.cr4Pke ?? false,
    eferNxe: init.eferNxe ?? false,
    eflagsAc: init.eflagsAc ?? false,
    pkru: (init.pkru ?? 0) >>> 0,
    nested: init.nested ?? null,
  };
}
