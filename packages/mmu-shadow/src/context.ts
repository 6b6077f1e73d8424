import type { PagingContext, PagingModeId, SecondStage } from '@vmexit/core';
import { MODE_PAE } from '@vmexit/core';

/**
 * The paging context the hardware walks under shadow paging: the shadow root (a PAE root built from four
 * PDPTE "registers" for 32-bit and PAE guests, one CR3 root for 4/5-level guests) and the control bits KVM
 * runs the hardware with (arch/x86/kvm/vmx/vmx.c, Documentation/virt/kvm/x86/mmu.rst "Emulating cr0.wp"):
 *
 * - CR0.WP = 1 always; a guest running with WP=0 is emulated by the role trick in the fault path.
 * - EFER.NXE = 1 always (KVM forces NX on under shadow paging so that it can take execute rights away).
 * - CR4.SMEP, SMAP and PKE are the guest's; RFLAGS.AC and PKRU are read live from the guest context, so
 *   STAC/CLAC and WRPKRU (which the vCPU applies to its own context) take effect here too.
 * - CR4.PGE = 0: shadow ptes carry no G bit, so no translation survives a CR3 write in the TLB (KVM dropped
 *   global-page tracking; the SDM lets a TLB drop entries at any time, §4.10.4).
 * - MAXPHYADDR 46 (the host's, as on many Intel server parts): the pool's frames at 2^40 are valid
 *   addresses, and bits 51:46 are reserved in every entry format, so the trap spte of the bypass
 *   encoding (KVM `shadow_trap_nonpresent_pte = ~0xffeull`, every bit 63:12 set) faults with P=1|RSVD
 *   in 4- and 5-level shadows too (SDM Vol. 3A §4.5.4, Table 4-14..4-20: bits 51:M are reserved).
 */
/** The host's MAXPHYADDR under which the shadow tables are walked. */
export const HOST_MAXPHYADDR = 46;

/**
 * The first gfn the host cannot map: guest RAM is at host-physical = guest-physical in this model, so a
 * memslot gfn at or above 2^(HOST_MAXPHYADDR - 12) has no frame an spte can name (its address bits would be
 * reserved bits, SDM Vol. 3A §4.5.4, and every access would fault with RSVD again).
 */
export const HOST_GFN_LIMIT = 2 ** (HOST_MAXPHYADDR - 12);

export class ShadowPagingContext implements PagingContext {
  mode: PagingModeId = MODE_PAE;
  cr3 = 0;
  readonly pdpteLo = new Uint32Array(4);
  readonly pdpteHi = new Uint32Array(4);
  maxPhyAddr = HOST_MAXPHYADDR;
  cr0Wp = true;
  cr4Pse = true;
  cr4Pge = false;
  cr4Smep = false;
  cr4Smap = false;
  cr4Pke = false;
  eferNxe = true;
  nested: SecondStage | null = null;

  constructor(readonly guest: PagingContext) {}

  get eflagsAc(): boolean {
    return this.guest.eflagsAc;
  }

  set eflagsAc(v: boolean) {
    this.guest.eflagsAc = v;
  }

  get pkru(): number {
    return this.guest.pkru;
  }

  set pkru(v: number) {
    this.guest.pkru = v;
  }

  /** Copies the guest's rights-relevant CR4 bits. */
  syncFromGuest(): void {
    this.cr4Smep = this.guest.cr4Smep;
    this.cr4Smap = this.guest.cr4Smap;
    this.cr4Pke = this.guest.cr4Pke;
  }
}
