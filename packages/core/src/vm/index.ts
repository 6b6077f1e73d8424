export * from './mmu.js';
