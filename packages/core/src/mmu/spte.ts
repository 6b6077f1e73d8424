/**
 * The MMU's own page-table entries (sptes): 64-bit, PAE/IA-32e format (SDM Vol. 3A §4.4-4.5), held as two
 * 32-bit halves in the host frame pool (pool.ts). Shared by every MMU that builds tables for the hardware to
 * walk (KVM arch/x86/kvm/mmu/spte.c, spte.h). The software bits follow KVM's non-EPT layout (arch/x86/kvm/mmu/spte.h): bit 9
 * Host-writable, bit 10 MMU-writable; bits 9-11 are ignored by the hardware in every entry format, PAE
 * included (bits 52-62 are reserved in PAE entries, so nothing is kept there).
 */

import { PAGE_SIZE } from '../arch/constants.js';
import { ACC_EXEC_MASK, ACC_USER_MASK } from './role.js';

export const SPTE_P = 1 << 0;
export const SPTE_W = 1 << 1;
export const SPTE_U = 1 << 2;
export const SPTE_A = 1 << 5;
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
 * The one place a leaf spte is built (KVM `make_spte`, arch/x86/kvm/mmu/spte.c), into `out`: P and A, the
 * frame of `gfn`, Host-writable unless the memslot is read-only, W (with MMU-writable and D) only when
 * `writable` (the caller has decided that the rights in `access`, the host mapping and the MMU's write
 * protection all allow it: KVM's `mmu_try_to_unsync_pages` happens before), U and NX from `access`
 * (ACC_* form), and the protection key `pkeyHi` (already in high-half position, 0 when the shadow has none).
 */
export function makeLeafSpte(out: SpteHalves, gfn: number, access: number, hostWritable: boolean, writable: boolean, pkeyHi: number): void {
  let lo = ((gfn % 0x100000) * PAGE_SIZE + (SPTE_P | SPTE_A)) >>> 0;
  let hi = Math.floor(gfn / 0x100000) | pkeyHi;
  if (hostWritable) lo |= SPTE_HOST_WRITABLE;
  if (writable) lo |= SPTE_W | SPTE_MMU_WRITABLE | SPTE_D;
  if ((access & ACC_USER_MASK) !== 0) lo |= SPTE_U;
  if ((access & ACC_EXEC_MASK) === 0) hi |= SPTE_HI_NX;
  out.lo = lo >>> 0;
  out.hi = hi >>> 0;
}
