import { SPTE_MMU_PRESENT, SPTE_P, type SpteFormat, type SpteHalves } from '@vmexit/core/mmu';

/*
 * KVM's MMIO sptes under TDP (arch/x86/kvm/mmu/spte.c make_mmio_spte, spte.h MMIO_SPTE_GEN_*): an spte that
 * the hardware refuses with a fault KVM can tell from every other one, holding the gfn and the memslot
 * generation it was made under, so that the next access to the gfn goes straight to emulation until the
 * memslots change (KVM's "MMIO caching").
 *
 * - EPT: R=0, W=1, X=1 (VMX_EPT_MISCONFIG_WX_VALUE): write without read is an EPT misconfiguration (SDM Vol.
 *   3C §29.3.3.1), exit reason 49, which KVM's handle_ept_misconfig passes on as PFERR_RSVD.
 * - NPT: P=1 and bit 51, a reserved bit when the host's MAXPHYADDR is below 52 (kvm_mmu_reset_all_pte_masks:
 *   `if (shadow_phys_bits < 52) mask = BIT_ULL(51) | PT_PRESENT_MASK`): a #NPF with P|RSVD. With a host
 *   MAXPHYADDR of 52 no bit is reserved, KVM turns MMIO caching off (`enable_mmio_caching = false`) and every
 *   MMIO access is a not-present fault.
 *
 * Neither has KVM's MMU-present bit 11, so no MMIO spte is ever taken for a present one. The generation is
 * kept as KVM keeps it: its low 8 bits in spte bits 10:3 (MMIO_SPTE_GEN_LOW_START 3), the next 9 in bits
 * 62:54 (MMIO_SPTE_GEN_HIGH_START 54).
 */

/** KVM MMIO_SPTE_GEN_MASK: 17 bits of the memslot generation. */
export const MMIO_GEN_MASK = 0x1ffff;

/** The value an MMIO spte of `format` has in its low / high half (besides gfn and generation), or null when there is none. */
export function mmioValue(format: SpteFormat, hostMaxPhyAddr: number): { lo: number; hi: number } | null {
  if (format.name === 'ept') return { lo: 0x6, hi: 0 }; // W|X without R
  if (hostMaxPhyAddr >= 52) return null;
  return { lo: SPTE_P, hi: 1 << (51 - 32) };
}

/** An MMIO spte for `gfn` under generation `gen` (KVM make_mmio_spte). */
export function makeMmioSpte(out: SpteHalves, value: { lo: number; hi: number }, gfn: number, gen: number): void {
  const g = gen & MMIO_GEN_MASK;
  out.lo = ((gfn % 0x100000) * 4096 + value.lo + ((g & 0xff) << 3)) >>> 0;
  out.hi = (Math.floor(gfn / 0x100000) | value.hi | ((g >>> 8) << 22)) >>> 0;
}

/** KVM is_shadow_present_pte: the MMU-present bit. */
export function isPresentSpte(lo: number): boolean {
  return (lo & SPTE_MMU_PRESENT) !== 0;
}

/** KVM is_mmio_spte: not present, and not the zero (never set) spte. */
export function isMmioSpte(lo: number, hi: number): boolean {
  return (lo & SPTE_MMU_PRESENT) === 0 && (lo !== 0 || hi !== 0);
}

/** KVM get_mmio_spte_generation. */
export function mmioSpteGeneration(lo: number, hi: number): number {
  return ((lo >>> 3) & 0xff) | (((hi >>> 22) & 0x1ff) << 8);
}

/** KVM get_mmio_spte_gfn. */
export function mmioSpteGfn(lo: number, hi: number): number {
  return Math.floor(((lo & 0xfffff000) >>> 0) / 4096) + (hi & 0x7ffff) * 0x100000;
}
