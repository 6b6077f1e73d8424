import { decideMmuEvents, type FaultPolicy } from '@vmexit/core';
import { z } from 'zod';

export const prefetchOptions = z.strictObject({});
export type PrefetchOptions = z.output<typeof prefetchOptions>;

/**
 * `prefetch` (KVM `FNAME(pte_prefetch)`, PTE_PREFETCH_NUM = 8, arch/x86/kvm/mmu/paging_tmpl.h): when a fault is fixed in
 * a level-1 shadow page of a guest page table, the MMU also maps the other non-present sptes of the aligned
 * group of 8 whose gptes are present and accessed (rights = the page's role AND the gpte's, writable only
 * when dirty), stopping at the first gpte it cannot map. Neighbouring pages then cost no fault.
 *
 * @example
 * { "policies": [{ "use": "prefetch" }] }
 */
export const prefetch: FaultPolicy<PrefetchOptions> = {
  name: 'prefetch',
  description: 'on a level-1 fault, also map the other present and accessed guest ptes of its aligned group of 8',
  needs: [],
  optionsSchema: prefetchOptions,
  mmuEvents: () => decideMmuEvents('prefetch', (ev) => (ev.kind === 'prefetch' ? true : null), ['prefetch']),
};
