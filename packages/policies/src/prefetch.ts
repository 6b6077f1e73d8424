import { decideMmuEvents, type FaultPolicy } from '@vmexit/core';
import { z } from 'zod';

/** The options of the `prefetch` policy: none (an unknown key is an error naming it). */
export const prefetchOptions = z.strictObject({});
/** The options `prefetch` runs with (see `prefetchOptions`). */
export type PrefetchOptions = z.output<typeof prefetchOptions>;

/**
 * `prefetch` (KVM `FNAME(pte_prefetch)`, PTE_PREFETCH_NUM = 8, arch/x86/kvm/mmu/paging_tmpl.h): when a fault is fixed in
 * a level-1 shadow page of a guest page table, the MMU also maps the other non-present sptes of the aligned
 * group of 8 whose gptes are present and accessed (rights = the page's role AND the gpte's, writable only
 * when dirty), stopping at the first gpte it cannot map: one that is not present and accessed, or, while its
 * memslot logs dirty pages, one with write access (KVM's `gfn_to_memslot_dirty_bitmap(..., no_dirty_log)`: a
 * prefetched writable spte would mark a page dirty that the guest never wrote). Under a guest large page (a direct
 * shadow page) the neighbours are the other pages of the group, mapped with the large page's rights, each run of
 * non-present sptes at once, up to a run outside a writable memslot (KVM `__direct_pte_prefetch`). Neighbouring pages
 * then cost no fault.
 *
 * @example
 * { "policies": [{ "use": "prefetch" }] }
 */
export const prefetch: FaultPolicy<PrefetchOptions> = {
  name: 'prefetch',
  description:
    'on a level-1 fault, also map the other present and accessed guest ptes of its aligned group of 8 (under a guest large page: the neighbouring pages)',
  needs: ['ShadowPageTables'],
  optionsSchema: prefetchOptions,
  // The MMU has no counter of prefetched sptes (neither has KVM); the faults they save show in pf_fixed.
  counters: ['mmu_events.prefetch'],
  mmuEvents: () => decideMmuEvents('prefetch', (ev) => (ev.kind === 'prefetch' ? true : null), ['prefetch']),
};
