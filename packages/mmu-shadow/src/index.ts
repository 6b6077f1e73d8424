/**
 * @vmexit/mmu-shadow: the KVM-style shadow MMU. See README.md for an example and DESIGN.md for the rules.
 */
export * from './role.js';
export * from './spte.js';
export * from './pool.js';
export * from './rmap.js';
export * from './page.js';
export * from './context.js';
export * from './write-decision.js';
export * from './mmu.js';
export * from './errors.js';
export * from './audit.js';
export * from './module.js';
export { default } from './module.js';
