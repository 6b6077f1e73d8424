import { createTraceLoader, decodeVxt, encodeVxt, readVxtFile, type VxtTrace } from '@vmexit/guest';
import { CellTraceLoader } from '../../src/index.js';

/**
 * A small trace of one process (pid 1) that maps `pages` anonymous pages at 0x4835000 and then stores to them
 * in turn, `n` records of `count` accesses each: a trace workload for tests, written by `encodeVxt`.
 */
export function storeTrace(n: number, pages: number, count: number): VxtTrace {
  return {
    collapse: 'run',
    source: { tool: 'test', command: 'x' },
    accesses: {
      length: n,
      kind: new Uint8Array(n).fill(2),
      page: Float64Array.from({ length: n }, (_, i) => 0x4835 + (i % pages)),
      count: new Uint32Array(n).fill(count),
    },
    processes: [
      {
        pid: 1,
        parent: 0,
        recordStart: 0,
        recordEnd: n,
        events: [{ type: 'mmap', at: 0, start: 0x4835000, length: pages * 4096, prot: 3, flags: 34, offset: 0, file: null }],
      },
    ],
  };
}

/** A trace loader that counts the files it decodes (`decoded()`). */
export function countingLoader(): { load: (path: string) => VxtTrace; decoded: () => number } {
  let n = 0;
  return { load: createTraceLoader((p) => (n++, decodeVxt(readVxtFile(p), p))), decoded: () => n };
}

/** A sweep thread's trace loader that counts the traces it decodes (`decoded()`). */
export function countingCellTraces(): { traces: CellTraceLoader; decoded: () => number } {
  let n = 0;
  return { traces: new CellTraceLoader({ decode: (bytes, p) => (n++, decodeVxt(bytes, p)) }), decoded: () => n };
}

export { encodeVxt };
