export * from './constants.js';
export * from './modes.js';
