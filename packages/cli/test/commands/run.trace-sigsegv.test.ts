import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { encodeVxt, type VxtTrace } from '@vmexit/guest';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { captureStdio } from '../helpers/stdio.js';
import { main } from '../../src/program.js';

// A recording is of a run that completed: none of its accesses segfaulted. A replay that takes SIGSEGVs is one
// where the guest model's address space disagrees with the recording, and `run`, `compare` and `main` say so.

const { out, err } = captureStdio();
let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-trace-segv-'));
});

afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/**
 * A .vxt (written with the guest package's encoder) of one process (pid 1) that execs /bin/x, whose two text
 * pages are at 0x108000, and then loads from the pages `pages` (virtual page numbers), one record each.
 */
function writeTrace(name: string, pages: readonly number[]): string {
  const n = pages.length;
  const t: VxtTrace = {
    collapse: 'run',
    source: { tool: 'test', command: 'x' },
    accesses: { length: n, kind: new Uint8Array(n).fill(1), page: Float64Array.from(pages), count: new Uint32Array(n).fill(1) },
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
  const file = path.join(dir, name);
  fs.writeFileSync(file, encodeVxt(t));
  return file;
}

const warning = (file: string, records: number, sigsegv: number): string =>
  `vmexit: warning: the replay of trace '${file}' took SIGSEGVs (guest.trace.sigsegvRecords ${records}, guest.sigsegv ${sigsegv}): ` +
  'the recorded run completed without them, so the guest model disagrees with the recording (an access outside what the model ' +
  'mapped for the process) and those accesses were not replayed as recorded\n';

describe('a trace replay that takes SIGSEGVs', () => {
  it('run: warns on stderr, naming the counters and their counts; a clean trace gets no warning', async () => {
    // Records: 0x108 (the exe's first page: a file fault), 0x500 (0x500000: no area of the process covers it,
    // so the #PF handler finds no VMA and sends SIGSEGV, as Linux arch/x86/mm/fault.c do_user_addr_fault ->
    // bad_area_nosemaphore), 0x109 (the exe's second page). One record ended in SIGSEGV, one signal.
    const bad = writeTrace('bad.vxt', [0x108, 0x500, 0x109]);
    expect(await main(['run', '--workload', bad, '--backend', 'vmx', '--mmu', 'shadow', '--memory', '16M'])).toBe(0);
    expect(out.join('')).toMatch(/^SIGSEGVs +1$/m);
    expect(err.join('')).toBe(warning(bad, 1, 1));
    // --json prints the document only (its guest.trace.sigsegvRecords and guest.sigsegv carry the counts).
    out.length = 0;
    err.length = 0;
    expect(await main(['run', '--workload', bad, '--backend', 'vmx', '--mmu', 'shadow', '--memory', '16M', '--json'])).toBe(0);
    const r = JSON.parse(out.join(''));
    expect(r.guest.sigsegv).toBe(1);
    expect(r.guest.trace).toMatchObject({ records: 3, sigsegvRecords: 1 });
    expect(err.join('')).toBe('');
    // The same process without the stray record replays cleanly: no warning.
    out.length = 0;
    const good = writeTrace('good.vxt', [0x108, 0x109]);
    expect(await main(['run', '--workload', good, '--backend', 'vmx', '--mmu', 'shadow', '--memory', '16M'])).toBe(0);
    expect(out.join('')).toMatch(/^SIGSEGVs +0$/m);
    expect(err.join('')).toBe('');
  });

  it('run: warns natively too (the guest model is the same without a hypervisor)', async () => {
    const bad = writeTrace('bad.vxt', [0x500, 0x501, 0x108]);
    expect(await main(['run', '--workload', bad, '--backend', 'none', '--memory', '16M'])).toBe(0);
    // Two stray records, each its own SIGSEGV (the replay counts the record and goes on with the next one).
    expect(err.join('')).toBe(warning(bad, 2, 2));
  });

  it('compare: warns once for the workload, not once per variant', async () => {
    const bad = writeTrace('bad.vxt', [0x108, 0x500, 0x109]);
    expect(await main(['compare', '--workload', bad, '--variant', 'vmx shadow', '--variant', 'svm shadow unsync', '--memory', '16M'])).toBe(0);
    expect(err.join('')).toBe(warning(bad, 1, 1));
    err.length = 0;
    const good = writeTrace('good.vxt', [0x108, 0x109]);
    expect(await main(['compare', '--workload', good, '--variant', 'vmx shadow', '--variant', 'svm shadow', '--memory', '16M'])).toBe(0);
    expect(err.join('')).toBe('');
  });

  it('main: warns once for the workload of all its comparisons (text mode)', async () => {
    const bad = writeTrace('bad.vxt', [0x108, 0x500, 0x109]);
    expect(await main(['main', '--workload', bad])).toBe(0);
    // stderr also has main's progress lines ("[vmx 1/4] ..."); the warning comes once, after the tables.
    const lines = err.join('').split('\n');
    expect(lines.filter((l) => l.startsWith('vmexit: warning:'))).toEqual([warning(bad, 1, 1).trimEnd()]);
  }, 180_000);

  it('leaves synthetic workloads alone, even one that takes SIGSEGVs on purpose (mprotect-storm)', async () => {
    expect(await main(['run', '--workload', 'mprotect-storm', '--backend', 'vmx', '--mmu', 'shadow', '--memory', '16M'])).toBe(0);
    expect(out.join('')).toMatch(/^SIGSEGVs +[1-9][\d,]*$/m);
    expect(err.join('')).toBe('');
  });
});
