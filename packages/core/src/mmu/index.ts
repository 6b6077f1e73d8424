/**
 * The mechanisms an MMU implementation builds on (the shadow MMU, and the TDP MMU): the spte layout and the
 * one leaf constructor, the host frame pool, the page role, rmaps, and the (gfn, role)-keyed page cache.
 * They are core's so that MMUs share them without importing each other (ARCHITECTURE.md, "Packages").
 */
export * from './spte.js';
export * from './pool.js';
export * from './role.js';
export * from './rmap.js';
export * from './page.js';
export * from './page-cache.js';
export * from './dirty-log.js';
export * from './fast-fault.js';
