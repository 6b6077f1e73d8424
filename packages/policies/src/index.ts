/**
 * @vmexit/policies: the built-in fault policies (KVM's shadow-MMU optimizations, one per file) and the
 * policy toolkit (`splitPolicy`). See README.md for the policy API and how to write one.
 */
export { PolicyError } from './errors.js';
export { bypassGuestPf, bypassGuestPfOptions, type BypassGuestPfOptions } from './bypass-guest-pf.js';
export { pteUpdate, pteUpdateOptions, type PteUpdateOptions } from './pte-update.js';
export { unsync, unsyncOptions, type UnsyncOptions } from './unsync.js';
export { writeFlood, writeFloodOptions, type WriteFloodOptions } from './write-flood.js';
export { misalignedWrite, misalignedWriteOptions, type MisalignedWriteOptions } from './misaligned-write.js';
export { prefetch, prefetchOptions, type PrefetchOptions } from './prefetch.js';
export { userWriteHint, userWriteHintOptions, type UserWriteHintOptions } from './user-write-hint.js';
export { fastPageFault, fastPageFaultOptions, type FastPageFaultOptions } from './fast-page-fault.js';
export { pml, pmlOptions, type PmlOptions } from './pml.js';
export { errorCodeMatches, type SplitCondition, type SplitOptions, splitPolicy, type SplitPolicyConfig } from './split-policy.js';
export { BUILT_IN_POLICIES, policiesModule } from './module.js';
export { default } from './module.js';
