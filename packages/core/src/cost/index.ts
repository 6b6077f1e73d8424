export * from './model.js';
export * from './profiles.js';
export * from './schema.js';
