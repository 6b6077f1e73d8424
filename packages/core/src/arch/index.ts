export * from './constants.js';
export * from './modes.js';
export * from './hex.js';
