export * from './tlb.js';
