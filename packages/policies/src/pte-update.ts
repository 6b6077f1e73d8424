import { decideMmuEvents, type FaultPolicy } from '@vmexit/core';
import { z } from 'zod';

/** The options of the `pte-update` policy: none (an unknown key is an error naming it). */
export const pteUpdateOptions = z.strictObject({});
/** The options `pte-update` runs with (see `pteUpdateOptions`). */
export type PteUpdateOptions = z.output<typeof pteUpdateOptions>;

/**
 * `pte-update` (KVM 0028425f647b, "Update shadow pte on write to guest pte", 2007: mmu.c kvm_mmu_pte_write -> mmu_pte_write_new_pte): an
 * emulated write of a whole guest pte into a level-1 guest page table installs the new shadow pte at once
 * (`update-spte`) instead of clearing it, which saves the re-fault: a demand fault costs 2 exits instead of 3.
 * The MMU installs it only when the write is full-size and aligned, the gpte is present and accessed (an A=0
 * gpte must fault so that A gets set), and the page's role matches the vCPU's (`mmu_base_role_mask`); a
 * 32-bit guest's write is applied only to the quadrant page that shadows it, never to another quadrant's
 * alias (KVM fce0657ff9f1). Upper-level writes are left to the MMU's default (clear).
 *
 * @example
 * { "backend": "vmx", "mmu": "shadow", "policies": [{ "use": "pte-update" }] }
 */
export const pteUpdate: FaultPolicy<PteUpdateOptions> = {
  name: 'pte-update',
  description: 'install the new shadow pte on an emulated write of a full guest pte into a level-1 page, instead of clearing it (KVM 2007)',
  needs: ['ShadowPageTables'],
  optionsSchema: pteUpdateOptions,
  counters: ['mmu_pte_updated', 'mmu_events.pte-write'],
  mmuEvents: () => decideMmuEvents('pte-update', (ev) => (ev.kind === 'pte-write' && ev.level === 1 && !ev.misaligned ? 'update-spte' : null), ['pte-write']),
};
