export * from './vector.js';
export * from './load.js';
export * from './machine.js';
export * from './runner.js';
export * from './generate.js';
export * from './reference.js';
export * from './extended.js';
