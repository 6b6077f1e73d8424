export * from './types.js';
export { TraceError } from './errors.js';
export {
  encodeVxt,
  decodeVxt,
  readVxtHeader,
  readVxtFile,
  VXT_MAGIC,
  VXT_VERSION,
  VXT_USER_TOP,
  VXT_MAX_RATIO,
  VXT_MAX_BODY_BYTES,
  VXT_MAX_FILE_BYTES,
} from './vxt.js';
export type { EncodeVxtOptions, VxtHeader } from './vxt.js';
export { importLackey } from './lackey.js';
export type { ImportLackeyOptions } from './lackey.js';
export { describeVxt } from './describe.js';
export type { VxtDescription } from './describe.js';
