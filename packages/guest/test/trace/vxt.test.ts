import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { decodeVxt, encodeVxt, readVxtHeader } from '../../src/trace/vxt.js';
import { TraceError } from '../../src/trace/errors.js';
import type { VxtEvent, VxtProcess, VxtTrace } from '../../src/trace/types.js';

function trace(recs: [number, number, number][], processes?: VxtProcess[]): VxtTrace {
  const n = recs.length;
  const kind = new Uint8Array(n);
  const page = new Float64Array(n);
  const count = new Uint32Array(n);
  recs.forEach(([k, p, c], i) => {
    kind[i] = k;
    page[i] = p;
    count[i] = c;
  });
  return {
    collapse: 'run',
    source: { tool: 'test', command: 'x' },
    accesses: { length: n, kind, page, count },
    processes: processes ?? [{ pid: 1, parent: 0, recordStart: 0, recordEnd: n, events: [] }],
  };
}

const events: VxtEvent[] = [
  {
    type: 'exec',
    at: 0,
    pid: 1,
    path: '/bin/x',
    mappings: [{ start: 0x108000, length: 0x2000, prot: 5, role: 'exe', file: '/bin/x' }],
  },
  { type: 'mmap', at: 1, start: 0x4835000, length: 8192, prot: 3, flags: 34, offset: 0, file: null },
  { type: 'fork', at: 2, parent: 1, child: 2 },
  { type: 'exit', at: 3, pid: 1, status: 0, signal: null },
];

const sample = trace(
  [
    [0, 0x108, 3],
    [1, 0x1fff000, 1],
    [2, 0x7fffffffff, 0xffffffff],
    [3, 0, 1],
    [0, 2 ** 40 - 1, 7],
  ],
  [
    { pid: 1, parent: 0, recordStart: 0, recordEnd: 3, events },
    {
      pid: 2,
      parent: 1,
      recordStart: 3,
      recordEnd: 5,
      events: [{ type: 'exit', at: 5, pid: 2, status: null, signal: 13 }],
    },
  ],
);

function expectSame(a: VxtTrace, b: VxtTrace): void {
  expect(b.collapse).toBe(a.collapse);
  expect(b.source).toEqual(a.source);
  expect(b.processes).toEqual(a.processes);
  expect(b.accesses.length).toBe(a.accesses.length);
  expect(Array.from(b.accesses.kind)).toEqual(Array.from(a.accesses.kind));
  expect(Array.from(b.accesses.page)).toEqual(Array.from(a.accesses.page));
  expect(Array.from(b.accesses.count)).toEqual(Array.from(a.accesses.count));
}

describe('vxt', () => {
  describe('.encodeVxt/.decodeVxt', () => {
    it('round-trips records (extreme pages and counts included) and events', () => {
      expectSame(sample, decodeVxt(encodeVxt(sample), 's.vxt'));
    });

    it('round-trips an empty trace', () => {
      const t = trace([], [{ pid: 9, parent: 0, recordStart: 0, recordEnd: 0, events: [] }]);
      expectSame(t, decodeVxt(encodeVxt(t, { quality: 1 }), 'e.vxt'));
    });

    it('round-trips any records (property)', () => {
      const rec = fc.tuple(
        fc.integer({ min: 0, max: 3 }),
        fc.integer({ min: 0, max: 2 ** 36 - 1 }),
        fc.integer({ min: 1, max: 0xffffffff }),
      );
      fc.assert(
        fc.property(fc.array(rec, { maxLength: 300 }), (recs) => {
          const t = trace(recs);
          expectSame(t, decodeVxt(encodeVxt(t, { quality: 1 }), 'p.vxt'));
        }),
        { numRuns: 200, seed: 42 },
      );
    });
  });

  describe('.errors', () => {
    const good = encodeVxt(sample);

    it('names the file and the problem for a truncated trace', () => {
      expect(() => decodeVxt(good.subarray(0, good.length - 1), 't.vxt')).toThrow(
        `t.vxt: truncated .vxt trace: ${good.length - 1} bytes, the header says ${good.length}`,
      );
      expect(() => decodeVxt(good.subarray(0, 10), 't.vxt')).toThrow(
        't.vxt: truncated .vxt trace: 10 bytes, shorter than its 24-byte header',
      );
    });

    it('detects a flipped bit in the payload by its checksum', () => {
      for (const at of [24, Math.floor(good.length / 2), good.length - 1]) {
        const bad = good.slice();
        bad[at]! ^= 0x10;
        expect(() => decodeVxt(bad, 'c.vxt')).toThrow('c.vxt: corrupt .vxt trace: checksum mismatch');
      }
    });

    it('rejects other files, other versions and trailing bytes', () => {
      expect(() => decodeVxt(new TextEncoder().encode('I  0401ab70,3\n'), 'log.txt')).toThrow(
        'log.txt: not a .vxt trace (bad magic number)',
      );
      const v2 = good.slice();
      v2[4] = 2;
      expect(() => decodeVxt(v2, 'v.vxt')).toThrow('v.vxt: unsupported .vxt version 2');
      const long = new Uint8Array(good.length + 3);
      long.set(good);
      expect(() => decodeVxt(long, 'l.vxt')).toThrow(
        'l.vxt: corrupt .vxt trace: 3 bytes after the end of the trace',
      );
    });

    it('checks the structure even when the checksum matches', () => {
      const bad = trace([[0, 1, 1]], [{ pid: 1, parent: 5, recordStart: 0, recordEnd: 1, events: [] }]);
      expect(() => decodeVxt(encodeVxt(bad), 'b.vxt')).toThrow(
        'b.vxt: corrupt .vxt trace: pid 1 has parent 5, not in the trace',
      );
      const range = trace([[0, 1, 1]], [{ pid: 1, parent: 0, recordStart: 0, recordEnd: 2, events: [] }]);
      expect(() => decodeVxt(encodeVxt(range), 'r.vxt')).toThrow(TraceError);
    });

    it('reads the header of a good file', () => {
      expect(readVxtHeader(good, 'g.vxt')).toMatchObject({ version: 1, payloadBytes: good.length - 24 });
    });
  });
});
