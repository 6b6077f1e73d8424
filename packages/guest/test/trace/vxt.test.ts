import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { decodeVxt, encodeVxt, readVxtFile, readVxtHeader, VXT_MAX_BODY_BYTES } from '../../src/trace/vxt.js';
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
      const rec = fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 2 ** 36 - 1 }), fc.integer({ min: 1, max: 0xffffffff }));
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
      expect(() => decodeVxt(good.subarray(0, 10), 't.vxt')).toThrow('t.vxt: truncated .vxt trace: 10 bytes, shorter than its 24-byte header');
    });

    it('detects a flipped bit in the payload by its checksum', () => {
      for (const at of [24, Math.floor(good.length / 2), good.length - 1]) {
        const bad = good.slice();
        bad[at]! ^= 0x10;
        expect(() => decodeVxt(bad, 'c.vxt')).toThrow('c.vxt: corrupt .vxt trace: checksum mismatch');
      }
    });

    it('rejects other files, other versions and trailing bytes', () => {
      expect(() => decodeVxt(new TextEncoder().encode('I  0401ab70,3\n'), 'log.txt')).toThrow('log.txt: not a .vxt trace (bad magic number)');
      const v2 = good.slice();
      v2[4] = 2;
      expect(() => decodeVxt(v2, 'v.vxt')).toThrow('v.vxt: unsupported .vxt version 2');
      const long = new Uint8Array(good.length + 3);
      long.set(good);
      expect(() => decodeVxt(long, 'l.vxt')).toThrow('l.vxt: corrupt .vxt trace: 3 bytes after the end of the trace');
    });

    /** `good` with the header's body length set to `body` (the checksum still matches: it covers the payload). */
    const claiming = (body: number): Uint8Array => {
      const b = good.slice();
      const dv = new DataView(b.buffer);
      dv.setUint32(16, body % 2 ** 32, true);
      dv.setUint32(20, Math.floor(body / 2 ** 32), true);
      return b;
    };

    it('bounds the body length the header claims by the payload and an absolute limit, before decompressing', () => {
      const payload = good.length - 24;
      // 4 GiB from a few hundred bytes: refused from the header alone (it once made `trace info` use 8.5 GB)
      expect(() => decodeVxt(claiming(2 ** 32), 'bomb.vxt')).toThrow(`bomb.vxt: corrupt .vxt trace: the header claims a body of ${2 ** 32} bytes, over the`);
      expect(() => decodeVxt(claiming(payload * 1025), 'r.vxt')).toThrow(`more than 1024 times as large`);
      // over 4 GiB: no leak of zlib's "options.maxOutputLength is out of range"
      expect(() => decodeVxt(claiming(2 ** 40), 'big.vxt')).toThrow(
        `big.vxt: corrupt .vxt trace: the header claims a body of ${2 ** 40} bytes, over the ${VXT_MAX_BODY_BYTES} bytes`,
      );
      // inside the bound but not what the payload holds: the decompressor stops at the claim
      expect(() => decodeVxt(claiming(payload * 2), 's.vxt')).toThrow(/s\.vxt: corrupt \.vxt trace: (cannot decompress|body is)/);
    });

    it('rejects a nonzero reserved flags field', () => {
      const b = good.slice();
      b[6] = 1;
      expect(() => decodeVxt(b, 'f.vxt')).toThrow('f.vxt: corrupt .vxt trace: reserved flags field is 0x1 (version 1 writes 0)');
    });

    it('reads a file only when it is a regular file whose header agrees with its size', () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vxt-read-'));
      const f = path.join(dir, 'ok.vxt');
      fs.writeFileSync(f, good);
      expect(readVxtFile(f)).toEqual(good);
      const link = path.join(dir, 'zero.vxt');
      fs.symlinkSync('/dev/zero', link);
      expect(() => readVxtFile(link)).toThrow(`${link}: not a regular file (a device, FIFO or socket)`);
      expect(() => readVxtFile(dir)).toThrow(`${dir}: not a regular file (a directory)`);
      const cut = path.join(dir, 'cut.vxt');
      fs.writeFileSync(cut, good.subarray(0, good.length - 5));
      expect(() => readVxtFile(cut)).toThrow(`${cut}: truncated .vxt trace: ${good.length - 5} bytes, the header says ${good.length}`);
      expect(zlib.crc32(readVxtFile(f).subarray(24))).toBe(new DataView(good.buffer).getUint32(12, true));
    });

    it('checks the structure even when the checksum matches', () => {
      const bad = trace([[0, 1, 1]], [{ pid: 1, parent: 5, recordStart: 0, recordEnd: 1, events: [] }]);
      expect(() => decodeVxt(encodeVxt(bad), 'b.vxt')).toThrow('b.vxt: corrupt .vxt trace: pid 1 has parent 5, not in the trace');
      const range = trace([[0, 1, 1]], [{ pid: 1, parent: 0, recordStart: 0, recordEnd: 2, events: [] }]);
      expect(() => decodeVxt(encodeVxt(range), 'r.vxt')).toThrow(TraceError);
    });

    /** The message decodeVxt gives for `processes` (and `recs`) encoded with a valid checksum. */
    const problem = (processes: VxtProcess[], recs: [number, number, number][] = [[0, 0x108, 1]]): string => {
      try {
        decodeVxt(encodeVxt(trace(recs, processes)), 'bad.vxt');
      } catch (e) {
        expect(e).toBeInstanceOf(TraceError);
        expect((e as TraceError).code).toBe('corrupt');
        return (e as Error).message;
      }
      throw new Error('decoded without an error');
    };
    const exec: VxtEvent = events[0]!;
    const root = (evs: VxtEvent[], recordEnd = 1): VxtProcess => ({ pid: 1, parent: 0, recordStart: 0, recordEnd, events: [exec, ...evs] });

    it('rejects mmap, munmap and mprotect ranges that are unaligned, empty, negative or not exact numbers', () => {
      // A successful mmap/munmap/mprotect always has a page-aligned start (Linux returns EINVAL otherwise).
      const mmap = { type: 'mmap', at: 1, start: 0x4835000, length: 8192, prot: 3, flags: 34, offset: 0, file: null } as const;
      expect(problem([root([{ ...mmap, start: 0x4835001 }])])).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: mmap event 1 has an unaligned start 0x4835001 (not a multiple of 4096)',
      );
      expect(problem([root([{ ...mmap, length: 100 }])])).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: mmap event 1 has a length of 100 bytes, not a multiple of 4096',
      );
      expect(problem([root([{ ...mmap, length: 0 }])])).toBe('bad.vxt: corrupt .vxt trace: pid 1: mmap event 1 has a length of 0');
      expect(problem([root([{ type: 'munmap', at: 1, start: -8192, length: 8192 }])])).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: munmap event 1 has a start of -8192, not a whole number from 0 to 2^53',
      );
      expect(problem([root([{ type: 'mprotect', at: 1, start: 2 ** 56 - 4096, length: 8192, prot: 1 }])])).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: mprotect event 1 has a start of 72057594037923840, not a whole number from 0 to 2^53',
      );
      expect(problem([root([{ type: 'brk', at: 1, request: 0, result: -1 }])])).toMatch(/pid 1: brk event 1 has a break outside user space/);
    });

    it('rejects an access record outside user space (a page below zero, or at 2^44 and above)', () => {
      // Page -2^40 is address -2^52: not canonical in 4-level paging (#GP) and a kernel address in 5-level.
      expect(
        problem(
          [root([], 2)],
          [
            [0, 0x108, 1],
            [1, -(2 ** 40), 1],
          ],
        ),
      ).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: record 1 is an access to page -0x10000000000 (address -0x10000000000000), outside user space [0, 0x100000000000000)',
      );
      expect(
        problem(
          [root([], 2)],
          [
            [0, 0x108, 1],
            [2, 2 ** 44, 1],
          ],
        ),
      ).toMatch(/pid 1: record 1 is an access to page 0x100000000000 /);
      // the largest user page of 5-level paging is fine
      expect(() => decodeVxt(encodeVxt(trace([[1, 2 ** 44 - 1, 1]], [root([])])), 'ok.vxt')).not.toThrow();
    });

    it('rejects processes whose record ranges overlap (a record belongs to one process)', () => {
      const recs: [number, number, number][] = [
        [0, 0x108, 1],
        [0, 0x109, 1],
        [0, 0x10a, 1],
      ];
      const fork: VxtEvent = { type: 'fork', at: 1, parent: 1, child: 2 };
      const second = (recordStart: number): VxtProcess => ({ pid: 2, parent: 1, recordStart, recordEnd: 3, events: [] });
      expect(problem([root([fork], 2), second(1)], recs)).toBe(
        "bad.vxt: corrupt .vxt trace: pid 2's records [1, 3) overlap pid 1's [0, 2) (a record belongs to one process)",
      );
      expect(() => decodeVxt(encodeVxt(trace(recs, [root([fork], 2), second(2)])), 'ok.vxt')).not.toThrow();
    });

    it('rejects a process tree the replay cannot run: a self-fork, a fork of a missing or foreign child, a double fork, an unforked child, a cycle', () => {
      const child = (pid: number, parent: number): VxtProcess => ({ pid, parent, recordStart: 1, recordEnd: 1, events: [] });
      const fork = (parent: number, c: number): VxtEvent => ({ type: 'fork', at: 1, parent, child: c });
      expect(problem([root([fork(1, 1)])])).toBe('bad.vxt: corrupt .vxt trace: pid 1: fork event 1 forks the process itself');
      expect(problem([root([fork(1, 2)])])).toBe('bad.vxt: corrupt .vxt trace: pid 1 forks pid 2, not in the trace');
      expect(problem([root([fork(3, 2)]), child(2, 1)])).toBe('bad.vxt: corrupt .vxt trace: pid 1: fork event 1 names pid 3 as the parent, not this process');
      expect(problem([root([fork(1, 2), fork(1, 2)]), child(2, 1)])).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: fork event 2 forks pid 2, which pid 1 already forked (a child is forked once)',
      );
      expect(problem([root([]), child(2, 1)])).toBe('bad.vxt: corrupt .vxt trace: pid 2 has parent 1, which has no fork event that creates it');
      // pid 3 is pid 2's child, but pid 1 forks it
      expect(problem([root([fork(1, 2), fork(1, 3)]), child(2, 1), child(3, 2)])).toBe('bad.vxt: corrupt .vxt trace: pid 3 has parent 2 but pid 1 forks it');
      // 2 and 3 fork each other (and nothing starts them): the parent must come first, so a cycle cannot
      expect(problem([root([]), { ...child(2, 3), events: [fork(2, 3)] }, { ...child(3, 2), events: [fork(3, 2)] }])).toBe(
        'bad.vxt: corrupt .vxt trace: pid 2 comes before its parent 3 (parents come first)',
      );
      expect(problem([root([]), { ...child(2, 2), events: [] }])).toBe('bad.vxt: corrupt .vxt trace: pid 2 is its own parent');
      expect(problem([root([fork(1, 5)]), child(5, 0)])).toBe('bad.vxt: corrupt .vxt trace: pid 5 is a root (parent 0) but pid 1 forks it');
    });

    it('keeps a wait event for a child forked before it, and rejects one the replay would block on forever', () => {
      const child = (pid: number, parent: number): VxtProcess => ({ pid, parent, recordStart: 1, recordEnd: 1, events: [] });
      const fork: VxtEvent = { type: 'fork', at: 1, parent: 1, child: 2 };
      const wait = (c: number): VxtEvent => ({ type: 'wait', at: 1, child: c });
      const ok = trace([[0, 1, 1]], [root([fork, wait(2)]), child(2, 1)]);
      expect(decodeVxt(encodeVxt(ok), 'ok.vxt').processes[0]!.events.slice(1)).toEqual([fork, wait(2)]);
      // a wait before the fork, for a process that is not a child, or for a pid not in the trace: no exit wakes it
      expect(problem([root([wait(2), fork]), child(2, 1)])).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: wait event 1 waits for pid 2, which this process did not fork before',
      );
      expect(problem([root([fork, wait(1)]), child(2, 1)])).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: wait event 2 waits for pid 1, which this process did not fork before',
      );
      expect(problem([root([fork, wait(7)]), child(2, 1)])).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: wait event 2 waits for pid 7, which this process did not fork before',
      );
      expect(problem([root([{ type: 'wait', at: 1 } as unknown as VxtEvent])])).toBe('bad.vxt: corrupt .vxt trace: pid 1: wait event without child');
    });

    it('writes a vfork as an event of type vfork, which a reader without vforks refuses, and a trace without one as before', () => {
      const child: VxtProcess = { pid: 2, parent: 1, recordStart: 1, recordEnd: 1, events: [] };
      const fork: VxtEvent = { type: 'fork', at: 1, parent: 1, child: 2 };
      const vfork: VxtEvent = { ...fork, vfork: true };
      /** The processes of the file's metadata, as written. */
      const written = (t: VxtTrace): unknown => {
        const body = zlib.brotliDecompressSync(encodeVxt(t).subarray(24));
        const n = new DataView(body.buffer, body.byteOffset).getUint32(0, true);
        return (JSON.parse(body.subarray(4, 4 + n).toString('utf8')) as { processes: unknown }).processes;
      };
      const plain = trace([[0, 1, 1]], [root([fork]), child]);
      const vforked = trace([[0, 1, 1]], [root([vfork]), child]);
      // No vfork: the processes are written as they are (the encoding before vforks existed), byte for byte.
      expect(JSON.stringify(written(plain))).toBe(JSON.stringify(plain.processes));
      // A vfork: type vfork, no flag. Readers before it refused an event type they did not know ("pid 1 has a
      // malformed event"), so none replays it as a fork.
      expect((written(vforked) as VxtProcess[])[0]!.events[1]).toEqual({ type: 'vfork', at: 1, parent: 1, child: 2 });
      expect(decodeVxt(encodeVxt(vforked), 'ok.vxt').processes[0]!.events[1]).toEqual(vfork);
      expect(decodeVxt(encodeVxt(plain), 'ok.vxt').processes[0]!.events[1]).toEqual(fork);
      // the fork checks hold for a vfork; a vfork is never written as a flag on a fork event
      expect(problem([root([{ ...vfork, child: 1 }])])).toBe('bad.vxt: corrupt .vxt trace: pid 1: vfork event 1 forks the process itself');
      // (encodeVxt turns `vfork: true` into a vfork event; any other value stays on the fork event, as written)
      expect(problem([root([{ ...fork, vfork: 1 } as unknown as VxtEvent]), child])).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: fork event 1 has a vfork field (a vfork is written as an event of type vfork)',
      );
    });

    it('type-checks exec mappings (file, role, ranges, order) and the pid of exec and exit events', () => {
      const m = { start: 0x108000, length: 0x2000, prot: 5, role: 'exe', file: '/bin/x' } as const;
      const withMappings = (mappings: unknown[]): VxtProcess[] => [
        { pid: 1, parent: 0, recordStart: 0, recordEnd: 1, events: [{ ...exec, mappings } as VxtEvent] },
      ];
      expect(problem(withMappings([{ ...m, file: 42 }]))).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: exec event 0, mapping 0 has a file that is neither a string nor null',
      );
      expect(problem(withMappings([{ ...m, role: 'heap' }]))).toBe('bad.vxt: corrupt .vxt trace: pid 1: exec event 0, mapping 0 is malformed');
      expect(problem(withMappings([{ ...m, start: 0x108800 }]))).toMatch(/mapping 0 has an unaligned start 0x108800/);
      expect(problem(withMappings([m, { ...m, start: 0x109000 }]))).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: exec event 0, mapping 1 overlaps the mapping before it or is out of order',
      );
      expect(() => decodeVxt(encodeVxt(trace([[0, 0x108, 1]], withMappings([{ ...m, file: null }]))), 'ok.vxt')).not.toThrow();
      expect(problem([{ pid: 1, parent: 0, recordStart: 0, recordEnd: 1, events: [{ ...exec, pid: 7 } as VxtEvent] }])).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: exec event 0 is about pid 7',
      );
      expect(problem([root([{ type: 'exit', at: 1, pid: 1, status: -1, signal: null }])])).toBe(
        'bad.vxt: corrupt .vxt trace: pid 1: exit event 1 has a status of -1',
      );
    });

    it('rejects access records that belong to no process (the replay skipped them, and info counted no accesses)', () => {
      // Three records; pid 1 owns [0, 1) and pid 2 [2, 3): record 1 is nobody's. With no process at all,
      // all three are. An importer writes each process's records as one range, the ranges tiling the column.
      const recs: [number, number, number][] = [
        [0, 0x108, 1],
        [0, 0x108, 1],
        [0, 0x108, 1],
      ];
      const fork: VxtEvent = { type: 'fork', at: 1, parent: 1, child: 2 };
      expect(
        problem(
          [
            { pid: 1, parent: 0, recordStart: 0, recordEnd: 1, events: [exec, fork] },
            { pid: 2, parent: 1, recordStart: 2, recordEnd: 3, events: [] },
          ],
          recs,
        ),
      ).toBe('bad.vxt: corrupt .vxt trace: records [1, 2) belong to no process (each record is an access of one process)');
      expect(problem([], recs)).toBe('bad.vxt: corrupt .vxt trace: records [0, 3) belong to no process (each record is an access of one process)');
    });

    it('rejects a record count above 2^32 - 1 (it wrapped to a count of 0 in the Uint32Array)', () => {
      // One fetch of page 0x108, its count column replaced by the 5-byte varint of 2^32 - 1 (ff ff ff ff 0f),
      // which stands for a count of 2^32: encodeVxt writes count - 1 of a u32 count, so at most 2^32 - 2.
      const good = encodeVxt(trace([[0, 0x108, 1]]));
      const body = zlib.brotliDecompressSync(good.subarray(24));
      const metaLength = body.readUInt32LE(0);
      const meta = JSON.parse(body.subarray(4, 4 + metaLength).toString()) as Record<string, unknown>;
      expect(meta['countsBytes']).toBe(1);
      const columns = body.subarray(4 + metaLength);
      const pages = columns.subarray(2); // after 1 kind byte and the 1-byte count
      const metaBytes = Buffer.from(JSON.stringify({ ...meta, countsBytes: 5 }));
      const length = Buffer.alloc(4);
      length.writeUInt32LE(metaBytes.length);
      const newBody = Buffer.concat([length, metaBytes, Buffer.from([0]), Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]), pages]);
      const payload = zlib.brotliCompressSync(newBody);
      const header = Buffer.alloc(24);
      Buffer.from(good.subarray(0, 8)).copy(header);
      header.writeUInt32LE(payload.length, 8);
      header.writeUInt32LE(zlib.crc32(payload) >>> 0, 12);
      header.writeUInt32LE(newBody.length, 16);
      expect(() => decodeVxt(Buffer.concat([header, payload]), 'c.vxt')).toThrow('c.vxt: corrupt .vxt trace: record 0 has a count above 4294967295');
    });

    it('reads the header of a good file', () => {
      expect(readVxtHeader(good, 'g.vxt')).toMatchObject({ version: 1, payloadBytes: good.length - 24 });
    });
  });
});
