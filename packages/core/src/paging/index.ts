export * from './types.js';
export * from './walker.js';
