import {
  ACC_FETCH,
  ACC_USER,
  ACC_WRITE,
  PFERR_FETCH,
  PFERR_PK,
  PFERR_PRESENT,
  PFERR_RSVD,
  PT_ACCESSED,
  PT_DIRTY,
  PT_GLOBAL,
  PT_HI_PKEY_SHIFT,
  PT_HI_XD,
  PT_PAGE_SIZE,
  PT_PRESENT,
  PT_USER,
  PT_WRITABLE,
  SIZE_1G,
  SIZE_2M,
  SIZE_4M,
  TWO_POW_32,
} from '../arch/constants.js';
import { MODE_LEGACY32, MODE_LONG4, MODE_LONG5, MODE_PAE, type PagingModeId } from '../arch/modes.js';
import type { PhysicalMemory } from '../memory/physical.js';
import {
  WALK_GP,
  WALK_NESTED_FAULT,
  WALK_OK,
  WALK_PAGE_FAULT,
  WALK_SIDE_EFFECTS,
  WalkResult,
  type PagingContext,
  type SecondStage,
} from './types.js';

/*
 * The architectural page walk, SDM Vol. 3A ch. 4. One function per entry size (32-bit paging: 4-byte
 * entries; PAE and IA-32e: 8-byte entries read as two 32-bit halves). The hot path allocates nothing, uses
 * no BigInt and no closure: every 64-bit quantity is a (lo, hi) pair of uint32, and physical addresses
 * (< 2^52) are joined into plain numbers as `lo + hi * 2^32`.
 *
 * Order of checks, as the SDM's translation process implies (§4.3-4.5, §4.7): at each level, a
 * not-present entry ends the walk with P=0; a present entry with a reserved bit set ends it with
 * P=1|RSVD; only a complete translation is checked for access rights (§4.6), which gives P=1 and
 * possibly PK. A/D bits are written only after the whole access is known to succeed (§4.8; our choice of
 * the two behaviours the SDM allows on a fault: a faulting walk changes nothing).
 */

/** Bits 8:5 and 2:1 of a PAE PDPTE are reserved (SDM Vol. 3A §4.4.1, Table 4-8). */
const PDPTE_RSVD_LO = 0x1e6;
/** Bits 20:13 of a 2 MiB leaf are reserved (address bits below the page's alignment; §4.4.2 Table 4-9, §4.5.4 Table 4-17). */
const RSVD_LO_2M = 0x001fe000;
/** Bits 29:13 of a 1 GiB leaf are reserved (§4.5.4, Table 4-15). */
const RSVD_LO_1G = 0x3fffe000;
/** 2^47 and 2^56: the canonical ranges of 4-level and 5-level linear addresses (§4.5, Vol. 1 §3.3.7.1). */
const CANON_47 = 140737488355328;
const CANON_56 = 72057594037927936;

/** The protection-key index of PKRU bits: AD = bit 2k, WD = bit 2k+1 (§4.6.2). */
const PKRU_AD = 1;
const PKRU_WD = 2;

/** The I/D error-code bit for `access` in `ctx` (§4.7: set for an instruction fetch only if CR4.SMEP = 1, or CR4.PAE = 1 and IA32_EFER.NXE = 1). */
function idBit(ctx: PagingContext, access: number): number {
  return (access & ACC_FETCH) !== 0 && (ctx.cr4Smep || (ctx.eferNxe && ctx.mode !== MODE_LEGACY32)) ? PFERR_FETCH : 0;
}

function pageFault(out: WalkResult, errorCode: number): number {
  out.errorCode = errorCode;
  out.status = WALK_PAGE_FAULT;
  return WALK_PAGE_FAULT;
}

/** §4.7: a not-present entry: P=0, with W/R and U/S from the access, and I/D where the rule allows. */
function notPresent(ctx: PagingContext, out: WalkResult, access: number, level: number): number {
  out.leafLevel = level;
  return pageFault(out, (access & (ACC_WRITE | ACC_USER)) | idBit(ctx, access));
}

/** §4.7: a reserved bit in a present entry: P=1 and RSVD=1 (RSVD only ever comes with P). */
function reservedFault(ctx: PagingContext, out: WalkResult, access: number, level: number): number {
  out.leafLevel = level;
  return pageFault(out, PFERR_PRESENT | PFERR_RSVD | (access & (ACC_WRITE | ACC_USER)) | idBit(ctx, access));
}

function nestedFault(out: WalkResult): number {
  out.status = WALK_NESTED_FAULT;
  return WALK_NESTED_FAULT;
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
  const write = (access & ACC_WRITE) !== 0;
  const userAccess = (access & ACC_USER) !== 0;
  const fetch = (access & ACC_FETCH) !== 0;
  const userPage = out.user;
  let fault: boolean;
  if (userAccess) {
    fault = !userPage || (write && !out.writable) || (fetch && !out.executable);
  } else if (fetch) {
    fault = !out.executable || (ctx.cr4Smep && userPage);
  } else {
    fault = (ctx.cr4Smap && userPage && !ctx.eflagsAc) || (write && !out.writable && ctx.cr0Wp);
  }
  let pk = 0;
  if (ctx.cr4Pke && userPage && !fetch && (ctx.mode === MODE_LONG4 || ctx.mode === MODE_LONG5)) {
    const rights = (ctx.pkru >>> (out.pkey * 2)) & 3;
    if ((rights & PKRU_AD) !== 0 || ((rights & PKRU_WD) !== 0 && write && (userAccess || ctx.cr0Wp))) pk = PFERR_PK;
  }
  if (!fault && pk === 0) return 0;
  return PFERR_PRESENT | (access & (ACC_WRITE | ACC_USER)) | pk | idBit(ctx, access);
}

/**
 * 32-bit paging, SDM Vol. 3A §4.3: CR3[31:12] locates the page directory; a PDE with PS=1 maps a 4 MiB page
 * when CR4.PSE=1 (with PS ignored when CR4.PSE=0), otherwise a page table of 4-byte PTEs. No XD, no keys.
 * PSE-36 (Table 4-4): with M = min(MAXPHYADDR, 40), PDE bits (M-20):13 are physical-address bits (M-1):32 and
 * bits 21:(M-19) are reserved; 4 KiB PDEs and PTEs have no reserved bits.
 */
function walk32(ctx: PagingContext, mem: PhysicalMemory, va: number, access: number, flags: number, out: WalkResult): number {
  const lo = va >>> 0;
  const nested = ctx.nested;
  out.topLevel = 2;
  let epa = (((ctx.cr3 >>> 0) & 0xfffff000) >>> 0) + (lo >>> 22) * 4;
  if (nested !== null) {
    epa = nested.translate(epa, access, false, out);
    if (epa < 0) return nestedFault(out);
  }
  const pde = mem.read32(epa);
  out.entryPa[2] = epa;
  out.entryLo[2] = pde;
  out.entryHi[2] = 0;
  if ((pde & PT_PRESENT) === 0) return notPresent(ctx, out, access, 2);

  let leaf = pde;
  let pa: number;
  if (ctx.cr4Pse && (pde & PT_PAGE_SIZE) !== 0) {
    const m = ctx.maxPhyAddr < 40 ? ctx.maxPhyAddr : 40;
    const rsvd = ((0x3fffff >>> (m - 19)) << (m - 19)) >>> 0; // bits 21:(M-19)
    if ((pde & rsvd) !== 0) return reservedFault(ctx, out, access, 2);
    const high = (pde >>> 13) & ((1 << (m - 32)) - 1); // PA bits (M-1):32
    pa = ((pde & 0xffc00000) >>> 0) + high * TWO_POW_32 + (lo & 0x3fffff);
    out.leafLevel = 2;
    out.pageSize = SIZE_4M;
  } else {
    epa = ((pde & 0xfffff000) >>> 0) + ((lo >>> 12) & 0x3ff) * 4;
    if (nested !== null) {
      epa = nested.translate(epa, access, false, out);
      if (epa < 0) return nestedFault(out);
    }
    leaf = mem.read32(epa);
    out.entryPa[1] = epa;
    out.entryLo[1] = leaf;
    out.entryHi[1] = 0;
    if ((leaf & PT_PRESENT) === 0) return notPresent(ctx, out, access, 1);
    pa = ((leaf & 0xfffff000) >>> 0) + (lo & 0xfff);
    out.leafLevel = 1;
    out.pageSize = 4096;
  }
  const both = pde & leaf; // a 4 MiB page has one level: pde & pde
  out.writable = (both & PT_WRITABLE) !== 0;
  out.user = (both & PT_USER) !== 0;
  out.executable = true; // 32-bit paging has no XD (§4.6.1)
  out.global = ctx.cr4Pge && (leaf & PT_GLOBAL) !== 0;
  out.pa = pa;
  return finish(ctx, mem, access, flags, out, 2, pde & leaf & PT_ACCESSED);
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
  // One function for the 8-byte-entry modes (the common case), so that `va` and the final address are not
  // passed between functions as boxed doubles; 32-bit paging is a separate function.
  const mode = ctx.mode;
  out.errorCode = 0;
  out.global = false;
  out.pkey = 0;
  if (mode === MODE_LEGACY32) return walk32(ctx, mem, va, access, flags, out);
  const nested = ctx.nested;
  const m = ctx.maxPhyAddr - 32; // first reserved address bit, in the high half
  const nxr = ctx.eferNxe ? 0 : PT_HI_XD; // XD is reserved without NXE (§4.4.2, §4.5.4)
  let lo: number;
  let hi: number;
  let level: number;
  let base: number;
  let rsvdHi: number;
  let writable = PT_WRITABLE;
  let user = PT_USER;
  let accessed = PT_ACCESSED; // A=1 in every entry walked in memory: nothing to set for a read
  let xd = 0;

  if (mode === MODE_PAE) {
    // §4.4.1: the PDPTE registers, loaded at CR3 load, select the page directory; not-present gives #PF P=0.
    // Their reserved bits were checked at load time (loadPdptes); they carry no rights and get no A bit.
    lo = va >>> 0;
    hi = 0;
    const i = lo >>> 30;
    const plo = ctx.pdpteLo[i]!;
    const phi = ctx.pdpteHi[i]!;
    out.topLevel = 3;
    out.entryPa[3] = (((ctx.cr3 >>> 0) & 0xffffffe0) >>> 0) + i * 8; // where the register was loaded from
    out.entryLo[3] = plo;
    out.entryHi[3] = phi;
    if ((plo & PT_PRESENT) === 0) return notPresent(ctx, out, access, 3);
    base = ((plo & 0xfffff000) >>> 0) + (phi & 0xfffff) * TWO_POW_32;
    level = 2;
    rsvdHi = ((0x7fffffff >>> m) << m) | nxr; // bits 62:M (and 63)
  } else {
    // Vol. 1 §3.3.7.1 / Vol. 3A §4.5: a non-canonical linear address is a #GP, never a #PF.
    if (mode === MODE_LONG4) {
      if (!(va >= -CANON_47 && va < CANON_47)) {
        out.status = WALK_GP;
        return WALK_GP;
      }
      level = 4;
    } else {
      if (!(va >= -CANON_56 && va < CANON_56)) {
        out.status = WALK_GP;
        return WALK_GP;
      }
      level = 5;
    }
    lo = va >>> 0;
    hi = Math.floor(va / TWO_POW_32) | 0;
    out.topLevel = level;
    // CR3 bits M-1:12 locate the top table (§4.5.2; bits 11:0 are flags or the PCID).
    const cr3 = ctx.cr3;
    base = (((cr3 >>> 0) & 0xfffff000) >>> 0) + (cr3 < TWO_POW_32 ? 0 : ((Math.floor(cr3 / TWO_POW_32) & ((1 << m) - 1)) >>> 0) * TWO_POW_32);
    rsvdHi = ((0xfffff >>> m) << m) | nxr; // bits 51:M (and 63)
  }

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
    let epa = base + index * 8;
    if (nested !== null) {
      epa = nested.translate(epa, access, false, out);
      if (epa < 0) return nestedFault(out);
    }
    elo = mem.read32(epa);
    ehi = mem.read32(epa + 4);
    out.entryPa[level] = epa;
    out.entryLo[level] = elo;
    out.entryHi[level] = ehi;
    if ((elo & PT_PRESENT) === 0) return notPresent(ctx, out, access, level);
    let rsvdLo = 0;
    let isLeaf = level === 1;
    if ((elo & PT_PAGE_SIZE) !== 0) {
      if (level === 2) {
        isLeaf = true;
        rsvdLo = RSVD_LO_2M;
        pageSize = SIZE_2M;
      } else if (level === 3) {
        isLeaf = true; // 1 GiB pages are supported (CPUID.80000001H:EDX.Page1GB = 1)
        rsvdLo = RSVD_LO_1G;
        pageSize = SIZE_1G;
      } else if (level >= 4) {
        rsvdLo = PT_PAGE_SIZE; // PS is reserved in a PML4E and a PML5E
      }
      // level 1: bit 7 of a PTE is PAT, not PS
    }
    if ((elo & rsvdLo) !== 0 || (ehi & rsvdHi) !== 0) return reservedFault(ctx, out, access, level);
    writable &= elo;
    user &= elo;
    accessed &= elo;
    xd |= ehi & PT_HI_XD; // non-zero only with NXE (otherwise it is reserved and faulted above)
    if (isLeaf) break;
    base = ((elo & 0xfffff000) >>> 0) + (ehi & 0xfffff) * TWO_POW_32;
    level--;
  }

  const offsetMask = pageSize - 1;
  out.leafLevel = level;
  out.pageSize = pageSize;
  out.writable = writable !== 0;
  out.user = user !== 0;
  out.executable = xd === 0;
  out.global = ctx.cr4Pge && (elo & PT_GLOBAL) !== 0;
  out.pkey = mode === MODE_PAE ? 0 : (ehi >>> PT_HI_PKEY_SHIFT) & 15;
  out.pa = ((elo & ~offsetMask) >>> 0) + (ehi & 0xfffff) * TWO_POW_32 + (lo & offsetMask);
  return finish(ctx, mem, access, flags, out, mode === MODE_PAE ? 2 : out.topLevel, accessed);
}

/**
 * The end of a complete translation whose address is in `out.pa` (passed there rather than as an argument,
 * so that it is never boxed): rights (§4.6), the second-stage translation of the final address,
 * then A/D (§4.8) from `fromLevel` (the top level walked in memory) down to the leaf; `accessed` is
 * PT_ACCESSED when every entry walked in memory already has A=1. Each update is a
 * read-modify-write of the entry's low half that only sets bits, so that entries seen twice in one walk
 * (a recursive mapping) keep every bit set.
 */
function finish(ctx: PagingContext, mem: PhysicalMemory, access: number, flags: number, out: WalkResult, fromLevel: number, accessed: number): number {
  const leafLevel = out.leafLevel;
  const rights = rightsFault(ctx, out, access);
  if (rights !== 0) return pageFault(out, rights);
  const nested: SecondStage | null = ctx.nested;
  if (nested !== null) {
    const pa = nested.translate(out.pa, access, true, out);
    if (pa < 0) return nestedFault(out);
    out.pa = pa;
  }
  let dirty = (out.entryLo[leafLevel]! & PT_DIRTY) !== 0;
  const write = (access & ACC_WRITE) !== 0;
  // The common case needs no update: A already set on every level (and D in the leaf for a write).
  if ((flags & WALK_SIDE_EFFECTS) !== 0 && (accessed === 0 || (write && !dirty))) {
    for (let l = fromLevel; l >= leafLevel; l--) {
      const want = l === leafLevel && write ? PT_ACCESSED | PT_DIRTY : PT_ACCESSED;
      const seen = out.entryLo[l]!;
      if ((seen & want) !== want) {
        const epa = out.entryPa[l]!;
        const now = (mem.read32(epa) | want) >>> 0;
        mem.write32(epa, now);
        out.entryLo[l] = now;
      }
    }
    if (write) dirty = true;
  }
  out.dirty = dirty;
  out.status = WALK_OK;
  return WALK_OK;
}

/**
 * Loads the four PAE PDPTE registers from the 32-byte-aligned PDPT at CR3[31:5] (SDM Vol. 3A §4.4.1), as
 * MOV to CR3 (and the CR0/CR4 writes that enable PAE paging) do. Returns false, leaving the registers
 * unchanged, when a present PDPTE has a reserved bit set (bits 2:1, 8:5, 63:MAXPHYADDR; Table 4-8): the
 * instruction then raises #GP(0), not #PF. With a second stage, the PDPT's guest-physical address is
 * translated first (`final` = false, the access a write as KVM's `load_pdptrs` asks for) and a refusal
 * also fails the load (KVM `load_pdptrs` returns false when the translation fails). `scratch` receives a
 * second-stage fault's details.
 */
export function loadPdptes(ctx: PagingContext, mem: PhysicalMemory, scratch: WalkResult = loadScratch): boolean {
  let base = ((ctx.cr3 >>> 0) & 0xffffffe0) >>> 0;
  if (ctx.nested !== null) {
    base = ctx.nested.translate(base, ACC_WRITE | ACC_USER, false, scratch);
    if (base < 0) return false;
  }
  const m = ctx.maxPhyAddr - 32;
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
