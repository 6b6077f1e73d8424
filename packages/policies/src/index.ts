/**
 * @vmexit/policies: the built-in fault policies (KVM's shadow-MMU optimizations, one per file) and the
 * policy toolkit (`splitPolicy`). See README.md for the policy API and how to write one.
 */
export * from './errors.js';
export * from './bypass-guest-pf.js';
export * from './pte-update.js';
export * from './unsync.js';
export * from './write-flood.js';
export * from './misaligned-write.js';
export * from './prefetch.js';
export * from './user-write-hint.js';
export * from './fast-page-fault.js';
export * from './split-policy.js';
export * from './module.js';
export { default } from './module.js';
