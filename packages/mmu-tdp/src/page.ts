import { MmuPage } from '@vmexit/core/mmu';

/**
 * A page of the TDP MMU (KVM `struct kvm_mmu_page` as the TDP MMU uses it, arch/x86/kvm/mmu/tdp_mmu.c): a
 * host frame of 512 sptes mapping the guest-physical range that starts at `gfn` (512^level pages), linked
 * from one parent spte (`ptep`; -1 for the root). TDP pages are never shared between parents: the tables
 * are a tree (tdp_mmu_init_child_sp).
 */
export class TdpPage extends MmuPage {
  /** The spte location that links this page (KVM `sp->ptep`), or -1 for a root. */
  parentLoc = -1;
}
