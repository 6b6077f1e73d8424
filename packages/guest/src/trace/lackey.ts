import * as fs from 'node:fs';
import * as path from 'node:path';
import { AccessBuilder } from './builder.js';
import { TraceError } from './errors.js';
import { inferInitialMappings } from './infer.js';
import { unmodelledMmapFlag, unmodelledSyscall } from './unmodelled.js';
import type { VxtCollapse, VxtEvent, VxtProcess, VxtTrace } from './types.js';
import { KIND_FETCH, KIND_LOAD, KIND_MODIFY, KIND_STORE, MAP_ANONYMOUS } from './types.js';

/** Options of `importLackey`. */
export interface ImportLackeyOptions {
  /** How accesses collapse into records (default `class`; `run` keeps the exact interleaving). */
  readonly collapse?: VxtCollapse;
}

/**
 * Imports the per-process logs of one recording made with
 *
 * ```
 * valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes --trace-children=yes --log-file=PREFIX.%p.%n CMD
 * ```
 *
 * (x86-64 Linux; the line format is that of valgrind's lackey/lk_main.c: `I  addr,size` for a fetch, ` L`, ` S`
 * and ` M` for a load, store and modify, addresses in hex without `0x`; `SYSCALL[pid,tid](nr)` lines from
 * `--trace-syscalls=yes` in the same stream, in program order). Each log is one pid's stretch between execs: a fork
 * child's log begins with the clone's return (` --> ... Success(0x0)`) and ends with `sys_execve`, and the
 * exec'd image writes a new log under the same pid whose `Command:` is the exec'd program (valgrind's `%n`
 * numbering does not give their order, so it is rebuilt from those two facts). The process tree comes from
 * the `Parent PID:` headers and the parents' `created child N` lines. Logs are read in chunks, never whole.
 *
 * Every access becomes one access per 4 KiB page it touches; accesses collapse into records as
 * `options.collapse` says (types.ts, `VxtCollapse`), never across an event. Events: successful mmap, munmap,
 * mprotect, brk, fork (clone/fork/vfork), wait (a wait4/waitid that reaped a child), exec and exit. The initial
 * mappings of each image (what valgrind's loader mapped) are inferred afterwards (infer.ts). A successful
 * syscall that changes the address space in a way no event holds (mremap, madvise(MADV_DONTNEED), mmap with
 * MAP_POPULATE, ...: unmodelled.ts) is refused with a TraceError `unsupported` naming the log and the line.
 */
export function importLackey(logPaths: readonly string[], options: ImportLackeyOptions = {}): VxtTrace {
  if (logPaths.length === 0) throw new TraceError('io', '(no logs)', 'no lackey logs given');
  // The same file twice (by two paths: a glob and a name) is one process's log twice, and no order of the
  // logs makes sense: say so, rather than that the log after it cannot be told.
  const seen = new Map<string, string>();
  for (const f of logPaths) {
    let st: fs.Stats;
    try {
      st = fs.statSync(f);
    } catch {
      continue; // scanLog says why it cannot read it
    }
    const id = `${st.dev}:${st.ino}`;
    const first = seen.get(id);
    if (first !== undefined) throw new TraceError('inconsistent', f, `the log is given twice (also as ${first})`);
    seen.set(id, f);
  }
  const logs = logPaths.map((f, i) => scanLog(f, i));
  const byPid = new Map<number, LogInfo[]>();
  for (const l of logs) {
    const list = byPid.get(l.pid) ?? [];
    list.push(l);
    byPid.set(l.pid, list);
  }
  const roots = [...byPid.keys()].filter((pid) => !byPid.has(byPid.get(pid)![0]!.parent));
  if (roots.length !== 1) {
    throw new TraceError(
      'inconsistent',
      logPaths.join(', '),
      `the logs are not one recording: ${roots.length === 0 ? 'no process' : `processes ${roots.join(', ')}`} without a parent among them (expected exactly one root)`,
    );
  }
  const chains = new Map<number, LogInfo[]>();
  for (const [pid, list] of byPid) chains.set(pid, orderLogs(pid, list, pid === roots[0]));

  // parents before children: breadth first from the root, children by pid
  const order: number[] = [roots[0]!];
  for (let i = 0; i < order.length; i++) {
    const kids = [...byPid.keys()].filter((c) => c !== order[i] && byPid.get(c)![0]!.parent === order[i]).sort((a, b) => a - b);
    order.push(...kids);
  }
  if (order.length !== byPid.size) {
    const lost = [...byPid.keys()].filter((p) => !order.includes(p));
    throw new TraceError(
      'inconsistent',
      lost.flatMap((p) => byPid.get(p)!.map((l) => l.file)).join(', '),
      `pids ${lost.join(', ')}: their Parent PID headers form a cycle, not a tree under the root ${roots[0]}`,
    );
  }

  const builder = new AccessBuilder(options.collapse ?? 'class', 1 << 20);
  const fdsAtFork = new Map<number, Map<number, string>>();
  const forks = new Map<number, number>();
  const processes: VxtProcess[] = [];
  for (const pid of order) {
    const chain = chains.get(pid)!;
    const parent = pid === roots[0] ? 0 : chain[0]!.parent;
    const state = new ProcessState(pid, builder, fdsAtFork.get(pid) ?? new Map(), fdsAtFork, forks);
    const recordStart = builder.length;
    for (const [i, log] of chain.entries()) {
      if (i > 0 || !log.forkChild) {
        state.event({
          type: 'exec',
          at: builder.length,
          pid,
          path: state.pendingExec ?? log.program,
          mappings: [],
        });
      }
      state.pendingExec = null;
      parseLog(log, state);
    }
    const last = chain[chain.length - 1]!;
    state.event({
      type: 'exit',
      at: builder.length,
      pid,
      status: last.signal !== null ? null : (state.exitStatus ?? last.exitCode),
      signal: last.signal,
    });
    processes.push({ pid, parent, recordStart, recordEnd: builder.length, events: state.events });
  }
  // Every child is started by a fork event in its parent (the replay starts it there): one whose parent's
  // logs show no fork or clone that created it would be dropped, so it is an error; and so is a fork of a
  // process whose logs are missing.
  for (const p of processes) {
    if (p.parent === 0) continue;
    const by = forks.get(p.pid);
    if (by !== p.parent) {
      throw new TraceError(
        'inconsistent',
        chains
          .get(p.pid)!
          .map((l) => l.file)
          .join(', '),
        `pid ${p.pid} (Parent PID: ${p.parent}): ${by === undefined ? `no fork or clone in the logs of pid ${p.parent} created it (no "created child ${p.pid}" line, no clone that returned ${p.pid})` : `pid ${by} created it, not its parent`}`,
      );
    }
  }
  for (const [child, by] of forks) {
    if (!byPid.has(child)) {
      throw new TraceError(
        'inconsistent',
        chains
          .get(by)!
          .map((l) => l.file)
          .join(', '),
        `pid ${by} created pid ${child}, but no log of pid ${child} is among the inputs`,
      );
    }
  }
  const root = chains.get(roots[0]!)![0]!;
  const trace: VxtTrace = {
    collapse: builder.collapse,
    source: { tool: 'lackey', command: root.command },
    accesses: builder.finish(),
    processes,
  };
  inferInitialMappings(trace);
  return trace;
}

/** What the header and tail of a log say (read before the body is parsed). */
interface LogInfo {
  readonly file: string;
  readonly pid: number;
  readonly parent: number;
  /** valgrind's `Command:` line as written (spaces in words escaped with `\`). */
  readonly command: string;
  /** The first word of the command, unescaped. */
  readonly program: string;
  /** The log begins with the return of the clone that made the process (a fork child before exec). */
  readonly forkChild: boolean;
  /** The path of the last `sys_execve` in the log, if it is the log's last syscall line. */
  readonly execPath: string | null;
  /** valgrind's `Exit code:` footer, if any. */
  readonly exitCode: number | null;
  /** "terminating with default action of signal N", if any. */
  readonly signal: number | null;
  /** Index of this log among the inputs (the order among equals). */
  readonly index: number;
}

const HEAD_BYTES = 64 * 1024;
const TAIL_BYTES = 256 * 1024;

function readRange(file: string, fd: number, pos: number, len: number): string {
  const buf = Buffer.alloc(len);
  let got = 0;
  try {
    while (got < len) {
      const k = fs.readSync(fd, buf, got, len - got, pos + got);
      if (k === 0) break;
      got += k;
    }
  } catch (e) {
    throw new TraceError('io', file, `cannot read (${(e as Error).message})`);
  }
  return buf.toString('latin1', 0, got);
}

function scanLog(file: string, index: number): LogInfo {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new TraceError('io', file, `cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    const st = fs.fstatSync(fd);
    // Size-checked before it is read: a device such as /dev/zero, a FIFO or a directory has no size to
    // check and may never end; a lackey log is a regular file (a symbolic link is followed to what it names).
    if (!st.isFile()) {
      throw new TraceError('io', file, `not a regular file (${st.isDirectory() ? 'a directory' : 'a device, FIFO or socket'}); a lackey log is a file`);
    }
    const size = st.size;
    const head = readRange(file, fd, 0, Math.min(size, HEAD_BYTES));
    const tail = size > HEAD_BYTES ? readRange(file, fd, Math.max(HEAD_BYTES, size - TAIL_BYTES), size - Math.max(HEAD_BYTES, size - TAIL_BYTES)) : head;
    const lines = head.split('\n');
    const m0 = /^==(\d+)== .*Lackey/.exec(lines[0] ?? '');
    if (!m0) throw new TraceError('not-lackey', file, 'not a valgrind lackey log (its first line is not "==PID== Lackey, ...")');
    const pid = Number(m0[1]);
    let command: string | null = null;
    let parent: number | null = null;
    let i = 1;
    for (; i < lines.length && lines[i]!.startsWith('=='); i++) {
      const c = /^==\d+== Command: (.*)$/.exec(lines[i]!);
      if (c) command = c[1]!;
      const p = /^==\d+== Parent PID: (\d+)/.exec(lines[i]!);
      if (p) parent = Number(p[1]);
    }
    if (command === null || parent === null) {
      throw new TraceError('not-lackey', file, 'lackey log without the "Command:" and "Parent PID:" header lines');
    }
    const forkChild = (lines[i] ?? '').startsWith(' --> ');
    let execPath: string | null = null;
    const tailLines = tail.split('\n');
    for (let k = tailLines.length - 1; k >= 0; k--) {
      const t = tailLines[k]!;
      if (!t.startsWith('SYSCALL[')) continue;
      const e = /^SYSCALL\[\d+,\d+\]\(59\) sys_execve \( 0x[0-9a-f]+\(([^)]*)\)/.exec(t);
      if (e && !/Failure\(/.test(t)) execPath = e[1]!;
      break;
    }
    const x = /^==\d+== Exit code:\s+(\d+)/m.exec(tail);
    const s = /^==\d+== Process terminating with default action of signal (\d+)/m.exec(tail);
    // A log valgrind finished ends with the "Exit code:" footer, the signal that killed the process, or (a
    // stretch before an exec) a successful execve; anything else was cut short, and importing it would
    // replay a shorter program than the one recorded.
    if (x === null && s === null && execPath === null) {
      throw new TraceError(
        'truncated',
        file,
        `truncated lackey log: it ends without valgrind's "==${pid}== Exit code:" footer (nor a fatal signal, nor an execve); the recording was cut short`,
      );
    }
    return {
      file,
      pid,
      parent,
      command,
      program: firstWord(command),
      forkChild,
      execPath,
      exitCode: x ? Number(x[1]) : null,
      signal: s ? Number(s[1]) : null,
      index,
    };
  } finally {
    fs.closeSync(fd);
  }
}

/** The first word of valgrind's `Command:` (words are separated by spaces; a `\` escapes the next character). */
function firstWord(command: string): string {
  let out = '';
  for (let i = 0; i < command.length; i++) {
    const c = command[i]!;
    if (c === '\\' && i + 1 < command.length) out += command[++i];
    else if (c === ' ') break;
    else out += c;
  }
  return out;
}

/** Orders one pid's logs: the fork child's pre-exec log first, then each exec'd image after the log that exec'd it. */
function orderLogs(pid: number, logs: LogInfo[], isRoot: boolean): LogInfo[] {
  const names = logs.map((l) => path.basename(l.file)).join(', ');
  const bad = (why: string): TraceError => new TraceError('inconsistent', logs.map((l) => l.file).join(', '), `pid ${pid}: ${why} (logs ${names})`);
  const rest = [...logs].sort((a, b) => a.index - b.index);
  const forkLogs = rest.filter((l) => l.forkChild);
  if (forkLogs.length > 1) throw bad('more than one log starts as a fork child');
  if (isRoot && forkLogs.length === 1) throw bad("the root process starts as a fork child, its parent's log is missing");
  let first: LogInfo;
  if (forkLogs.length === 1) first = forkLogs[0]!;
  else {
    // no pre-exec part (it was not recorded): the image that no other log of this pid exec'd
    const execd = new Set(rest.map((l) => l.execPath).filter((p): p is string => p !== null));
    const cands = rest.filter((l) => !execd.has(l.program));
    first = cands[0] ?? rest[0]!;
  }
  const chain = [first];
  rest.splice(rest.indexOf(first), 1);
  while (rest.length > 0) {
    const cur = chain[chain.length - 1]!;
    let next = cur.execPath === null ? undefined : rest.find((l) => l.program === cur.execPath);
    if (next === undefined && rest.length === 1 && cur.execPath !== null) next = rest[0];
    if (next === undefined)
      throw bad(`cannot tell which log follows ${path.basename(cur.file)}${cur.execPath ? ` (which execs ${cur.execPath})` : ' (it ends without an exec)'}`);
    chain.push(next);
    rest.splice(rest.indexOf(next), 1);
  }
  return chain;
}

/** The parser's per-process state (one pid across its logs). */
class ProcessState {
  readonly events: VxtEvent[] = [];
  pendingExec: string | null = null;
  exitStatus: number | null = null;
  /** The syscall line waiting for its result on the next line (` --> ...`). */
  pending: { nr: number; text: string } | null = null;
  /** Syscalls waiting for their `... [async] -->` result line, by number. */
  readonly async = new Map<number, string>();
  /** The log being parsed and the line of the syscall being finished (for errors). */
  file = '';
  where = '';

  constructor(
    readonly pid: number,
    readonly builder: AccessBuilder,
    readonly fds: Map<number, string>,
    readonly fdsAtFork: Map<number, Map<number, string>>,
    /** child pid -> the pid that forked it, over all processes of the recording */
    readonly forks: Map<number, number>,
  ) {}

  /**
   * A fork/clone of this process created process `child`: a fork event here (with `vfork` for a vfork, see
   * `isVfork`), the fds copied to the child.
   */
  fork(child: number, vfork: boolean): void {
    const by = this.forks.get(child);
    if (by !== undefined) {
      throw new TraceError('inconsistent', this.file, `${this.where}: pid ${this.pid} creates pid ${child}, which pid ${by} created already`);
    }
    this.forks.set(child, this.pid);
    this.event(
      vfork
        ? { type: 'fork', at: this.builder.length, parent: this.pid, child, vfork: true }
        : { type: 'fork', at: this.builder.length, parent: this.pid, child },
    );
    this.fdsAtFork.set(child, new Map(this.fds));
  }

  /**
   * A wait of this process returned child `child`: a wait event, when the child is one this process forked (a
   * child it did not fork, or that the logs do not show, is not waited for in the replay).
   */
  waited(child: number): void {
    if (this.forks.get(child) === this.pid) this.event({ type: 'wait', at: this.builder.length, child });
  }

  event(e: VxtEvent): void {
    for (const [k, v] of Object.entries(e)) {
      if (typeof v === 'number' && !Number.isFinite(v)) {
        throw new TraceError('bad-line', this.file, `${this.where}: ${e.type} syscall without a valid ${k}`);
      }
    }
    this.events.push(e);
    this.builder.breakRun();
  }
}

const PAGE = 4096;

/**
 * The largest access one lackey line may describe. An instruction fetch is at most 15 bytes (SDM Vol. 2A
 * §2.3.11), a vector load or store at most 64 (AVX-512), and the largest, XSAVE/XRSTOR with AMX tile data,
 * about 11 KiB (SDM Vol. 1 §13.4). 64 KiB leaves room; a larger size is a corrupt line, which would otherwise
 * expand into one record per page (4 GiB: a million pages; 2^64: never ends).
 */
const MAX_ACCESS_BYTES = 65536;

/**
 * The end of the addresses a .vxt trace holds. Its reader (vxt.ts, `rangeProblem` and the brk check) takes
 * the start and the length of every mmap, munmap and mprotect, and a brk's request and result, only as whole
 * numbers below 2^53, a range's start page aligned and an mmap's length not 0; the initial mappings inferred
 * from the accesses (infer.ts) are such ranges too, so every access must end at or below 2^53 as well. The
 * importer refuses what the reader would call corrupt (x86-64 user space ends at 2^47, or 2^56 with 5-level
 * paging; nothing valgrind records comes near).
 */
const VXT_ADDRESS_END = 2 ** 53;
const PAST_END = 'not below 2^53 (0x20000000000000), the end of the addresses a .vxt trace holds';
/** The words for a range that starts below VXT_ADDRESS_END but ends past it. */
const endsPast = (end: bigint): string => `it ends at 0x${end.toString(16)}, past 2^53 (0x20000000000000), the end of the addresses a .vxt trace holds`;

/** Parses one log's body into `st` (streaming, in 4 MiB chunks). */
function parseLog(log: LogInfo, st: ProcessState): void {
  const file = log.file;
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new TraceError('io', file, `cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const b = st.builder;
  st.file = file;
  st.async.clear();
  const CHUNK = 4 << 20;
  let buf = Buffer.allocUnsafe(CHUNK + 4096);
  let have = 0;
  let lineNo = 0;
  let eof = false;
  try {
    while (!eof) {
      if (have === buf.length) {
        // a line longer than the buffer: only possible for a non-lackey file
        const bigger = Buffer.allocUnsafe(buf.length * 2);
        buf.copy(bigger, 0, 0, have);
        buf = bigger;
      }
      const k = fs.readSync(fd, buf, have, buf.length - have, null);
      if (k === 0) {
        eof = true;
        if (have === 0) break;
        buf[have++] = 10; // a last line without a newline
      } else have += k;
      let s = 0;
      for (;;) {
        const e = buf.indexOf(10, s);
        if (e < 0 || e >= have) break;
        lineNo++;
        const c0 = buf[s];
        // access lines: "I  addr,size" / " L addr,size" / " S ..." / " M ..."
        let kind = -1;
        if (c0 === 0x49 /* I */ && buf[s + 1] === 0x20 && buf[s + 2] === 0x20) kind = KIND_FETCH;
        else if (c0 === 0x20 && buf[s + 2] === 0x20) {
          const c1 = buf[s + 1];
          kind = c1 === 0x4c ? KIND_LOAD : c1 === 0x53 ? KIND_STORE : c1 === 0x4d ? KIND_MODIFY : -1;
        }
        if (kind >= 0) {
          let p = s + 3;
          let a = 0;
          let digits = 0;
          for (;;) {
            const c = buf[p]!;
            let d: number;
            if (c >= 0x30 && c <= 0x39) d = c - 0x30;
            else if (c >= 0x61 && c <= 0x66) d = c - 0x57;
            else if (c >= 0x41 && c <= 0x46) d = c - 0x37;
            else break;
            a = a * 16 + d;
            digits++;
            p++;
          }
          let size = 0;
          let sdigits = 0;
          if (buf[p] === 0x2c) {
            for (p++; ; p++) {
              const c = buf[p]!;
              if (c < 0x30 || c > 0x39) break;
              size = size * 10 + (c - 0x30);
              sdigits++;
            }
          }
          if (digits === 0 || digits > 16 || sdigits === 0 || (p !== e && !(p === e - 1 && buf[p] === 13))) {
            throw new TraceError(
              'bad-line',
              file,
              `line ${lineNo}: not a lackey access line: ${JSON.stringify(buf.toString('latin1', s, Math.min(e, s + 80)))}`,
            );
          }
          if (size > MAX_ACCESS_BYTES) {
            throw new TraceError(
              'bad-line',
              file,
              `line ${lineNo}: an access of ${size} bytes, more than the ${MAX_ACCESS_BYTES} bytes one instruction can touch: ${JSON.stringify(buf.toString('latin1', s, Math.min(e, s + 80)))}`,
            );
          }
          if (a + Math.max(size, 1) > VXT_ADDRESS_END) {
            const at = `0x${buf.toString('latin1', s + 3, s + 3 + digits).toLowerCase()}`;
            const end = BigInt(at) + BigInt(size);
            throw new TraceError(
              'bad-line',
              file,
              `line ${lineNo}: an access of ${size} bytes at ${at}: ${a >= VXT_ADDRESS_END ? `the address is ${PAST_END}` : endsPast(end)}: ${JSON.stringify(buf.toString('latin1', s, Math.min(e, s + 80)))}`,
            );
          }
          const first = Math.floor(a / PAGE);
          const last = size > 0 ? Math.floor((a + size - 1) / PAGE) : first;
          b.add(kind, first);
          for (let pg = first + 1; pg <= last; pg++) b.add(kind, pg);
        } else {
          otherLine(buf.toString('latin1', s, e), st, file, lineNo);
        }
        s = e + 1;
      }
      // keep the partial line for the next read
      buf.copy(buf, 0, s, have);
      have -= s;
    }
  } catch (e) {
    if (e instanceof TraceError) throw e;
    throw new TraceError('io', file, `cannot read (${(e as Error).message})`);
  } finally {
    fs.closeSync(fd);
  }
  if (st.pending) finishSyscall(st, st.pending.nr, st.pending.text, null);
  st.pending = null;
}

/** Header/footer (`==pid==`), valgrind messages (`--pid--`), syscall lines, blank lines; anything else is an error. */
function otherLine(line: string, st: ProcessState, file: string, lineNo: number): void {
  if (line.startsWith('SYSCALL[')) {
    const m = /^SYSCALL\[(\d+),(\d+)\]\((\d+)\) (.*)$/.exec(line);
    if (!m) throw new TraceError('bad-line', file, `line ${lineNo}: malformed syscall line: ${JSON.stringify(line.slice(0, 80))}`);
    const nr = Number(m[3]);
    const text = m[4]!;
    st.where = `line ${lineNo}`;
    if (text.startsWith('... [async] -->')) {
      // the result of an earlier "--> [async] ..." call of the same syscall (a signal handler's
      // syscalls may come in between)
      const prev = st.async.get(nr);
      st.async.delete(nr);
      if (prev !== undefined) finishSyscall(st, nr, prev, result(text));
      return;
    }
    if (st.pending) finishSyscall(st, st.pending.nr, st.pending.text, null);
    st.pending = null;
    const r = result(text);
    if (/--> \[async\] \.\.\.\s*$/.test(text)) st.async.set(nr, text);
    else if (r === null && !/NoWriteResult/.test(text)) st.pending = { nr, text };
    else finishSyscall(st, nr, text, r);
    // a fork is known from the parent's line itself ("clone(fork): process P created child C"), or else
    // from the clone's result (finishSyscall)
    const c = createdChild(text);
    if (c !== null) st.fork(c, isVfork(nr, text));
    return;
  }
  if (line.startsWith(' --> ')) {
    st.where = `line ${lineNo}`;
    const p = st.pending;
    st.pending = null;
    if (p) finishSyscall(st, p.nr, p.text, result(line));
    return;
  }
  if (line.startsWith('==') || line.startsWith('--') || line.trim() === '') return;
  throw new TraceError('bad-line', file, `line ${lineNo}: not a lackey log line: ${JSON.stringify(line.slice(0, 80))}`);
}

/** A syscall's result: its value (`-errno` for a failure) and, as the log writes it, the hex of a success (`0x4835000`). */
interface SyscallResult {
  readonly value: number;
  readonly hex: string;
}

/** `Success(0x..)` → its value, `Failure(0x..)` → `-errno`, anything else null. */
function result(text: string): SyscallResult | null {
  const m = /(Success|Failure)\(0x([0-9a-f]+)\)\s*(?:==\d+==\s*)?$/.exec(text) ?? /(Success|Failure)\(0x([0-9a-f]+)\)/.exec(text);
  if (!m) return null;
  const v = parseInt(m[2]!, 16);
  return { value: m[1] === 'Success' ? v : -Math.max(v, 1), hex: `0x${m[2]!}` };
}

/** The arguments between the first "(" after the name and its ")" ("0x4(/path)" keeps its path). */
function args(text: string): string[] {
  const open = text.indexOf('(');
  if (open < 0) return [];
  let depth = 0;
  let cur = '';
  const out: string[] = [];
  for (let i = open + 1; i < text.length; i++) {
    const c = text[i]!;
    if (c === '(') depth++;
    if (c === ')') {
      if (depth === 0) break;
      depth--;
    }
    if (c === ',' && depth === 0) {
      out.push(cur.trim());
      cur = '';
    } else cur += c;
  }
  if (cur.trim() !== '') out.push(cur.trim());
  return out;
}

function num(a: string | undefined): number {
  const t = numText(a);
  return t === null ? NaN : Number(t);
}

/** The number at the start of an argument as the log writes it (`0x4835000`, `8192`), or null. */
function numText(a: string | undefined): string | null {
  const m = a === undefined ? null : /^(0x[0-9a-f]+|\d+)/.exec(a);
  return m ? m[1]! : null;
}

/**
 * What is wrong with the range `[start, start + pageUp(length))` of a successful mmap, munmap or mprotect for a
 * .vxt trace (VXT_ADDRESS_END), or null; `startText` and `lengthText` are the values as the log writes them.
 * A value that is not a number at all is left to ProcessState.event ("without a valid ...").
 */
function rangeProblem(call: string, start: number, startText: string, length: number, lengthText: string, emptyOk: boolean): string | null {
  if (!Number.isFinite(start) || !Number.isFinite(length)) return null;
  if (start >= VXT_ADDRESS_END) return `${call} at ${startText}: the address is ${PAST_END}`;
  if (length >= VXT_ADDRESS_END) return `${call} of ${lengthText} bytes: the length is not below 2^53 (0x20000000000000), the most a .vxt trace holds`;
  const end = BigInt(start) + BigInt(length);
  if (end > BigInt(VXT_ADDRESS_END)) return `${call} of ${lengthText} bytes at ${startText}: ${endsPast(end)}`;
  if (start % PAGE !== 0) return `${call} at ${startText}: the address is not a multiple of 4096 (a .vxt trace holds page-aligned ranges)`;
  if (length === 0 && !emptyOk) return `${call} of ${lengthText} bytes: a .vxt trace holds no empty mapping`;
  return null;
}

function pathArg(a: string | undefined): string | null {
  const m = a === undefined ? null : /\((.*)\)$/.exec(a);
  return m ? m[1]! : null;
}

const pageUp = (n: number): number => Math.ceil(n / PAGE) * PAGE;

/** `CLONE_VM`, `CLONE_VFORK` and `CLONE_THREAD`, include/uapi/linux/sched.h. */
const CLONE_VM = 0x100;
const CLONE_VFORK = 0x4000;
const CLONE_THREAD = 0x10000;

/**
 * Whether the syscall `nr` (its log text `text`) that created a process is a vfork: `vfork()` (58, which valgrind
 * logs as "sys_fork ( )", coregrind/m_syswrap/syswrap-amd64-linux.c: `GENX_(__NR_vfork, sys_fork)`), or a `clone`
 * (56) whose flags, the first argument in hex, have CLONE_VM and CLONE_VFORK (glibc's posix_spawn: CLONE_VM |
 * CLONE_VFORK | SIGCHLD). Valgrind runs both as a fork (syswrap-linux.c `PRE(sys_clone)` clears the two flags: "assume
 * vfork == fork") but logs the flags as the program gave them. clone3 (435) does not occur: valgrind 3.19 does not
 * run it (ENOSYS, and glibc falls back to clone), and its flags are in memory, not in the log.
 */
function isVfork(nr: number, text: string): boolean {
  if (nr === 58) return true;
  if (nr !== 56) return false;
  return (parseInt(args(text)[0] ?? '', 16) & (CLONE_VM | CLONE_VFORK)) === (CLONE_VM | CLONE_VFORK);
}

/** The child of valgrind's "clone(fork): process P created child C" on a clone line, or null. */
function createdChild(text: string): number | null {
  const m = /created child (\d+)/.exec(text);
  return m ? Number(m[1]) : null;
}

/** wait4 options (include/uapi/linux/wait.h): WNOHANG, WUNTRACED (a stopped child), WCONTINUED (a continued one). */
const WNOHANG = 1;
const WUNTRACED = 2;
const WCONTINUED = 8;
/** waitid: idtype P_PID (the child is `id`) and option WEXITED (include/uapi/linux/wait.h). */
const P_PID = 1;
const WEXITED = 4;

/** Refuses a successful syscall that the trace cannot hold and the guest model does not model (unmodelled.ts). */
function unsupported(st: ProcessState, what: string): TraceError {
  return new TraceError(
    'unsupported',
    st.file,
    `${st.where}: pid ${st.pid} calls ${what}; the replay would run the accesses after it on another address space than the recorded one, so the logs are not imported`,
  );
}

/** Turns a completed syscall into an event (x86-64 syscall numbers, arch/x86/entry/syscalls/syscall_64.tbl). */
function finishSyscall(st: ProcessState, nr: number, text: string, res: SyscallResult | null): void {
  const r = res === null ? null : res.value;
  const ok = r !== null && r >= 0;
  const at = st.builder.length;
  const a = args(text);
  /** Refuses a range the .vxt trace cannot hold (rangeProblem), naming the log, the line and the value. */
  const checkRange = (call: string, start: number, startText: string, emptyOk: boolean): number => {
    const length = pageUp(num(a[1]));
    const bad = rangeProblem(call, start, startText, length, numText(a[1]) ?? '', emptyOk);
    if (bad !== null) throw new TraceError('bad-line', st.file, `${st.where}: ${bad}`);
    return length;
  };
  switch (nr) {
    case 9: {
      // mmap(addr, length, prot, flags, fd, offset)
      if (!ok) return;
      const flags = num(a[3]);
      const unmodelledFlag = unmodelledMmapFlag(flags);
      if (unmodelledFlag !== null) throw unsupported(st, `mmap with ${unmodelledFlag}`);
      const fdn = num(a[4]) | 0;
      const file = (flags & MAP_ANONYMOUS) === 0 && fdn >= 0 ? (st.fds.get(fdn) ?? null) : null;
      st.event({
        type: 'mmap',
        at,
        start: r,
        length: checkRange('mmap', r, res!.hex, false),
        prot: num(a[2]),
        flags,
        offset: num(a[5]),
        file,
      });
      return;
    }
    case 10:
      if (ok) st.event({ type: 'mprotect', at, start: num(a[0]), length: checkRange('mprotect', num(a[0]), numText(a[0]) ?? '', true), prot: num(a[2]) });
      return;
    case 11:
      if (ok) st.event({ type: 'munmap', at, start: num(a[0]), length: checkRange('munmap', num(a[0]), numText(a[0]) ?? '', true) });
      return;
    case 12:
      if (ok) {
        const request = num(a[0]);
        const past = request >= VXT_ADDRESS_END ? (numText(a[0]) ?? '') : r >= VXT_ADDRESS_END ? res!.hex : null;
        if (past !== null) throw new TraceError('bad-line', st.file, `${st.where}: brk at ${past}: the address is ${PAST_END}`);
        st.event({ type: 'brk', at, request, result: r });
      }
      return;
    case 2: // open(path, ...)
    case 257: {
      // openat(dirfd, path, ...)
      const p = pathArg(nr === 2 ? a[0] : a[1]);
      if (ok && p !== null) st.fds.set(r, p);
      return;
    }
    case 3:
      if (ok) st.fds.delete(num(a[0]));
      return;
    case 56: // clone(flags, ...): flags in hex, without 0x (valgrind's PRINT of sys_clone)
    case 57: // fork()
    case 58: {
      // vfork(): in the parent, the result is the child's pid (in the child, 0); a vfork event (isVfork)
      if (!ok || r === 0) return;
      const c = createdChild(text);
      if (c !== null) {
        // the fork event comes from the "created child" text (otherLine); the result must agree with it
        if (c !== r) {
          throw new TraceError('bad-line', st.file, `${st.where}: the clone says it created child ${c} but returned ${r}`);
        }
        return;
      }
      // CLONE_THREAD (include/uapi/linux/sched.h): a thread of this process, not a new process
      if (nr === 56 && (parseInt(a[0] ?? '', 16) & CLONE_THREAD) !== 0) return;
      st.fork(r, isVfork(nr, text));
      return;
    }
    case 59: {
      const p = pathArg(a[0]);
      st.pendingExec = r !== null && r < 0 ? null : p;
      return;
    }
    case 60:
    case 231:
      st.exitStatus = num(a[0]) & 0xff;
      return;
    case 61: {
      // wait4(pid, status, options, rusage) returns the child reaped (0: WNOHANG and none yet). With WUNTRACED or
      // WCONTINUED the child may only have stopped or continued, and is not waited for.
      const options = num(a[2]);
      if (ok && r > 0 && (options & (WUNTRACED | WCONTINUED)) === 0) st.waited(r);
      return;
    }
    case 247: {
      // waitid(idtype, id, infop, options) returns 0; the child is in *infop, which the log does not show, except
      // for idtype P_PID (the child is `id`). Only a blocking wait for an exit (WEXITED, no WNOHANG) is certain.
      const options = num(a[3]);
      if (ok && num(a[0]) === P_PID && (options & WEXITED) !== 0 && (options & (WNOHANG | WUNTRACED | WCONTINUED)) === 0) st.waited(num(a[1]));
      return;
    }
    default: {
      const what = ok ? unmodelledSyscall(nr, (i) => num(a[i])) : null;
      if (what !== null) throw unsupported(st, what);
      return;
    }
  }
}
