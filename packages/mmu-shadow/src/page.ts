import { MmuPage } from '@vmexit/core';

/**
 * One shadow page (KVM `struct kvm_mmu_page`, arch/x86/kvm/mmu/mmu_internal.h): core's `MmuPage` (frame,
 * gfn, role, parent_ptes, root count) with what only the shadow MMU keeps.
 */
export class ShadowPage extends MmuPage {
  /** Emulated writes since the page was last used by a fault's walk (KVM `write_flooding_count`). */
  writeFloodingCount = 0;
  /**
   * Out of sync (KVM `sp->unsync`, level-1 pages only): the guest table is writable and the sptes may be
   * stale until the guest's next TLB flush (CR3 write) or INVLPG syncs them (Documentation/virt/kvm/x86/mmu.rst).
   */
  unsync = false;
}

/** The constructor `allocPage` calls for a new shadow page. */
export function makeShadowPage(frame: number, gfn: number, role: number): ShadowPage {
  return new ShadowPage(frame, gfn, role);
}
