/**
 * @vmexit/core: the x86 paging model, guest-physical memory, the vCPU and its TLB, the exit pipeline and
 * the composition of a VM. See DESIGN.md for the contracts the leaf packages implement.
 */
export * from './arch/index.js';
export * from './memory/index.js';
export * from './paging/index.js';
export * from './tlb/index.js';
export * from './machine/index.js';
export * from './exits/index.js';
export * from './vm/index.js';
export * from './conformance/index.js';
export * from './cost/index.js';
export * from './mmu/index.js';
export * from './race/index.js';
