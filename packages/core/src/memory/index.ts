export * from './physical.js';
export * from './sparse.js';
export * from './dense.js';
