export * from './errors.js';
export * from './hooks.js';
export * from './guest-memory.js';
export * from './rng.js';
export * from './vcpu.js';
export * from './emulate.js';
export * from './machine.js';
