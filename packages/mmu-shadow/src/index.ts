/**
 * @vmexit/mmu-shadow: the KVM-style shadow MMU. See README.md for an example and DESIGN.md for the rules.
 *
 * Public: what a user composes (the module), extends or inspects (the `ShadowMmu` class, its state's types),
 * the error class, and the audit entry point. The mechanisms (page cache, roots, fault, pte write, unsync,
 * decisions) are internal; the spte layout, pool, role and rmaps are core's (`@vmexit/core`, src/mmu/).
 */
export { shadowMmuModule, containerModule } from './module.js';
export { default } from './module.js';
export { ShadowMmu, type ShadowMmuOptions } from './mmu.js';
export type { ShadowMmuState, VcpuShadowState } from './state.js';
export type { ShadowPage } from './page.js';
export { defaultMaxMmuPages } from './page-cache.js';
export { ShadowMmuError } from './errors.js';
export { auditShadowMmu, type AuditOptions } from './audit.js';
export { FastPageFault, type FastFaultMutation } from './fast-fault.js';
export { RACE_SCENARIOS, shadowRaceScenario, type RaceMutation } from './race.js';
