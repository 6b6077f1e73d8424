import type { FastPageFaultControl, FaultPolicy } from '@vmexit/core';
import { z } from 'zod';

/** The `fast-page-fault` policy's options: none. */
export const fastPageFaultOptions = z.strictObject({});
/** The `fast-page-fault` policy's options, parsed. */
export type FastPageFaultOptions = z.output<typeof fastPageFaultOptions>;

/**
 * `fast-page-fault` (KVM, Xiao Guangrong 2012, "KVM: MMU: fast path of handling guest page fault";
 * arch/x86/kvm/mmu/mmu.c `fast_page_fault`, Documentation/virt/kvm/locking.rst): a write fault with error code
 * P|W on an spte write-protected only for dirty logging (MMU-writable set) is fixed by a compare-and-swap of
 * the spte outside `mmu_lock`, and the page marked dirty; a fault on an spte that already allows the write is
 * spurious and returns at once. The MMU does the work (mmu-shadow fast-fault.ts, on direct shadow pages: an
 * indirect spte's gfn is not stable; mmu-tdp fast-fault.ts, on every TDP leaf, with the TDP MMU's lockless
 * walk); this policy turns it on. It changes nothing while no memslot logs dirty
 * pages (`vmexit migrate`, the `dirty-log-test` workload).
 *
 * @example
 * // vmexit.config.json
 * { "backend": "vmx", "mmu": "shadow", "policies": [{ "use": "fast-page-fault" }] }
 * // or on TDP: { "backend": "svm", "mmu": "tdp", "policies": [{ "use": "fast-page-fault" }] }
 */
export const fastPageFault: FaultPolicy<FastPageFaultOptions> = {
  name: 'fast-page-fault',
  description: 'write-protect faults under dirty logging fixed by an spte cmpxchg without mmu_lock (KVM 2012)',
  needs: ['FastPageFault'],
  optionsSchema: fastPageFaultOptions,
  // core mmu/fast-fault.ts: a fault fixed (or found spurious) without mmu_lock, a lost cmpxchg; mmu-shadow
  // fast-fault.ts: a fault the fast path would have fixed but for its indirect shadow page.
  counters: ['pf_fast', 'pf_fast_indirect', 'pf_fast_cmpxchg_fail'],
  setup(ctx) {
    ctx.capability<FastPageFaultControl>('FastPageFault').setFastPageFault(true);
  },
};
