import { decideMmuEvents, type FaultPolicy } from '@vmexit/core';
import { z } from 'zod';
import { PolicyError } from './errors.js';

/** The options of the `unsync` policy: none (an unknown key is an error naming it). */
export const unsyncOptions = z.strictObject({});
/** The options `unsync` runs with (see `unsyncOptions`). */
export type UnsyncOptions = z.output<typeof unsyncOptions>;

/**
 * `unsync` (KVM 4731d4c7a077, "out of sync shadow core", 2008, which replaced `pte-update`; today
 * arch/x86/kvm/mmu/mmu.c mmu_try_to_unsync_pages and kvm_sync_page):
 * a guest page table shadowed only by level-1 pages may become writable and out of sync instead of having
 * every pte write emulated. The MMU syncs it at the guest's next TLB flush: a CR write (CR3 load) syncs every
 * unsync page the vCPU's roots reach, INVLPG re-reads the one gpte, and linking an unsync page syncs it first
 * (a not-present -> present change needs no flush). Syncing relies on those events exiting, as KVM's "trap
 * invlpg" (2008) made them again. There is nothing for the policy to turn on: shadow paging already makes them
 * exit, because the MMU must see every guest CR3 load (to switch shadow roots) and INVLPG (to drop the
 * spte), so both bundled backends set them up for it (backend-vmx `createVmcs`: CPU_BASED_INVLPG_EXITING and
 * CPU_BASED_CR3_LOAD_EXITING, as KVM `init_vmcs` without EPT, SDM Vol. 3C §25.6.2; backend-svm `createVmcb`:
 * INTERCEPT_INVLPG and the CR3 write intercept, as KVM `init_vmcb` without NPT, APM Vol. 2 §15.9), and core
 * has no capability to change them. The policy checks it and refuses a backend state (a third-party backend's)
 * that does not intercept them. Upper-level guest tables stay write-protected.
 *
 * @example
 * { "backend": "svm", "mmu": "shadow", "policies": [{ "use": "unsync" }, { "use": "write-flood" }] }
 */
export const unsync: FaultPolicy<UnsyncOptions> = {
  name: 'unsync',
  description: 'level-1 guest page tables become writable and out of sync, synced on the guest TLB flush (CR3 write, INVLPG) (KVM 2008)',
  needs: ['ShadowPageTables'],
  optionsSchema: unsyncOptions,
  counters: ['mmu_unsync', 'mmu_events.unsync'],
  setup(ctx) {
    if (ctx.mmu.name !== 'shadow') return; // two-dimensional paging shadows no guest tables
    for (const [i, state] of ctx.backendStates.entries()) {
      if (!ctx.backend.invlpgExits(state) || !ctx.backend.crWriteExits(state, 3, 0)) {
        throw new PolicyError(
          `policy 'unsync' needs INVLPG and CR3 loads to exit (they sync unsync pages), but ${ctx.backend.name} vCPU ${i} does not intercept ${ctx.backend.invlpgExits(state) ? 'CR3 loads' : 'INVLPG'}`,
        );
      }
    }
  },
  mmuEvents: () => decideMmuEvents('unsync', (ev) => (ev.kind === 'unsync' ? true : null), ['unsync']),
};
