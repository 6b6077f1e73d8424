import * as core from '@vmexit/core';
import { type PagingContext, type Vcpu } from '@vmexit/core';
import * as coreMmu from '@vmexit/core/mmu';
import { type SpteHalves } from '@vmexit/core/mmu';
import * as context from './context.js';
import type { ShadowPage } from './page.js';
import type { ShadowMmuState } from './state.js';

// Module-local copies of the imported constants and helpers the exit path uses. V8 folds a module's own constants into
// its compiled code, but reads an imported binding through its module cell, with a check, on every use (core
// DESIGN.md, "Speed").
const { MODE_LONG4, MODE_LONG5, MODE_PAE, PT_ACCESSED, PT_DIRTY, PT_HI_XD, PT_PRESENT, PT_USER, PT_WRITABLE } = core;
const { ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK, makeLeafSpte, ROLE_4BYTE_GPTE, roleAccess, SPTE_HI_PKEY_MASK } = coreMmu;
const { HOST_GFN_LIMIT } = context;

/**
 * Guest ptes as the shadow MMU reads them (KVM arch/x86/kvm/mmu/paging_tmpl.h, the FNAME() helpers): the
 * index of an address at a level, a gpte's rights, its reserved bits, reading the gpte behind a shadow
 * spte, and the leaf spte a gpte stands for.
 */

/** The index of `va` in a table of `level` (9 bits per level above the 4 KiB offset). */
export function levelIndex(va: number, level: number): number {
  if (level === 1) return (va >>> 12) & 511;
  if (level === 2) return (va >>> 21) & 511;
  // The two 32-bit halves of the signed-canonical address (core DESIGN.md): `va - lo` is an exact multiple of
  // 2^32, so `hi` is exact and the shifts below are the bits of the two's-complement address.
  const lo = va >>> 0;
  const hi = ((va - lo) / 4294967296) | 0;
  if (level === 3) return ((lo >>> 30) | (hi << 2)) & 511;
  if (level === 4) return (hi >>> 7) & 511;
  return (hi >>> 16) & 511;
}

/** A guest entry's rights in ACC_* form (KVM `gpte_access`): W, U, and X unless XD with NXE. */
export function gpteAccess(lo: number, hi: number, nxe: boolean): number {
  return (lo & PT_WRITABLE ? ACC_WRITE_MASK : 0) | (lo & PT_USER ? ACC_USER_MASK : 0) | (nxe && (hi & PT_HI_XD) !== 0 ? 0 : ACC_EXEC_MASK);
}

/**
 * Reserved bits of a 64-bit guest PTE's high half (SDM Vol. 3A §4.4.2 Table 4-11 for PAE, §4.5.4 Table 4-19
 * for 4-level; KVM `FNAME(is_rsvd_bits_set)`): address bits at and above MAXPHYADDR (bit 63 too under PAE),
 * and XD without EFER.NXE.
 */
function gpteReserved(hi: number, maxPhyAddr: number, nxe: boolean, pae: boolean): boolean {
  const m = maxPhyAddr - 32;
  const addrRsvd = pae ? (0x7fffffff >>> m) << m : (0xfffff >>> m) << m;
  return (hi & addrRsvd) !== 0 || (!nxe && (hi & PT_HI_XD) !== 0);
}

/** Protection keys apply: CR4.PKE in 4- or 5-level paging (SDM Vol. 3A §4.6.2; PAE and 32-bit entries have no key). */
export function pkeysApply(g: PagingContext): boolean {
  return g.cr4Pke && (g.mode === MODE_LONG4 || g.mode === MODE_LONG5);
}

/** The protection key of a leaf in high-half position: 4/5-level guests only (SDM Vol. 3A §4.6.2). */
export function leafPkey(vcpu: Vcpu, gHi: number): number {
  const mode = vcpu.ctx.mode;
  return mode === MODE_LONG4 || mode === MODE_LONG5 ? gHi & SPTE_HI_PKEY_MASK : 0;
}

/** Reads the gpte behind spte `i` of indirect level-1 page `sp` into `out` (a 4-byte gpte has `hi` 0). */
export function readGpte(s: ShadowMmuState, sp: ShadowPage, i: number, out: SpteHalves): void {
  const a = s.gpteAddress(sp, i);
  out.lo = s.memory.read32(a);
  out.hi = (sp.role & ROLE_4BYTE_GPTE) !== 0 ? 0 : s.memory.read32(a + 4);
}

/**
 * The leaf spte for gpte (`gLo`, `gHi`) in level-1 page `sp` (KVM `FNAME(prefetch_gpte)` / `sync_spte`),
 * into `out`; false when the gpte is invalid for that (not present, A=0, reserved bits: KVM
 * `FNAME(prefetch_invalid_gpte)`) or maps no memslot (or a gfn beyond the host's reach, HOST_GFN_LIMIT). Rights: the page's role access AND the gpte's; W only
 * when the gpte is dirty (`protect_clean_gpte`) and the target is not a write-protected guest page table.
 */
export function leafFromGpte(s: ShadowMmuState, vcpu: Vcpu, sp: ShadowPage, gLo: number, gHi: number, out: SpteHalves): boolean {
  const g = vcpu.ctx;
  if ((gLo & (PT_PRESENT | PT_ACCESSED)) !== (PT_PRESENT | PT_ACCESSED)) return false;
  const fourByte = (sp.role & ROLE_4BYTE_GPTE) !== 0;
  const nxe = g.eferNxe && !fourByte;
  if (!fourByte && gpteReserved(gHi, g.maxPhyAddr, nxe, g.mode === MODE_PAE)) return false;
  const gfn = fourByte ? gLo >>> 12 : (gLo >>> 12) + (gHi & 0xfffff) * 0x100000;
  const slot = s.memory.slotForGfn(gfn);
  // No spte for a gfn the host cannot name (its accesses are emulated, see pageFault).
  if (slot === null || gfn >= HOST_GFN_LIMIT) return false;
  let access = roleAccess(sp.role) & gpteAccess(gLo, fourByte ? 0 : gHi, nxe);
  if ((gLo & PT_DIRTY) === 0) access &= ~ACC_WRITE_MASK; // protect_clean_gpte
  const writable = (access & ACC_WRITE_MASK) !== 0 && !slot.readonly && !s.isWriteProtected(gfn);
  makeLeafSpte(out, gfn, access, !slot.readonly, writable, leafPkey(vcpu, gHi));
  return true;
}
