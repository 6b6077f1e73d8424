import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createTraceLoader, loadVxtFile, traceHighestAddress } from '../src/replay.js';
import { runWorkload } from '../src/run.js';
import { TraceError } from '../src/trace/errors.js';
import type { VxtTrace } from '../src/trace/types.js';
import { encodeVxt } from '../src/trace/vxt.js';

/** One process (pid 1) that execs /bin/x (two text pages at 0x108000) and fetches from them `n` times. */
function trace(n: number): VxtTrace {
  return {
    collapse: 'run',
    source: { tool: 'test', command: 'x' },
    accesses: {
      length: n,
      kind: new Uint8Array(n).fill(0),
      page: Float64Array.from({ length: n }, (_, i) => 0x108 + (i & 1)),
      count: new Uint32Array(n).fill(3),
    },
    processes: [
      {
        pid: 1,
        parent: 0,
        recordStart: 0,
        recordEnd: n,
        events: [{ type: 'exec', at: 0, pid: 1, path: '/bin/x', mappings: [{ start: 0x108000, length: 0x2000, prot: 5, role: 'exe', file: '/bin/x' }] }],
      },
    ],
  };
}

describe('createTraceLoader', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trace-loader-'));
  const file = path.join(dir, 't.vxt');
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('decodes a file once while it is unchanged, again when it changed, and lets the loader name a bad path', () => {
    fs.writeFileSync(file, encodeVxt(trace(4)));
    let decoded = 0;
    const load = createTraceLoader((p) => (decoded++, loadVxtFile(p)));
    const a = load(file);
    expect(load(file)).toBe(a);
    expect(load(path.relative(process.cwd(), file))).toBe(a); // the same file by another name
    expect(decoded).toBe(1);
    // Rewritten (another size): decoded again.
    fs.writeFileSync(file, encodeVxt(trace(6)));
    const b = load(file);
    expect(b).not.toBe(a);
    expect(b.accesses.length).toBe(6);
    expect(decoded).toBe(2);
    expect(() => load(path.join(dir, 'missing.vxt'))).toThrow(TraceError);
    expect(() => load(path.join(dir, 'missing.vxt'))).toThrow(/missing\.vxt: cannot read \(ENOENT\)/);
  });

  it('gives runs that share a trace the results of runs that each decode it', () => {
    fs.writeFileSync(file, encodeVxt(trace(64)));
    const opts = { workload: file, mode: 'long4' as const, memory: 16 * 2 ** 20, seed: 3 };
    const load = createTraceLoader();
    const shared = [runWorkload({ ...opts, loadTrace: load }).result, runWorkload({ ...opts, loadTrace: load }).result];
    const own = runWorkload(opts).result;
    for (const r of shared) {
      expect(r.memoryDigest).toBe(own.memoryDigest);
      expect(r.guest).toEqual(own.guest);
      expect(r.counters).toEqual(own.counters);
    }
    expect(own.guest.accesses).toBe(64 * 3);
  });

  it('works out a trace that no loader gave out again for every run (its owner may have changed it)', () => {
    const t = trace(4);
    const before = traceHighestAddress(t);
    t.accesses.page[0] = 0x7f0000000;
    expect(traceHighestAddress(t)).toBe((0x7f0000000 + 1) * 4096);
    expect(before).toBe(0x10a000);
  });
});
