/**
 * vCPUs that race: KVM's `mmu_lock`, race threads split at KVM's racing points, and the explorer that runs
 * every interleaving of a small scenario up to a preemption bound.
 */
export * from './lock.js';
export * from './thread.js';
export * from './explore.js';
export * from './harvest.js';
export * from './writer.js';
export * from './world.js';
export * from './unmapper.js';
