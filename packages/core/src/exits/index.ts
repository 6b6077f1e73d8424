export * from './vm-exit.js';
export * from './errors.js';
export * from './policy.js';
export * from './mmu-events.js';
export * from './stats.js';
export * from './observers.js';
export * from './pipeline.js';
