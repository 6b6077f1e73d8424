import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/program.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TINY = path.join(HERE, '..', '..', '..', 'guest', 'test', 'fixtures', 'tiny');
const tiny = ['tiny.100.1', 'tiny.101.1', 'tiny.101.2'].map((f) => path.join(TINY, f));

let dir: string;
let out: string[];
let err: string[];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-trace-'));
  out = [];
  err = [];
  vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => (out.push(String(s)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => (err.push(String(s)), true));
});

afterEach(() => {
  vi.restoreAllMocks();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('trace', () => {
  describe('import lackey', () => {
    it('writes a .vxt that trace info describes', async () => {
      const f = path.join(dir, 't.vxt');
      expect(await main(['trace', 'import', 'lackey', ...tiny, '-o', f])).toBe(0);
      // 14 records (see packages/guest/test/trace/lackey.test.ts), 17 accesses: pid 100 has 12 (the
      // page-crossing fetch counts on both pages), pid 101 has 5
      expect(out.join('')).toBe(`${f}: 2 processes, 14 records, 17 accesses, ${fs.statSync(f).size} bytes\n`);
      expect(fs.readdirSync(dir)).toEqual(['t.vxt']);
      out = [];
      expect(await main(['trace', 'info', f, '--json'])).toBe(0);
      const d = JSON.parse(out.join(''));
      expect(d.records).toBe(14);
      expect(d.accesses).toBe(17);
      expect(d.collapse).toBe('class');
      // fetches: 2 + 1 + 2 (the crossing one) + 2 in pid 100, 2 in pid 101; stores: 2 + 1 in pid 100, 2 in pid 101
      expect(d.accessesByKind).toEqual({ fetch: 9, load: 2, store: 5, modify: 1 });
      expect(d.events).toEqual({ mmap: 1, munmap: 1, mprotect: 1, brk: 2, fork: 1, vfork: 0, wait: 0, exec: 2, exit: 2 });
      expect(d.tree).toEqual(['100 /bin/sh: 12 accesses, 9 records', '  101 /bin/true: 5 accesses, 5 records']);
      out = [];
      expect(await main(['trace', 'info', f])).toBe(0);
      expect(out.join('')).toContain('records: 14  accesses: 17 (fetch 9, load 2, store 5, modify 1)');
    });

    // 32-bit guests running real programs: the stack of the recording (near 0x2000000000) is far
    // beyond a 32-bit user space, so pae and legacy32 replay it relocated (one process tree: 100 and its
    // fork child 101, six regions), 4- and 5-level as recorded; `run` says so in its JSON and passes --check.
    it('says how the trace replays in each paging mode, and replays it relocated on pae and legacy32 under --check --audit', async () => {
      const f = path.join(dir, 't.vxt');
      expect(await main(['trace', 'import', 'lackey', ...tiny, '-o', f])).toBe(0);
      out = [];
      expect(await main(['trace', 'info', f, '--json'])).toBe(0);
      const d = JSON.parse(out.join(''));
      expect(d.modes.map((m: { mode: string; replay: string }) => `${m.mode} ${m.replay}`)).toEqual([
        'legacy32 relocated',
        'pae relocated',
        'long4 as-recorded',
        'long5 as-recorded',
      ]);
      expect(d.modes[1].groups.map((g: { pids: number[]; regions: unknown[] }) => [g.pids, g.regions.length])).toEqual([[[100, 101], 6]]);
      out = [];
      expect(await main(['trace', 'info', f])).toBe(0);
      expect(out.join('')).toContain(
        'replay by paging mode (--mode):\n' +
          '  legacy32 (user space 3.0 GiB): relocated: 1 process tree, 6 regions moved down (page offsets, order and sizes kept; largest span 2031.0 MiB)\n' +
          '  pae      (user space 3.0 GiB): relocated: 1 process tree, 6 regions moved down (page offsets, order and sizes kept; largest span 2031.0 MiB)\n' +
          '  long4    (user space 128.0 TiB): as recorded\n',
      );
      // (32 MiB of guest RAM: the audit's cost is the boot's page tables, the trace itself is 17 accesses.)
      for (const mode of ['pae', 'legacy32']) {
        out = [];
        expect(
          await main(['run', '--workload', f, '--mode', mode, '--backend', 'vmx', '--mmu', 'shadow', '--memory', '32M', '--check', '--audit', '--json']),
        ).toBe(0);
        const r = JSON.parse(out.join(''));
        expect(r.check.divergence).toBeNull();
        expect(r.guest.trace.relocation.groups[0].pids).toEqual([100, 101]);
      }
    });

    it('exits 2 naming the log that is not a lackey log, and leaves no file', async () => {
      const bad = path.join(dir, 'notes.txt');
      fs.writeFileSync(bad, 'hello\n');
      const f = path.join(dir, 'x.vxt');
      expect(await main(['trace', 'import', 'lackey', bad, '-o', f])).toBe(2);
      expect(err.join('')).toBe(`vmexit: ${bad}: not a valgrind lackey log (its first line is not "==PID== Lackey, ...")\n`);
      expect(fs.readdirSync(dir)).toEqual(['notes.txt']);
    });

    it('exits 2 on an address or length a .vxt cannot hold, naming the log, its line and the value, and writes no file', async () => {
      const text = fs.readFileSync(tiny[0]!, 'latin1');
      for (const [from, to, msg] of [
        [
          ' L 1fff000740,8',
          ' L fffffffffffff000,8192',
          'line 13: an access of 8192 bytes at 0xfffffffffffff000: the address is not below 2^53 (0x20000000000000), the end of the addresses a .vxt trace holds: " L fffffffffffff000,8192"',
        ],
        [
          'sys_mmap ( 0x0, 8192, 5,',
          'sys_mmap ( 0x0, 99999999999999999999, 5,',
          'line 16: mmap of 99999999999999999999 bytes: the length is not below 2^53 (0x20000000000000), the most a .vxt trace holds',
        ],
      ]) {
        const log = path.join(dir, 'tiny.100.1');
        fs.writeFileSync(log, text.replace(from!, to!));
        const f = path.join(dir, 'x.vxt');
        err = [];
        expect(await main(['trace', 'import', 'lackey', log, tiny[1]!, tiny[2]!, '-o', f])).toBe(2);
        expect(err.join('')).toBe(`vmexit: ${log}: ${msg}\n`);
        expect(fs.readdirSync(dir)).toEqual(['tiny.100.1']);
      }
    });

    it.each(['', '0x5', '1e1', ' 5', '-1', '12', '5.5', 'abc'])('exits 2 on --quality=%j, before reading the logs', async (q) => {
      const f = path.join(dir, 'q.vxt');
      expect(await main(['trace', 'import', 'lackey', ...tiny, '-o', f, `--quality=${q}`])).toBe(2);
      expect(err.join('')).toBe(`vmexit: --quality: expected an integer 0..11, got ${JSON.stringify(q)}\n`);
      expect(fs.readdirSync(dir)).toEqual([]);
    });

    it('exits 2 when the output cannot be written, removing the temporary file', async () => {
      const f = path.join(dir, 'no-such-dir', 'x.vxt');
      expect(await main(['trace', 'import', 'lackey', ...tiny, '-o', f])).toBe(2);
      expect(err.join('')).toMatch(/-o: cannot write .*no-such-dir\/x\.vxt \(ENOENT\)/);
      expect(fs.readdirSync(dir)).toEqual([]);
    });
  });

  describe('info', () => {
    it('exits 2 on a truncated or corrupt trace, naming it', async () => {
      const f = path.join(dir, 't.vxt');
      expect(await main(['trace', 'import', 'lackey', ...tiny, '-o', f])).toBe(0);
      const bytes = fs.readFileSync(f);
      const cut = path.join(dir, 'cut.vxt');
      fs.writeFileSync(cut, bytes.subarray(0, bytes.length - 5));
      expect(await main(['trace', 'info', cut])).toBe(2);
      expect(err.join('')).toBe(`vmexit: ${cut}: truncated .vxt trace: ${bytes.length - 5} bytes, the header says ${bytes.length}\n`);
      err = [];
      const flip = path.join(dir, 'flip.vxt');
      const b = Buffer.from(bytes);
      b[b.length - 2]! ^= 1;
      fs.writeFileSync(flip, b);
      expect(await main(['trace', 'info', flip])).toBe(2);
      expect(err.join('')).toBe(`vmexit: ${flip}: corrupt .vxt trace: checksum mismatch\n`);
      err = [];
      expect(await main(['trace', 'info', path.join(dir, 'none.vxt')])).toBe(2);
      expect(err.join('')).toMatch(/none\.vxt: cannot read \(ENOENT\)/);
    });
  });
});
