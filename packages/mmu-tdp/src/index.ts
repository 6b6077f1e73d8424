/**
 * @vmexit/mmu-tdp: KVM's TDP MMU, two-dimensional paging on EPT (VMX) and NPT (SVM). See README.md.
 *
 * Public: the module, the `TdpMmu` class (to compose or inspect), its page type and options, the error
 * class, the audit entry point and the MMIO spte helpers. The spte layout, pool, role and page cache are
 * core's (`@vmexit/core`, src/mmu/), shared with mmu-shadow.
 */
export { tdpMmuModule, containerModule } from './module.js';
export { default } from './module.js';
export { TdpMmu, type TdpMmuOptions } from './mmu.js';
export { TdpMmuState, hostPageLevel, type HostPages } from './state.js';
export { TdpPage } from './page.js';
export { TdpFastPageFault, type TdpFastFaultMutation } from './fast-fault.js';
export { TdpMapFault, type TdpMapMutation } from './map-fault.js';
export { TDP_RACE_SCENARIOS, tdpRaceScenario, type TdpRaceMutation } from './race.js';
export { TdpMmuError } from './errors.js';
export { auditTdpMmu, type TdpAuditOptions } from './audit.js';
export { isMmioSpte, isPresentSpte, mmioSpteGeneration, mmioSpteGfn, MMIO_GEN_MASK } from './mmio.js';
