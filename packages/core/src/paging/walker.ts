import { ACC_READ, PT_ACCESSED, PT_DIRTY, PT_PAGE_SIZE, PT_PRESENT } from '../arch/constants.js';
import { MODE_LEGACY32, MODE_LONG4, MODE_LONG5, MODE_PAE, type PagingModeId } from '../arch/modes.js';
import type { DirectWords, PhysicalMemory } from '../memory/physical.js';
import { NESTED_PDPTE, WALK_SIDE_EFFECTS, WalkResult, type PagingContext } from './types.js';
import * as walkCommon from './walk-common.js';
import { walkNested } from './nested-walker.js';

/*
 * Module-local copies of the imported constants and helpers the walks use: V8 (Node 20) reads an imported binding
 * through its module cell, with a check, on every use, where it folds a module-local const into the compiled code
 * (core DESIGN.md, "Speed"). The pte bits of the hot path (SDM Vol. 3A §4.3-4.5: A = bit 5, D = bit 6, PS = bit 7)
 * under short names.
 */
const { generalProtection, longRootHi, notPresent, pageFault, PDPTE_RSVD_LO, permissionFault, reservedFault, setAccessedDirty, tableIndex } = walkCommon;
const PS = PT_PAGE_SIZE;
const ACCESSED = PT_ACCESSED;
const DIRTY = PT_DIRTY;

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
 * - Literal constants in the hot functions, each with its SDM name in a comment, or module-local copies of
 *   the named ones (PS, ACCESSED, DIRTY below), never the imported ones: V8 (Node 20) reads an imported (or
 *   exported) binding through a module cell on every use instead of folding it (the same fix made the TLB
 *   hit path 2x faster, tlb/tlb.ts). Entry bits: P = 0x1, R/W = 0x2, U/S = 0x4, A = 0x20, D = 0x40, PS =
 *   0x80, G = 0x100 (§4.3-4.5); XD = bit 63 = high-half
 *   0x80000000; the protection key is bits 62:59 = high-half bits 30:27. Error code (§4.7, Figure 4-12):
 *   P = 0x1, W/R = 0x2, U/S = 0x4, RSVD = 0x8, I/D = 0x10, PK = 0x20; access kinds are the same bits
 *   (ACC_WRITE = 0x2, ACC_USER = 0x4, ACC_FETCH = 0x10). Statuses: WALK_OK = 0, WALK_PAGE_FAULT = 1,
 *   WALK_GP = 2, WALK_NESTED_FAULT = 3 (types.ts). Flags: WALK_SIDE_EFFECTS = 1. Modes: MODE_LEGACY32 =
 *   0, MODE_PAE = 1, MODE_LONG4 = 2, MODE_LONG5 = 3 (arch/modes.ts).
 * - The rights of the translation are accumulated while walking, as `acc` (the AND of the low halves: R/W,
 *   U/S and A of every entry read from memory) and `xd` (the OR of the high halves: XD of every level),
 *   and checked from those (`permissionFault`), not reloaded from `out`.
 * - Each half is taken as an int32 as it is read (`mem.read32(epa) | 0`): only bit operations use it. A uint32
 *   with bit 31 set (an XD bit, a high address bit) is no small integer to V8, and in a run's compiled walk V8
 *   kept such a value, merged from the walk's branches, as a boxed number: a heap allocation on every walk of an
 *   XD page (the emulated write's guest walk among them). Stored in `entryLo`/`entryHi` (Uint32Arrays), an int32
 *   is the same bits.
 * - The common case of a walk with side effects writes nothing: A already set on every level, and D in
 *   the leaf for a write. Only when a bit is missing does `setAccessedDirty` run.
 * - Two-dimensional paging (`ctx.nested`, EPT/NPT) is `walkNested`, a function of its own that `walk`
 *   calls first thing: the one-dimensional functions above carry no second-stage code at all.
 */

export { rightsFault } from './walk-common.js';

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
  const pde = mem.read32(epa) | 0;
  ePa[2] = epa;
  eLo[2] = pde;
  eHi[2] = 0;
  if ((pde & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 2);

  let leaf = pde;
  let pa: number;
  if (ctx.cr4Pse === true && (pde & PS) !== 0) {
    const m = ctx.maxPhyAddr < 40 ? ctx.maxPhyAddr : 40;
    const rsvd = ((0x3fffff >>> (m - 19)) << (m - 19)) >>> 0; // bits 21:(M-19)
    if ((pde & rsvd) !== 0) return reservedFault(ctx, out, access, 2);
    const high = (pde >>> 13) & ((1 << (m - 32)) - 1); // PA bits (M-1):32
    pa = ((pde & 0xffc00000) >>> 0) + high * 4294967296 + (lo & 0x3fffff);
    out.leafLevel = 2;
    out.pageSize = 4194304; // 4 MiB
  } else {
    epa = ((pde & 0xfffff000) >>> 0) + ((lo >>> 12) & 0x3ff) * 4;
    leaf = mem.read32(epa) | 0;
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
  out.global = ctx.cr4Pge === true && (leaf & 0x100) /* G */ !== 0;
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
  const rsvdHi = ((0xfffff >>> m) << m) | (ctx.eferNxe === true ? 0 : 0x80000000); // bits 51:M, and XD without NXE (§4.5.4)
  const cr3 = ctx.cr3;
  // CR3 bits M-1:12 locate the top table (§4.5.2; bits 11:0 are flags or the PCID).
  if (!(cr3 < 4294967296)) {
    const words = (mem as Partial<DirectWords>).directWords;
    if (words !== undefined) return walk4Direct(ctx, mem as DirectWords, words, lo, hi, access, flags, out, cr3 & 0xfffff000, longRootHi(cr3, m), rsvdHi);
    return walkFrom(ctx, mem, lo, hi, access, flags, out, 4, cr3 & 0xfffff000, longRootHi(cr3, m), rsvdHi, -1, 0);
  }

  // PML4E (§4.5.4): PS is reserved.
  let epa = ((cr3 & 0xfffff000) | (((hi >>> 7) & 0x1ff) << 3)) >>> 0;
  let elo = mem.read32(epa) | 0;
  let ehi = mem.read32((epa | 4) >>> 0) | 0;
  ePa[4] = epa;
  eLo[4] = elo;
  eHi[4] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 4);
  if ((elo & PS) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 4);
  let acc = elo;
  let xd = ehi;
  if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 3, elo & 0xfffff000, ehi & 0xfffff, rsvdHi, acc, xd);

  // PDPTE (§4.5.4; a 1 GiB leaf: Table 4-15).
  epa = ((elo & 0xfffff000) | ((((lo >>> 30) | (hi << 2)) & 0x1ff) << 3)) >>> 0;
  elo = mem.read32(epa) | 0;
  ehi = mem.read32((epa | 4) >>> 0) | 0;
  ePa[3] = epa;
  eLo[3] = elo;
  eHi[3] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 3);
  let level = 3;
  let offsetMask = 0x3fffffff; // 1 GiB
  if ((elo & PS) !== 0) {
    if ((elo & 0x3fffe000) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 3);
  } else {
    if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 3);
    acc &= elo;
    xd |= ehi;
    if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 2, elo & 0xfffff000, ehi & 0xfffff, rsvdHi, acc, xd);

    // PDE (§4.5.4; a 2 MiB leaf: Table 4-17).
    epa = ((elo & 0xfffff000) | (((lo >>> 21) & 0x1ff) << 3)) >>> 0;
    elo = mem.read32(epa) | 0;
    ehi = mem.read32((epa | 4) >>> 0) | 0;
    ePa[2] = epa;
    eLo[2] = elo;
    eHi[2] = ehi;
    if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 2);
    level = 2;
    offsetMask = 0x1fffff; // 2 MiB
    if ((elo & PS) !== 0) {
      if ((elo & 0x001fe000) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
    } else {
      if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
      acc &= elo;
      xd |= ehi;
      if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 1, elo & 0xfffff000, ehi & 0xfffff, rsvdHi, acc, xd);

      // PTE (§4.5.4): bit 7 is PAT, not PS.
      epa = ((elo & 0xfffff000) | (((lo >>> 12) & 0x1ff) << 3)) >>> 0;
      elo = mem.read32(epa) | 0;
      ehi = mem.read32((epa | 4) >>> 0) | 0;
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
  out.global = ctx.cr4Pge === true && (elo & 0x100) /* G */ !== 0;
  out.pkey = (ehi >>> 27) & 15; // bits 62:59 (§4.6.2)
  out.pa = (((elo & ~offsetMask) | (lo & offsetMask)) >>> 0) + (ehi & 0xfffff) * 4294967296;
  return finish(ctx, mem, access, flags, out, 4, acc, xd, elo);
}

/**
 * `walk4` for tables in a memory's direct window (`DirectWords`: the MMU pool's frames, where the shadow tables
 * are, above 4 GiB): the same checks in the same order, each entry read from the window's words without a
 * call. The table at (`tLo`, `tHi`: bits 31:0 and 51:32 of its address) is word `(tHi - dHi) * 2^30 + tLo / 4`
 * of the window, when the window starts on a 4 GiB boundary (dHi = its bits 51:32) and the table is in the
 * window's first 8 GiB; any other table goes on in `walkFrom`, from that level, with what was accumulated.
 */
function walk4Direct(
  ctx: PagingContext,
  mem: DirectWords,
  words: Uint32Array,
  lo: number,
  hi: number,
  access: number,
  flags: number,
  out: WalkResult,
  tLo: number,
  tHi: number,
  rsvdHi: number,
): number {
  // As an int32: a memory may compute it by a division (SptePool does), and V8 then keeps it as a double, which
  // made every level's window check below float arithmetic (a third of this walk's time).
  const dHi = mem.directBaseHi | 0;
  const last = words.length - 1024; // the last word a table may start at
  const ePa = out.entryPa;
  const eLo = out.entryLo;
  const eHi = out.entryHi;
  // PML4E (§4.5.4): PS is reserved.
  let tw = tableWord(tLo, tHi, dHi, last);
  if (tw < 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 4, tLo, tHi, rsvdHi, -1, 0);
  let idx = (hi >>> 7) & 0x1ff;
  let elo = words[tw + (idx << 1)]! | 0;
  let ehi = words[tw + (idx << 1) + 1]! | 0;
  ePa[4] = (tLo >>> 0) + tHi * 4294967296 + idx * 8;
  eLo[4] = elo;
  eHi[4] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 4);
  if ((elo & PS) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 4);
  let acc = elo;
  let xd = ehi;

  // PDPTE (§4.5.4; a 1 GiB leaf: Table 4-15).
  tLo = elo & 0xfffff000;
  tHi = ehi & 0xfffff;
  tw = tableWord(tLo, tHi, dHi, last);
  if (tw < 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 3, tLo >>> 0, tHi, rsvdHi, acc, xd);
  idx = ((lo >>> 30) | (hi << 2)) & 0x1ff;
  elo = words[tw + (idx << 1)]! | 0;
  ehi = words[tw + (idx << 1) + 1]! | 0;
  ePa[3] = (tLo >>> 0) + tHi * 4294967296 + idx * 8;
  eLo[3] = elo;
  eHi[3] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 3);
  let level = 3;
  let offsetMask = 0x3fffffff; // 1 GiB
  if ((elo & PS) !== 0) {
    if ((elo & 0x3fffe000) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 3);
  } else {
    if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 3);
    acc &= elo;
    xd |= ehi;

    // PDE (§4.5.4; a 2 MiB leaf: Table 4-17).
    tLo = elo & 0xfffff000;
    tHi = ehi & 0xfffff;
    tw = tableWord(tLo, tHi, dHi, last);
    if (tw < 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 2, tLo >>> 0, tHi, rsvdHi, acc, xd);
    idx = (lo >>> 21) & 0x1ff;
    elo = words[tw + (idx << 1)]! | 0;
    ehi = words[tw + (idx << 1) + 1]! | 0;
    ePa[2] = (tLo >>> 0) + tHi * 4294967296 + idx * 8;
    eLo[2] = elo;
    eHi[2] = ehi;
    if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 2);
    level = 2;
    offsetMask = 0x1fffff; // 2 MiB
    if ((elo & PS) !== 0) {
      if ((elo & 0x001fe000) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
    } else {
      if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
      acc &= elo;
      xd |= ehi;

      // PTE (§4.5.4): bit 7 is PAT, not PS.
      tLo = elo & 0xfffff000;
      tHi = ehi & 0xfffff;
      tw = tableWord(tLo, tHi, dHi, last);
      if (tw < 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 1, tLo >>> 0, tHi, rsvdHi, acc, xd);
      idx = (lo >>> 12) & 0x1ff;
      elo = words[tw + (idx << 1)]! | 0;
      ehi = words[tw + (idx << 1) + 1]! | 0;
      ePa[1] = (tLo >>> 0) + tHi * 4294967296 + idx * 8;
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
  out.global = ctx.cr4Pge === true && (elo & 0x100) /* G */ !== 0;
  out.pkey = (ehi >>> 27) & 15; // bits 62:59 (§4.6.2)
  out.pa = (((elo & ~offsetMask) | (lo & offsetMask)) >>> 0) + (ehi & 0xfffff) * 4294967296;
  return finish(ctx, mem, access, flags, out, 4, acc, xd, elo);
}

/**
 * The window word a table starts at (`tLo`: its address bits 31:12, as an int32; `tHi`: bits 51:32), or -1
 * when it is not in the window (whose base has bits 51:32 `dHi` and bits 31:0 zero; its first 8 GiB in int32
 * arithmetic: `rel << 30` is at most 2^30).
 */
function tableWord(tLo: number, tHi: number, dHi: number, last: number): number {
  const rel = tHi - dHi;
  if (dHi < 0 || (rel !== 0 && rel !== 1)) return -1;
  const w = (rel << 30) | (tLo >>> 2);
  return w <= last ? w : -1;
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
  const rsvdHi = ((0xfffff >>> m) << m) | (ctx.eferNxe === true ? 0 : 0x80000000); // bits 51:M, and XD without NXE (§4.5.4)
  const cr3 = ctx.cr3;
  // CR3 bits M-1:12 locate the top table (§4.5.2; bits 11:0 are flags or the PCID).
  if (!(cr3 < 4294967296)) return walkFrom(ctx, mem, lo, hi, access, flags, out, 5, cr3 & 0xfffff000, longRootHi(cr3, m), rsvdHi, -1, 0);

  // PML5E (§4.5.4): PS is reserved.
  let epa = ((cr3 & 0xfffff000) | (((hi >>> 16) & 0x1ff) << 3)) >>> 0;
  let elo = mem.read32(epa) | 0;
  let ehi = mem.read32((epa | 4) >>> 0) | 0;
  ePa[5] = epa;
  eLo[5] = elo;
  eHi[5] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 5);
  if ((elo & PS) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 5);
  let acc = elo;
  let xd = ehi;
  if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 4, elo & 0xfffff000, ehi & 0xfffff, rsvdHi, acc, xd);

  // PML4E (§4.5.4): PS is reserved.
  epa = ((elo & 0xfffff000) | (((hi >>> 7) & 0x1ff) << 3)) >>> 0;
  elo = mem.read32(epa) | 0;
  ehi = mem.read32((epa | 4) >>> 0) | 0;
  ePa[4] = epa;
  eLo[4] = elo;
  eHi[4] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 4);
  if ((elo & PS) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 4);
  acc &= elo;
  xd |= ehi;
  if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 3, elo & 0xfffff000, ehi & 0xfffff, rsvdHi, acc, xd);

  // PDPTE (§4.5.4; a 1 GiB leaf: Table 4-15).
  epa = ((elo & 0xfffff000) | ((((lo >>> 30) | (hi << 2)) & 0x1ff) << 3)) >>> 0;
  elo = mem.read32(epa) | 0;
  ehi = mem.read32((epa | 4) >>> 0) | 0;
  ePa[3] = epa;
  eLo[3] = elo;
  eHi[3] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 3);
  let level = 3;
  let offsetMask = 0x3fffffff; // 1 GiB
  if ((elo & PS) !== 0) {
    if ((elo & 0x3fffe000) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 3);
  } else {
    if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 3);
    acc &= elo;
    xd |= ehi;
    if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 2, elo & 0xfffff000, ehi & 0xfffff, rsvdHi, acc, xd);

    // PDE (§4.5.4; a 2 MiB leaf: Table 4-17).
    epa = ((elo & 0xfffff000) | (((lo >>> 21) & 0x1ff) << 3)) >>> 0;
    elo = mem.read32(epa) | 0;
    ehi = mem.read32((epa | 4) >>> 0) | 0;
    ePa[2] = epa;
    eLo[2] = elo;
    eHi[2] = ehi;
    if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 2);
    level = 2;
    offsetMask = 0x1fffff; // 2 MiB
    if ((elo & PS) !== 0) {
      if ((elo & 0x001fe000) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
    } else {
      if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
      acc &= elo;
      xd |= ehi;
      if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, hi, access, flags, out, 1, elo & 0xfffff000, ehi & 0xfffff, rsvdHi, acc, xd);

      // PTE (§4.5.4): bit 7 is PAT, not PS.
      epa = ((elo & 0xfffff000) | (((lo >>> 12) & 0x1ff) << 3)) >>> 0;
      elo = mem.read32(epa) | 0;
      ehi = mem.read32((epa | 4) >>> 0) | 0;
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
  out.global = ctx.cr4Pge === true && (elo & 0x100) /* G */ !== 0;
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
  const rsvdHi = ((0x7fffffff >>> m) << m) | (ctx.eferNxe === true ? 0 : 0x80000000); // bits 62:M, and XD without NXE (§4.4.2)
  if ((phi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, 0, access, flags, out, 2, plo & 0xfffff000, phi & 0xfffff, rsvdHi, -1, 0);

  // PDE (§4.4.2; a 2 MiB leaf: Table 4-9).
  let epa = ((plo & 0xfffff000) | (((lo >>> 21) & 0x1ff) << 3)) >>> 0;
  let elo = mem.read32(epa) | 0;
  let ehi = mem.read32((epa | 4) >>> 0) | 0;
  ePa[2] = epa;
  eLo[2] = elo;
  eHi[2] = ehi;
  if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, 2);
  let acc = -1;
  let xd = 0;
  let level = 2;
  let offsetMask = 0x1fffff; // 2 MiB
  if ((elo & PS) !== 0) {
    if ((elo & 0x001fe000) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
  } else {
    if ((ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, 2);
    acc = elo;
    xd = ehi;
    if ((ehi & 0xfffff) !== 0) return walkFrom(ctx, mem, lo, 0, access, flags, out, 1, elo & 0xfffff000, ehi & 0xfffff, rsvdHi, acc, xd);

    // PTE (§4.4.2): bit 7 is PAT, not PS.
    epa = ((elo & 0xfffff000) | (((lo >>> 12) & 0x1ff) << 3)) >>> 0;
    elo = mem.read32(epa) | 0;
    ehi = mem.read32((epa | 4) >>> 0) | 0;
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
  out.global = ctx.cr4Pge === true && (elo & 0x100) /* G */ !== 0;
  out.pkey = 0;
  out.pa = (((elo & ~offsetMask) | (lo & offsetMask)) >>> 0) + (ehi & 0xfffff) * 4294967296;
  return finish(ctx, mem, access, flags, out, 2, acc, xd, elo);
}

/**
 * The general walk of 8-byte entries (PAE and 4-/5-level paging), from `level` (whose table is at the
 * physical address `baseLo + baseHi * 2^32`, passed as two int halves so that no double is boxed for the
 * call) down: table addresses at or above 4 GiB. `acc` and `xd` carry what the levels
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
  baseLo: number,
  baseHi: number,
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
  let tLo = baseLo >>> 0; // the table's address, bits 31:0 (4 KiB aligned) and bits 51:32
  let tHi = baseHi;
  // The MMU pool's frames (DirectWords), read here without a call and in integer arithmetic: the shadow
  // tables a vCPU walks under shadow paging, all at POOL_BASE and above. A table at bits 51:32 = dHi or
  // dHi + 1 is at word (tHi - dHi) * 2^30 + tLo / 4 of the window (when the window starts on a 4 GiB
  // boundary, as POOL_BASE does). Whatever else (guest RAM, other memories) goes through read32.
  const words = (mem as Partial<DirectWords>).directWords;
  const dHi = words === undefined ? -1 : (mem as DirectWords).directBaseHi | 0; // an int32 (see walk4Direct)
  const dLen = words === undefined ? 0 : words.length;
  for (;;) {
    const index = tableIndex(level, lo, hi);
    const epa = tLo + tHi * 4294967296 + index * 8;
    const rel = tHi - dHi;
    const w = dHi >= 0 && (rel === 0 || rel === 1) ? rel * 1073741824 + ((tLo >>> 2) | (index << 1)) : -1;
    if (w >= 0 && w < dLen) {
      elo = words![w]! | 0;
      ehi = words![w + 1]! | 0;
    } else {
      elo = mem.read32(epa) | 0;
      ehi = mem.read32(epa + 4) | 0;
    }
    ePa[level] = epa;
    eLo[level] = elo;
    eHi[level] = ehi;
    if ((elo & 0x1) /* P */ === 0) return notPresent(ctx, out, access, level);
    let rsvdLo = 0;
    let isLeaf = level === 1;
    if ((elo & PS) !== 0) {
      if (level === 2) {
        isLeaf = true;
        rsvdLo = 0x001fe000; // bits 20:13
        pageSize = 2097152; // 2 MiB
      } else if (level === 3) {
        isLeaf = true; // 1 GiB pages are supported (CPUID.80000001H:EDX.Page1GB = 1)
        rsvdLo = 0x3fffe000; // bits 29:13
        pageSize = 1073741824; // 1 GiB
      } else if (level >= 4) {
        rsvdLo = PS; // PS is reserved in a PML4E and a PML5E
      }
      // level 1: bit 7 of a PTE is PAT, not PS
    }
    if ((elo & rsvdLo) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, level);
    acc &= elo;
    xd |= ehi; // XD is non-zero only with NXE (otherwise it is reserved and faulted above)
    if (isLeaf) break;
    tLo = (elo & 0xfffff000) >>> 0;
    tHi = ehi & 0xfffff;
    level--;
  }

  const offsetMask = pageSize - 1;
  const pae = ctx.mode === 1; /* MODE_PAE */
  out.leafLevel = level;
  out.pageSize = pageSize;
  out.writable = (acc & 0x2) /* R/W */ !== 0;
  out.user = (acc & 0x4) /* U/S */ !== 0;
  out.executable = (xd & 0x80000000) /* XD */ === 0;
  out.global = ctx.cr4Pge === true && (elo & 0x100) /* G */ !== 0;
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
  if (sideEffects && ((acc & ACCESSED) === 0 || (write && (leafLo & DIRTY) === 0))) setAccessedDirty(mem, out, fromLevel, write);
  // D after the walk: the leaf's, or set now by a write with side effects.
  out.dirty = (leafLo & DIRTY) !== 0 || (sideEffects && write);
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
 * are those of the processor's MAXPHYADDR (the stage's), and a refusal fails the load with
 * `scratch.status` = WALK_NESTED_FAULT and the fault's details in `scratch`: the processor's EPT violation /
 * #NPF, which the vCPU takes to the hypervisor before it retries the instruction (`Vcpu.reloadPdptes`).
 */
export function loadPdptes(ctx: PagingContext, mem: PhysicalMemory, scratch: WalkResult = loadScratch): boolean {
  let base = ((ctx.cr3 >>> 0) & 0xffffffe0) >>> 0;
  scratch.status = 0; // WALK_OK
  if (ctx.nested !== null) {
    base = ctx.nested.translate(base, ACC_READ, NESTED_PDPTE, WALK_SIDE_EFFECTS, scratch);
    if (base < 0) {
      // The second stage refused the PDPT's address: an EPT violation / #NPF, not a #GP (scratch says which).
      scratch.status = 3; // WALK_NESTED_FAULT
      return false;
    }
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
