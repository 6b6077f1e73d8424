import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { importLackey } from '../../src/trace/lackey.js';
import { TraceError } from '../../src/trace/errors.js';
import { describeVxt } from '../../src/trace/describe.js';
import { decodeVxt, encodeVxt } from '../../src/trace/vxt.js';
import type { VxtEvent, VxtTrace } from '../../src/trace/types.js';

const FIX = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures');
const tiny = ['tiny.100.1', 'tiny.101.1', 'tiny.101.2'].map((f) => path.join(FIX, 'tiny', f));

function records(t: VxtTrace): [number, number, number][] {
  const out: [number, number, number][] = [];
  for (let i = 0; i < t.accesses.length; i++) out.push([t.accesses.kind[i]!, t.accesses.page[i]!, t.accesses.count[i]!]);
  return out;
}

function tmpFile(name: string, text: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vxt-test-'));
  const f = path.join(dir, name);
  fs.writeFileSync(f, text);
  return f;
}

describe('importLackey', () => {
  describe('.records', () => {
    it("collapses runs, splits page-crossing accesses and orders a pid's logs by fork and exec", () => {
      const t = importLackey(tiny, { collapse: 'run' });
      expect(t.collapse).toBe('run');
      // pid 100: "I 0401ab70,3" and "I 0401ab73,5" are one run on page 0x401a (count 2); the two stores
      // to the stack page 0x1fff000 another; "I 04835ffe,4" crosses into page 0x4836 (two records);
      // every event breaks the run, so the two fetches of page 0x108 after the fork are a new record.
      // pid 101: its pre-exec log (tiny.101.2, which starts with the clone's return) comes first even
      // though valgrind numbered it 2, then the /bin/true image (tiny.101.1).
      expect(records(t)).toEqual([
        [0, 0x401a, 2],
        [2, 0x1fff000, 2],
        [0, 0x108, 1],
        [1, 0x1fff000, 1],
        [0, 0x4835, 1],
        [0, 0x4836, 1],
        [3, 0x410a, 1],
        [2, 0x4035, 1],
        [0, 0x108, 2],
        [1, 0x4035, 1],
        [2, 0x1ffeff0, 1],
        [0, 0x401a, 1],
        [2, 0x1fff000, 1],
        [0, 0x108, 1],
      ]);
      expect(t.source).toEqual({ tool: 'lackey', command: '/bin/sh -c true\\ x' });
      // every event breaks a record, so on this log the class collapse (the default) finds nothing more
      expect(records(importLackey(tiny))).toEqual(records(t));
    });

    it('joins fetches and same-kind data accesses across the other class in class mode', () => {
      const head = fs.readFileSync(tiny[0]!, 'latin1').split('\n').slice(0, 6).join('\n');
      const f = tmpFile(
        'cls.100.1',
        `${head}\nI  00001000,4\n L 00005000,8\nI  00001004,4\n L 00005008,8\n S 00005000,8\nI  00001008,2\n L 00005010,8\n==100== Exit code:       0\n`,
      );
      // fetches: 0x1 x3 (one record); data: L 0x5 x2, S 0x5, L 0x5 (the load after the store is a new
      // record: the last data record is the store). In run mode nothing joins across the other class.
      expect(records(importLackey([f]))).toEqual([
        [0, 1, 3],
        [1, 5, 2],
        [2, 5, 1],
        [1, 5, 1],
      ]);
      expect(records(importLackey([f], { collapse: 'run' }))).toEqual([
        [0, 1, 1],
        [1, 5, 1],
        [0, 1, 1],
        [1, 5, 1],
        [2, 5, 1],
        [0, 1, 1],
        [1, 5, 1],
      ]);
    });
  });

  describe('.processes', () => {
    it('rebuilds the tree and the events in program order', () => {
      const t = importLackey(tiny);
      expect(t.processes.map((p) => [p.pid, p.parent, p.recordStart, p.recordEnd])).toEqual([
        [100, 0, 0, 9],
        [101, 100, 9, 14],
      ]);
      const [sh, child] = t.processes;
      expect(sh!.events.map((e) => ({ ...e, ...(e.type === 'exec' ? { mappings: e.mappings.length } : {}) }))).toEqual([
        { type: 'exec', at: 0, pid: 100, path: '/bin/sh', mappings: 4 },
        { type: 'brk', at: 3, request: 0, result: 0x4035000 },
        // the fd came from the openat's async result; the failed mmap is not an event
        {
          type: 'mmap',
          at: 4,
          start: 0x4835000,
          length: 8192,
          prot: 5,
          flags: 2,
          offset: 4096,
          file: '/lib/libc.so.6',
        },
        { type: 'brk', at: 7, request: 0x4036000, result: 0x4036000 },
        { type: 'mprotect', at: 8, start: 0x4835000, length: 4096, prot: 1 },
        { type: 'fork', at: 8, parent: 100, child: 101 },
        { type: 'munmap', at: 9, start: 0x4835000, length: 8192 },
        { type: 'exit', at: 9, pid: 100, status: 0, signal: null },
      ]);
      // the failed execve of /bin/nope is ignored; the exec'd image comes from the last execve
      expect(child!.events.map((e) => [e.type, e.at, e.type === 'exec' ? e.path : e.type === 'exit' ? e.status : null])).toEqual([
        ['exec', 11, '/bin/true'],
        ['exit', 14, 3],
      ]);
    });

    it('infers the initial mappings from pages touched outside every mmap and brk', () => {
      const t = importLackey(tiny);
      const execs = t.processes.flatMap((p) => p.events.flatMap((e) => (e.type === 'exec' ? [e] : [])));
      // /bin/sh: page 0x108 (fetched: exe, r-x); 0x401a (fetched) and 0x410a (modified) in ld.so's
      // zone are two regions, because code and written data are never one region; the stack pages
      // 0x1ffeff0 (stored to by the fork child before its exec: it is the parent's image) and 0x1fff000
      // are one region (the stack zone is whole).
      // 0x4835/0x4836 are in the mmap and 0x4035 in the brk heap, so they are not initial mappings.
      expect(execs[0]!.mappings).toEqual([
        { start: 0x108000, length: 0x1000, prot: 5, role: 'exe', file: '/bin/sh' },
        { start: 0x401a000, length: 0x1000, prot: 5, role: 'interp', file: null },
        { start: 0x410a000, length: 0x1000, prot: 3, role: 'interp', file: null },
        { start: 0x1ffeff0000, length: 0x11000, prot: 3, role: 'stack', file: null },
      ]);
      expect(execs[1]!.mappings).toEqual([
        { start: 0x108000, length: 0x1000, prot: 5, role: 'exe', file: '/bin/true' },
        { start: 0x401a000, length: 0x1000, prot: 5, role: 'interp', file: null },
        { start: 0x1fff000000, length: 0x1000, prot: 3, role: 'stack', file: null },
      ]);
    });
  });

  describe('.errors', () => {
    it('rejects a file that is not a lackey log, naming it', () => {
      const f = tmpFile('notes.txt', 'hello\nworld\n');
      expect(() => importLackey([f])).toThrow(TraceError);
      expect(() => importLackey([f])).toThrow(`${f}: not a valgrind lackey log`);
    });

    it('rejects a log given twice, naming it (it said it could not tell which log follows it)', () => {
      // `vmexit trace import lackey logs/* logs/tiny.100.1`: the same file twice, once by another path.
      const again = path.relative(process.cwd(), tiny[0]!);
      expect(() => importLackey([...tiny, again])).toThrow(`${again}: the log is given twice (also as ${tiny[0]})`);
    });

    it('rejects a bad line with its line number', () => {
      const text = fs.readFileSync(tiny[0]!, 'latin1').replace(' L 1fff000740,8', ' L 1fff00zz40,8');
      const f = tmpFile('bad.100.1', text);
      expect(() => importLackey([f])).toThrow(/bad\.100\.1: line 13: not a lackey access line/);
    });

    it('rejects a syscall line whose arguments do not parse', () => {
      const text = fs.readFileSync(tiny[0]!, 'latin1').replace('sys_mmap ( 0x0, 8192, 5,', 'sys_mmap ( 0x0, ?, 5,');
      const f = tmpFile('mm.100.1', text);
      expect(() => importLackey([f])).toThrow(/mm\.100\.1: line 16: mmap syscall without a valid length/);
    });

    it('rejects a log cut short: at a line boundary before the footer, or after its header', () => {
      const text = fs.readFileSync(tiny[0]!, 'latin1');
      const lines = text.split('\n');
      // tiny.100.1 ends "==100== Exit code: 0"; cut 4 lines earlier, at a line boundary, it would replay a shorter program
      const cut = tmpFile('cut.100.1', `${lines.slice(0, lines.length - 5).join('\n')}\n`);
      expect(() => importLackey([cut])).toThrow(`${cut}: truncated lackey log: it ends without valgrind's "==100== Exit code:" footer`);
      const head = tmpFile('head.100.1', `${lines.slice(0, 6).join('\n')}\n`);
      expect(() => importLackey([head])).toThrow(`${head}: truncated lackey log`);
      // a fork child's stretch that ends in its execve has no footer and is complete (tiny.101.2)
      expect(() => importLackey(tiny)).not.toThrow();
    });

    it('refuses an access line of more bytes than one instruction can touch (it would expand without end)', () => {
      const text = fs.readFileSync(tiny[0]!, 'latin1').replace(' L 1fff000740,8', ' L 1fff000740,18446744073709551615');
      const f = tmpFile('huge.100.1', text);
      expect(() => importLackey([f])).toThrow(/huge\.100\.1: line 13: an access of 18446744073709552000 bytes, more than the 65536 bytes/);
    });

    it('refuses an address, length or end the .vxt reader would call corrupt (2^53 and up), naming the line and the value', () => {
      const text = fs.readFileSync(tiny[0]!, 'latin1');
      const imp = (name: string, from: string, to: string): (() => VxtTrace) => {
        const f = tmpFile(name, text.replace(from, to));
        return () => importLackey([f, tiny[1]!, tiny[2]!]);
      };
      const END = 'not below 2^53 (0x20000000000000), the end of the addresses a .vxt trace holds';
      expect(imp('a.100.1', ' L 1fff000740,8', ' L fffffffffffff000,8192')).toThrow(
        `a.100.1: line 13: an access of 8192 bytes at 0xfffffffffffff000: the address is ${END}: " L fffffffffffff000,8192"`,
      );
      expect(imp('b.100.1', ' L 1fff000740,8', ' L 1ffffffffffff8,16')).toThrow(
        'b.100.1: line 13: an access of 16 bytes at 0x1ffffffffffff8: it ends at 0x20000000000008, past 2^53 (0x20000000000000), the end of the addresses a .vxt trace holds: " L 1ffffffffffff8,16"',
      );
      expect(imp('c.100.1', 'sys_mmap ( 0x0, 8192, 5,', 'sys_mmap ( 0x0, 99999999999999999999, 5,')).toThrow(
        'c.100.1: line 16: mmap of 99999999999999999999 bytes: the length is not below 2^53 (0x20000000000000), the most a .vxt trace holds',
      );
      expect(imp('d.100.1', 'Success(0x4835000)', 'Success(0xfffffffffffff000)')).toThrow(
        `d.100.1: line 16: mmap at 0xfffffffffffff000: the address is ${END}`,
      );
      expect(imp('e.100.1', 'sys_munmap ( 0x4835000, 5000 )', 'sys_munmap ( 0x1ffffffffff000, 8192 )')).toThrow(
        'e.100.1: line 28: munmap of 8192 bytes at 0x1ffffffffff000: it ends at 0x20000000001000, past 2^53 (0x20000000000000), the end of the addresses a .vxt trace holds',
      );
      expect(imp('f.100.1', 'sys_mprotect ( 0x4835000,', 'sys_mprotect ( 0x4835001,')).toThrow(
        'f.100.1: line 22: mprotect at 0x4835001: the address is not a multiple of 4096 (a .vxt trace holds page-aligned ranges)',
      );
      expect(imp('g.100.1', 'Success(0x4036000)', 'Success(0x20000000000000)')).toThrow(`g.100.1: line 20: brk at 0x20000000000000: the address is ${END}`);
      // the last byte below 2^53 is still a trace the reader takes
      const t = imp('h.100.1', ' L 1fff000740,8', ' L 1ffffffffffff8,8')();
      expect(() => decodeVxt(encodeVxt(t, { quality: 1 }), 'h.vxt')).not.toThrow();
    });

    it('refuses a device or a directory instead of reading it without bound', () => {
      expect(() => importLackey(['/dev/zero'])).toThrow('/dev/zero: not a regular file (a device, FIFO or socket); a lackey log is a file');
      expect(() => importLackey([FIX])).toThrow(`${FIX}: not a regular file (a directory)`);
    });

    it('rejects logs of two recordings (two roots), an orphan fork child and a missing file', () => {
      const other = tmpFile('other.7.1', fs.readFileSync(tiny[1]!, 'latin1').replaceAll('==101==', '==7==').replace('Parent PID: 100', 'Parent PID: 6'));
      expect(() => importLackey([tiny[0]!, other])).toThrow(/the logs are not one recording: processes 100, 7 without a parent/);
      expect(() => importLackey([tiny[1]!, tiny[2]!])).toThrow(/pid 101: the root process starts as a fork child, its parent's log is missing/);
      expect(() => importLackey([path.join(FIX, 'nope.1')])).toThrow(/nope\.1: cannot open \(ENOENT\)/);
    });
  });

  describe('.forks', () => {
    const PIPE = path.join(FIX, 'pipeline');
    const CLONE = ' clone(fork): process 10309 created child 10322';
    /** A copy of the pipeline fixture in a temp dir, the parent's log (pipe.10309.1) edited by `edit`; minus `drop` logs. */
    function pipeline(edit: (text: string) => string, drop: RegExp | null = null): string[] {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vxt-pipe-'));
      dirs.push(dir);
      const out: string[] = [];
      for (const f of fs.readdirSync(PIPE).filter((x) => /^pipe\.\d+\.\d+$/.test(x))) {
        if (drop?.test(f)) continue;
        const text = fs.readFileSync(path.join(PIPE, f), 'latin1');
        const to = path.join(dir, f);
        fs.writeFileSync(to, f === 'pipe.10309.1' ? edit(text) : text, 'latin1');
        out.push(to);
      }
      return out.sort();
    }
    const dirs: string[] = [];
    afterAll(() => {
      for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
    });
    const original = importLackey(pipeline((t) => t));

    it('takes a child from the clone result (Success(0x2852)) when the "created child" text is missing', () => {
      // the fixture's clone line names the child, and its result line (next line) returns the same pid
      const text = fs.readFileSync(path.join(PIPE, 'pipe.10309.1'), 'latin1');
      expect(text).toContain(`${CLONE}\n --> [pre-success] Success(0x2852) `);
      const t = importLackey(pipeline((x) => x.replace(CLONE, '')));
      expect(t.processes.map((p) => [p.pid, p.parent])).toEqual(original.processes.map((p) => [p.pid, p.parent]));
      expect(t.processes).toEqual(original.processes);
      expect(records(t)).toEqual(records(original));
      expect(t.processes[0]!.events.filter((e) => e.type === 'fork').map((e) => (e.type === 'fork' ? e.child : 0))).toEqual([10321, 10322, 10323]);
    });

    it('rejects a child log whose parent shows no fork or clone that created it', () => {
      const logs = pipeline((x) => x.replace(CLONE, '').replace('Success(0x2852)', 'Failure(0xb)'));
      expect(() => importLackey(logs)).toThrow(TraceError);
      expect(() => importLackey(logs)).toThrow(/pipe\.10322\.\d.*: pid 10322 \(Parent PID: 10309\): no fork or clone in the logs of pid 10309 created it/);
    });

    it('rejects a clone whose text and result disagree, and a fork of a process whose logs are missing', () => {
      expect(() => importLackey(pipeline((x) => x.replace('Success(0x2852)', 'Success(0x2853)')))).toThrow(
        /pipe\.10309\.1: line \d+: the clone says it created child 10322 but returned 10323/,
      );
      expect(() => importLackey(pipeline((x) => x, /^pipe\.10323\./))).toThrow(
        /pipe\.10309\.1: pid 10309 created pid 10323, but no log of pid 10323 is among the inputs/,
      );
    });

    it('takes a wait event from a wait4 or waitid that reaped a child it forked, and from nothing else', () => {
      // In the fixture the shell's waits end without a result (interrupted by SIGCHLD) or fail (ECHILD): no wait
      // event. Added before its exit_group: a WNOHANG wait4 that found none (0), a WUNTRACED wait4 (the child may
      // only have stopped), a wait4 returning a pid the shell did not fork, a blocking waitid(P_PID, 10322,
      // ..., WEXITED) (valgrind: "sys_waitid( idtype, id, infop, options, rusage )"), and a plain wait4 that
      // returned 10323 (0x2853).
      expect(original.processes[0]!.events.filter((e) => e.type === 'wait')).toEqual([]);
      const waits = [
        'SYSCALL[10309,1](61) sys_wait4 ( 4294967295, 0x1fff00035c, 1, 0x0 ) --> [pre-success] Success(0x0) ',
        'SYSCALL[10309,1](61) sys_wait4 ( 4294967295, 0x1fff00035c, 2, 0x0 ) --> [async] ... ',
        'SYSCALL[10309,1](61) ... [async] --> Success(0x2851) ',
        'SYSCALL[10309,1](61) sys_wait4 ( 4294967295, 0x1fff00035c, 0, 0x0 ) --> [async] ... ',
        'SYSCALL[10309,1](61) ... [async] --> Success(0x9999) ',
        'SYSCALL[10309,1](247) sys_waitid( 1, 10322, 0x1fff000400, 4, 0x0 ) --> [async] ... ',
        'SYSCALL[10309,1](247) ... [async] --> Success(0x0) ',
        ' L 1fff000438,8',
        'SYSCALL[10309,1](61) sys_wait4 ( 4294967295, 0x1fff00035c, 0, 0x0 ) --> [async] ... ',
        'SYSCALL[10309,1](61) ... [async] --> Success(0x2853) ',
        '',
      ].join('\n');
      const t = importLackey(pipeline((x) => x.replace(/^SYSCALL\[10309,1\]\(231\) exit_group/m, `${waits}$&`)));
      const sh = t.processes[0]!;
      const w = sh.events.filter((e) => e.type === 'wait');
      expect(w.map((e) => (e.type === 'wait' ? e.child : 0))).toEqual([10322, 10323]);
      // in program order: the load between them comes after the first and before the second
      expect(w[1]!.at - w[0]!.at).toBe(1);
      expect(() => decodeVxt(encodeVxt(t), 'waits.vxt')).not.toThrow();
    });

    it('marks a vfork, and a clone with CLONE_VM and CLONE_VFORK, as a vfork event; a plain fork or clone not', () => {
      // The fixture's sh forks with clone(CLONE_CHILD_SETTID|CLONE_CHILD_CLEARTID|SIGCHLD = 0x1200011): no vfork.
      const forks = (t: VxtTrace): VxtEvent[] => t.processes[0]!.events.filter((e) => e.type === 'fork');
      expect(forks(original).map((e) => 'vfork' in e)).toEqual([false, false, false]);
      const LINE = `SYSCALL[10309,1](56) sys_clone ( 1200011, 0x0, 0x0, 0x4a27a10, 0x0 )  ${CLONE}`;
      expect(fs.readFileSync(path.join(PIPE, 'pipe.10309.1'), 'latin1')).toContain(`${LINE}\n --> [pre-success] Success(0x2852) `);
      const edited = (line: string): VxtEvent[] => forks(importLackey(pipeline((x) => x.replace(LINE, line))));
      // vfork(): valgrind 3.19 logs syscall 58 as sys_fork, with the child on the line (as the kbuild recording shows)
      expect(edited('SYSCALL[10309,1](58) sys_fork ( )   fork: process 10309 created child 10322')[1]).toEqual({
        type: 'fork',
        at: forks(original)[1]!.at,
        parent: 10309,
        child: 10322,
        vfork: true,
      });
      // glibc's posix_spawn: clone(CLONE_VM|CLONE_VFORK|SIGCHLD = 0x4111, stack, ...), the child from the line or, without
      // the text, from the result (Success(0x2852) on the next line)
      const spawn = 'SYSCALL[10309,1](56) sys_clone ( 4111, 0x4b2c000, 0x0, 0x0, 0x0 )';
      expect(edited(`${spawn}  ${CLONE}`).map((e) => (e.type === 'fork' ? e.vfork === true : null))).toEqual([false, true, false]);
      expect(edited(spawn).map((e) => (e.type === 'fork' ? e.vfork === true : null))).toEqual([false, true, false]);
      // CLONE_VFORK without CLONE_VM (0x4011) is no vfork (valgrind refuses it: "Unsupported clone() flags")
      expect(edited('SYSCALL[10309,1](56) sys_clone ( 4011, 0x0, 0x0, 0x0, 0x0 )').map((e) => 'vfork' in e)).toEqual([false, false, false]);
    });

    it('ignores a clone with CLONE_THREAD (a thread, not a process)', () => {
      // a clone of the shell with CLONE_VM|CLONE_THREAD|... (0x3d0f00, as pthread_create passes) returning a tid
      const thread = 'SYSCALL[10309,1](56) sys_clone ( 3d0f00, 0x5000000, 0x5000010, 0x5000020, 0x5000030 )\n --> [pre-success] Success(0x2900) \n';
      const t = importLackey(pipeline((x) => x.replace(/^SYSCALL\[10309,1\]\(3\) sys_close \( 5 \)/m, `${thread}$&`)));
      expect(t.processes.map((p) => p.pid)).toEqual(original.processes.map((p) => p.pid));
      expect(t.processes[0]!.events.filter((e) => e.type === 'fork')).toHaveLength(3);
    });
  });

  describe('.pipeline', () => {
    it('imports a recorded shell pipeline: sh and its three children', () => {
      // record-pipeline.sh: `sh -c 'ls /usr/bin | sort | head -3'` under lackey, access lines thinned
      // (every 1000th kept) to keep the fixture small; all headers and syscall lines are kept.
      const dir = path.join(FIX, 'pipeline');
      const logs = fs
        .readdirSync(dir)
        .filter((f) => /^pipe\.\d+\.\d+$/.test(f))
        .map((f) => path.join(dir, f));
      const t = importLackey(logs);
      const d = describeVxt(t);
      expect(d.processes.length).toBe(4);
      const [root, ...kids] = d.processes;
      expect(root!.parent).toBe(0);
      expect(kids.every((k) => k.parent === root!.pid)).toBe(true);
      expect(root!.images).toEqual(['sh']);
      expect(kids.map((k) => k.images[0])).toEqual(['/usr/bin/ls', '/usr/bin/sort', '/usr/bin/head']);
      expect(d.events.fork).toBe(3);
      expect(d.events.exec).toBe(4);
      expect(d.events.exit).toBe(4);
      // every process made the same 3 libc-loading mmaps at least
      expect(d.events.mmap).toBeGreaterThanOrEqual(4 * 3);
      // sort died of SIGPIPE when head exited (pipe.10322.1: "Process terminating with default action of
      // signal 13 (SIGPIPE)"): killed by signal 13, so no exit status, although valgrind's footer still says
      // "Exit code: 0". sh, ls and head exited with status 0.
      expect(d.processes.map((p) => [p.pid, p.signal, p.status])).toEqual([
        [10309, null, 0],
        [10321, null, 0],
        [10322, 13, null],
        [10323, null, 0],
      ]);
      // round trip through the file format
      expect(describeVxt(decodeVxt(encodeVxt(t), 'pipeline.vxt'))).toEqual(d);
    });
  });
});
