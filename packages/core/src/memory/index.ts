export * from './physical.js';
