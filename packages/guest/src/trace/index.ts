export * from './types.js';
export { TraceError } from './errors.js';
export { encodeVxt, decodeVxt, readVxtHeader, VXT_MAGIC, VXT_VERSION, VXT_USER_TOP } from './vxt.js';
export type { EncodeVxtOptions, VxtHeader } from './vxt.js';
export { importLackey } from './lackey.js';
export type { ImportLackeyOptions } from './lackey.js';
export { describeVxt } from './describe.js';
export type { VxtDescription } from './describe.js';
