/**
 * The MMU's own page-table entries (sptes): 64-bit, PAE/IA-32e format (SDM Vol. 3A §4.4-4.5), held as two
 * 32-bit halves in the host frame pool (pool.ts). Shared by every MMU that builds tables for the hardware to
 * walk (KVM arch/x86/kvm/mmu/spte.c, spte.h). The software bits follow KVM's non-EPT layout (arch/x86/kvm/mmu/spte.h): bit 9
 * Host-writable, bit 10 MMU-writable; bits 9-11 are ignored by the hardware in every entry format, PAE
 * included (bits 52-62 are reserved in PAE entries, so nothing is kept there).
 */

import { PAGE_SIZE } from '../arch/constants.js';
import { ACC_EXEC_MASK, ACC_USER_MASK } from './role.js';

/** P, bit 0: the spte is present to the hardware walker. */
export const SPTE_P = 1 << 0;
/** R/W, bit 1: the hardware may write through the spte. */
export const SPTE_W = 1 << 1;
/** U/S, bit 2: user-mode accesses allowed through the spte. */
export const SPTE_U = 1 << 2;
/** A, bit 5: set by the hardware walker when it uses the spte. */
export const SPTE_A = 1 << 5;
/** D, bit 6 of a leaf spte: set by the hardware walker on a write through it. */
export const SPTE_D = 1 << 6;
/** The host maps the frame writable (not read-only RAM). KVM `DEFAULT_SPTE_HOST_WRITABLE`. */
export const SPTE_HOST_WRITABLE = 1 << 9;
/** The shadow MMU allows writes: the gfn is not a shadowed guest page table. KVM `DEFAULT_SPTE_MMU_WRITABLE`. */
export const SPTE_MMU_WRITABLE = 1 << 10;
/** XD, bit 63 = bit 31 of the high half. */
export const SPTE_HI_NX = 1 << 31;
/** Protection key, bits 62:59 = bits 30:27 of the high half (4/5-level shadows only). */
export const SPTE_HI_PKEY_MASK = 0xf << 27;
/** Physical-address bits of the high half: bits 51:32. */
export const SPTE_HI_ADDR_MASK = 0xfffff;
/** Physical-address bits of the low half: bits 31:12. */
export const SPTE_LO_ADDR_MASK = 0xfffff000;

/** Rights bits whose loss needs a TLB flush (KVM `PT64_PERM_MASK`, with NX inverted). */
export const SPTE_PERM_LO = SPTE_P | SPTE_W | SPTE_U;

/** Bits of a non-leaf spte besides the address: KVM links child tables with full rights (`link_shadow_page`). */
export const SPTE_NONLEAF_BITS = SPTE_P | SPTE_W | SPTE_U | SPTE_A;

/** The physical address an spte points at (exact: at most 52 bits). */
export function sptePa(lo: number, hi: number): number {
  return ((lo & SPTE_LO_ADDR_MASK) >>> 0) + (hi & SPTE_HI_ADDR_MASK) * 4294967296;
}

/** True when `new` grants less than `old` (or maps elsewhere): the TLB must be flushed (KVM `need_remote_flush`). */
export function spteNeedsFlush(oldLo: number, oldHi: number, newLo: number, newHi: number): boolean {
  if ((oldLo & SPTE_P) === 0) return false;
  if ((newLo & SPTE_P) === 0) return true;
  if (sptePa(oldLo, oldHi) !== sptePa(newLo, newHi)) return true;
  if ((oldLo & ~newLo & SPTE_PERM_LO) !== 0) return true;
  // NX is a restriction: gaining it removes execute rights.
  return (~oldHi & newHi & SPTE_HI_NX) !== 0;
}

/** An spte as its two 32-bit halves: the out-value of `makeLeafSpte` (and of a gpte read), so that no call allocates. */
export class SpteHalves {
  lo = 0;
  hi = 0;
}

/**
 * The bits an spte format puts where (KVM's `shadow_*_mask` globals, arch/x86/kvm/mmu/spte.c: set for
 * shadow paging and NPT by `kvm_mmu_reset_all_pte_masks`, for EPT by `kvm_mmu_set_ept_masks`). Each field
 * is a mask in the low (`...Lo`) or high (`...Hi`) half; 0 where the format has no such bit.
 */
export interface SpteFormat {
  readonly name: 'shadow' | 'npt' | 'ept';
  /** Set in every present spte (x86 P; EPT R, KVM `shadow_present_mask` without execute-only). */
  readonly presentLo: number;
  /** KVM's software "MMU-present" bit 11 (`SPTE_MMU_PRESENT_MASK`), or 0 where presence is read from P. */
  readonly mmuPresentLo: number;
  readonly writableLo: number;
  /** U/S (x86); EPT has no user bit: KVM's `shadow_user_mask` is R there. */
  readonly userLo: number;
  /** Execute right, positive (EPT X), or 0 with a negative NX bit in `nxHi`. */
  readonly execLo: number;
  readonly nxHi: number;
  readonly accessedLo: number;
  readonly dirtyLo: number;
  readonly hostWritableLo: number;
  readonly hostWritableHi: number;
  readonly mmuWritableLo: number;
  readonly mmuWritableHi: number;
  /** Leaf memory type bits (EPT: WB in bits 5:3 with IPAT, KVM `vmx_get_mt_mask` for RAM without non-coherent DMA). */
  readonly memtypeLo: number;
}

/** The shadow MMU's sptes: the x86 long-mode format with KVM's non-EPT software bits (9, 10). */
export const SPTE_FORMAT_SHADOW: SpteFormat = {
  name: 'shadow',
  presentLo: SPTE_P,
  mmuPresentLo: 0,
  writableLo: SPTE_W,
  userLo: SPTE_U,
  execLo: 0,
  nxHi: SPTE_HI_NX,
  accessedLo: SPTE_A,
  dirtyLo: SPTE_D,
  hostWritableLo: SPTE_HOST_WRITABLE,
  hostWritableHi: 0,
  mmuWritableLo: SPTE_MMU_WRITABLE,
  mmuWritableHi: 0,
  memtypeLo: 0,
};

/** KVM's `SPTE_MMU_PRESENT_MASK`: bit 11, ignored by the hardware in every format (spte.h). */
export const SPTE_MMU_PRESENT = 1 << 11;
/** The page-size bit of a huge leaf (bit 7 in x86 PDEs/PDPTEs and in EPT PDEs/PDPTEs). */
export const SPTE_LARGE = 1 << 7;

/**
 * AMD NPT sptes (APM Vol. 2 §15.25.5: the host's long-mode format; nested walks are user accesses, so every
 * entry has U=1, KVM `shadow_user_mask` = PT_USER_MASK) with the MMU-present bit of KVM's TDP MMU.
 */
export const SPTE_FORMAT_NPT: SpteFormat = { ...SPTE_FORMAT_SHADOW, name: 'npt', mmuPresentLo: SPTE_MMU_PRESENT };

/** EPT R, W, X and the A/D flags (SDM Vol. 3C §29.3.2, §29.3.5). */
export const EPT_SPTE_R = 1 << 0;
/** EPT write access (bit 1). */
export const EPT_SPTE_W = 1 << 1;
/** EPT execute access (bit 2; supervisor-mode execute with mode-based execute control). */
export const EPT_SPTE_X = 1 << 2;
/** EPT accessed flag (bit 8, with EPTP bit 6 set). */
export const EPT_SPTE_A = 1 << 8;
/** EPT dirty flag (bit 9, with EPTP bit 6 set). */
export const EPT_SPTE_D = 1 << 9;

/**
 * Intel EPT sptes as KVM sets them up (`kvm_mmu_set_ept_masks(enable_ept_ad_bits = true, exec-only)`): R is
 * both "present" and KVM's user mask, X is positive, A/D are bits 8/9 (EPTP bit 6 on), Host-writable and
 * MMU-writable are bits 57 and 58 (EPT_SPTE_HOST_WRITABLE / EPT_SPTE_MMU_WRITABLE), leaves are WB with IPAT.
 */
export const SPTE_FORMAT_EPT: SpteFormat = {
  name: 'ept',
  presentLo: EPT_SPTE_R,
  mmuPresentLo: SPTE_MMU_PRESENT,
  writableLo: EPT_SPTE_W,
  userLo: EPT_SPTE_R,
  execLo: EPT_SPTE_X,
  nxHi: 0,
  accessedLo: EPT_SPTE_A,
  dirtyLo: EPT_SPTE_D,
  hostWritableLo: 0,
  hostWritableHi: 1 << 25,
  mmuWritableLo: 0,
  mmuWritableHi: 1 << 26,
  memtypeLo: (6 << 3) | (1 << 6),
};

/**
 * The one place a leaf spte is built (KVM `make_spte`, arch/x86/kvm/mmu/spte.c), into `out`: present and A,
 * the frame of `gfn`, Host-writable unless the memslot is read-only, W (with MMU-writable and D) only when
 * `writable` (the caller has decided that the rights in `access`, the host mapping and the MMU's write
 * protection all allow it: KVM's `mmu_try_to_unsync_pages` happens before), U and NX (EPT: X) from
 * `access` (ACC_* form), and the protection key `pkeyHi` (already in high-half position, 0 when the shadow
 * has none). `format` is the spte layout (the shadow MMU's by default); a `level` above 1 makes a huge leaf
 * (bit 7, `gfn` aligned to the level's span by the caller).
 */
export function makeLeafSpte(
  out: SpteHalves,
  gfn: number,
  access: number,
  hostWritable: boolean,
  writable: boolean,
  pkeyHi: number,
  format: SpteFormat = SPTE_FORMAT_SHADOW,
  level = 1,
): void {
  // The gfn's bits 19:0 go to address bits 31:12 and the rest to the high half: by shifts for a gfn below 2^32
  // (gfn >>> 0 === gfn), with no fmod or division.
  const small = gfn >>> 0 === gfn;
  let lo =
    ((small ? (gfn & 0xfffff) << 12 : (gfn % 0x100000) * PAGE_SIZE) | format.presentLo | format.mmuPresentLo | format.accessedLo | format.memtypeLo) >>> 0;
  let hi = (small ? gfn >>> 20 : Math.floor(gfn / 0x100000)) | pkeyHi;
  if (level > 1) lo |= SPTE_LARGE;
  if (hostWritable) {
    lo |= format.hostWritableLo;
    hi |= format.hostWritableHi;
  }
  if (writable) {
    lo |= format.writableLo | format.mmuWritableLo | format.dirtyLo;
    hi |= format.mmuWritableHi;
  }
  if ((access & ACC_USER_MASK) !== 0) lo |= format.userLo;
  if ((access & ACC_EXEC_MASK) !== 0) lo |= format.execLo;
  else hi |= format.nxHi;
  out.lo = lo >>> 0;
  out.hi = hi >>> 0;
}

/**
 * A non-leaf spte pointing at the MMU page at host-physical `childHpa` (KVM `make_nonleaf_spte`): present,
 * writable, user and executable (the rights are the leaf's to restrict), accessed.
 */
export function makeNonLeafSpte(out: SpteHalves, childHpa: number, format: SpteFormat): void {
  out.lo = ((childHpa % 4294967296) + (format.presentLo | format.mmuPresentLo | format.writableLo | format.userLo | format.execLo | format.accessedLo)) >>> 0;
  out.hi = Math.floor(childHpa / 4294967296) >>> 0;
}
