export * from './model.js';
export * from './profiles.js';
