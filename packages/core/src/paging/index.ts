export * from './types.js';
export * from './walker.js';
export * from './ept.js';
export * from './npt.js';
export * from './nested-context.js';
