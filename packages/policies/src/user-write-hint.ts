import { decideMmuEvents, PFERR_USER, type FaultPolicy } from '@vmexit/core';
import { z } from 'zod';

/** The options of the `user-write-hint` policy: none (an unknown key is an error naming it). */
export const userWriteHintOptions = z.strictObject({});
/** The options `user-write-hint` runs with (see `userWriteHintOptions`). */
export type UserWriteHintOptions = z.output<typeof userWriteHintOptions>;

/**
 * `user-write-hint` (KVM 2007, "Treat user-mode faults as a hint that a page is no longer a page table":
 * arch/x86/kvm/paging_tmpl.h FNAME(fix_write_pf) calling mmu_unshadow on a user fault): a user-mode write fault on a write-protected guest page table zaps all its shadow
 * pages (`mmu_unshadow`) and maps the page writable, instead of emulating the write: user mode does not
 * write page tables, so the page must have been recycled into a data page.
 *
 * @example
 * { "policies": [{ "use": "user-write-hint" }] }
 */
export const userWriteHint: FaultPolicy<UserWriteHintOptions> = {
  name: 'user-write-hint',
  description: 'a user-mode write fault on a shadowed guest page table zaps its shadow pages (KVM 2007)',
  needs: ['ShadowPageTables'],
  optionsSchema: userWriteHintOptions,
  // Its unshadow zaps count in mmu_shadow_zapped with every other zap: no counter of its own.
  counters: ['mmu_events.tracked-write'],
  mmuEvents: () =>
    decideMmuEvents('user-write-hint', (ev) => (ev.kind === 'tracked-write' && (ev.errorCode & PFERR_USER) !== 0 ? true : null), ['tracked-write']),
};
