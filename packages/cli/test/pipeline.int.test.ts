import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, beforeEach, afterEach, describe, expect, it, vi } from 'vitest';
import { main } from '../src/program.js';

// A recording of a multi-process shell pipeline imports and runs: the lackey logs
// of `sh -c 'ls /usr/bin | sort | head -3'` (packages/guest/test/fixtures/pipeline, recorded by its
// record-pipeline.sh with --trace-children=yes) go through `vmexit trace import lackey`, and the .vxt runs
// natively and under shadow paging on VMX and SVM with `--check --audit` (the guest sees the same faults and
// ends with the same memory as natively; the MMU audits clean after every exit).

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PIPE = path.join(HERE, '..', '..', 'guest', 'test', 'fixtures', 'pipeline');
const logs = fs
  .readdirSync(PIPE)
  .filter((f) => /^pipe\.\d+\.\d+$/.test(f))
  .map((f) => path.join(PIPE, f));

let dir: string;
let vxt: string;
let out: string[];

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-pipe-'));
  vxt = path.join(dir, 'pipe.vxt');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
beforeEach(() => {
  out = [];
  vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => (out.push(String(s)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
});
afterEach(() => vi.restoreAllMocks());

describe('a recorded shell pipeline', () => {
  let native: { memoryDigest: string; guest: { accesses: number; processes: number; sigsegv: number; faults: Record<string, number> } };

  it('imports: sh and its three children', async () => {
    expect(logs.length).toBe(7); // sh, and for ls, sort, head their pre-exec log and their exec'd image's
    expect(await main(['trace', 'import', 'lackey', ...logs, '-o', vxt])).toBe(0);
    out = [];
    expect(await main(['trace', 'info', vxt, '--json'])).toBe(0);
    const d = JSON.parse(out.join(''));
    expect(d.tree).toHaveLength(4);
    expect(d.events).toMatchObject({ fork: 3, exec: 4, exit: 4 });
  });

  it('runs natively: four processes, no SIGSEGV, the page faults of a real pipeline', async () => {
    expect(await main(['run', '--workload', vxt, '--backend', 'none', '--json'])).toBe(0);
    native = JSON.parse(out.join(''));
    expect(native.guest.processes).toBe(4);
    expect(native.guest.sigsegv).toBe(0);
    // demand-zero (stack, heap, bss), file-backed (the binaries and libc from the page cache) and COW (the
    // forked shell's pages written by the child before its exec) faults all occur
    expect(native.guest.faults['demand-zero']).toBeGreaterThan(0);
    expect(native.guest.faults['file']).toBeGreaterThan(0);
    expect(native.guest.faults['cow']).toBeGreaterThan(0);
  });

  for (const backend of ['vmx', 'svm']) {
    it(`runs under ${backend} shadow paging with --check --audit, as natively`, async () => {
      expect(await main(['run', '--workload', vxt, '--backend', backend, '--mmu', 'shadow', '--check', '--audit', '--json'])).toBe(0);
      const r = JSON.parse(out.join(''));
      expect(r.memoryDigest).toBe(native.memoryDigest);
      expect(r.guest.faults).toEqual(native.guest.faults);
      expect(r.check.ok).toBe(true);
      expect(r.counters.total.exits).toBeGreaterThan(r.guest.faults.total);
    }, 180_000); // ~8 s on an idle 2-core machine; --check --audit runs the workload twice and audits every exit
  }
});
