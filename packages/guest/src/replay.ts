import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ACC_FETCH, ACC_READ, ACC_WRITE, GuestAbort, PAGE_SIZE } from '@vmexit/core';
import { PROT_READ, VMA_ANON, VMA_FILE_PRIVATE, VMA_FILE_SHARED, type AreaSpec, type Kernel, type Process } from './os/kernel.js';
import type { Program, Task, TaskRunner } from './os/tasks.js';
import { decodeVxt, readVxtFile } from './trace/vxt.js';
import { sharedTraces } from './trace/shared.js';
import { TraceError } from './trace/errors.js';
import { MAP_ANONYMOUS, MAP_SHARED, type VxtEvent, type VxtExecEvent, type VxtProcess, type VxtTrace } from './trace/types.js';
import { WorkloadError } from './workloads/params.js';
import { planRelocation, relocateTrace, relocationRefusal, type TraceRelocation } from './relocate.js';

export { traceHighestAddress } from './relocate.js';
import { PAGING_MODE_NAMES, pagingModeId, type PagingModeName } from '@vmexit/core';

const modeName = (id: number): PagingModeName => PAGING_MODE_NAMES.find((n) => pagingModeId(n) === id)!;

/** The bundled trace behind the workload name `kbuild` (packages/guest/traces/kbuild.vxt). */
export const KBUILD_TRACE_PATH = fileURLToPath(new URL('../traces/kbuild.vxt', import.meta.url));

/** Reads and decodes a `.vxt` file (TraceError on a bad file, with the file's name). */
export function loadVxtFile(path: string): VxtTrace {
  // Size-checked before it is read (a regular file, its header agreeing with its size): readVxtFile.
  return decodeVxt(readVxtFile(path), path);
}

/** What loads a trace workload's file (`RunOptions.loadTrace`): `loadVxtFile`, or a `createTraceLoader`. */
export type TraceLoader = (path: string) => VxtTrace;

/**
 * A trace loader for `RunOptions.loadTrace` that keeps the last trace it decoded and gives that trace again
 * while its file is the same one, unchanged (its path, inode, size and modification time): runs of several
 * variants on one trace (a comparison, `vmexit main`) read and decode it once. The runs share the trace and
 * only read it (do not change a trace a loader gave out: what runs work out from all its records, such as its
 * highest address, is kept with it). The loader holds one trace: drop the loader to let it go.
 */
export function createTraceLoader(load: TraceLoader = loadVxtFile): TraceLoader {
  let key: string | null = null;
  let kept: VxtTrace | null = null;
  return (path: string): VxtTrace => {
    let k: string;
    try {
      const st = statSync(path);
      k = `${resolve(path)}\0${st.ino}\0${st.size}\0${st.mtimeMs}`;
    } catch {
      return load(path); // the loader names what is wrong with the path
    }
    if (k === key && kept !== null) return kept;
    key = null;
    kept = null; // the earlier trace can go before the next one is decoded
    const trace = load(path);
    sharedTraces.add(trace);
    key = k;
    kept = trace;
    return trace;
  };
}

/** Record kind -> access kind (a modify replays as a write: its store is what the MMU sees). */
const KIND_ACCESS = Int32Array.of(ACC_FETCH, ACC_READ, ACC_WRITE, ACC_WRITE);

/** Statistics of one replay. */
export class ReplayStats {
  records = 0;
  /** Represented accesses (the sum of the records' counts). */
  represented = 0;
  /** Records whose access ended in SIGSEGV (an address the model's areas do not cover). */
  sigsegvRecords = 0;
  processes = 0;
  /** How the trace was relocated into the mode's user space, or null when it fits as recorded. */
  relocation: TraceRelocation | null = null;
}

/**
 * The trace to replay on `kernel`: `recorded` itself when every address fits the paging mode's user space,
 * else relocated per process tree when its regions fit (relocate.ts; `stats.relocation` says how), else a
 * WorkloadError naming the trees that do not fit. Setup, like the kernel's boot: runWorkload calls it before
 * its timed window opens (planning scans every record, and a relocation rewrites them).
 */
export function prepareReplay(kernel: Kernel, recorded: VxtTrace, stats: ReplayStats, name: string = recorded.source.command || 'trace'): VxtTrace {
  const plan = planRelocation(recorded, kernel.layout);
  if (plan.kind === 'too-big') throw new WorkloadError('bad-config', name, relocationRefusal(recorded, modeName(kernel.layout.mode), plan.misfits));
  if (plan.kind === 'relocated') {
    stats.relocation = plan.relocation;
    return relocateTrace(recorded, plan.relocation);
  }
  return recorded;
}

/**
 * Replays a VxtTrace, as `prepareReplay` gave it, on the OS model: each recorded process becomes a process
 * whose task runs its records in program order; its events become OS operations at their place (`at`): mmap,
 * munmap, mprotect, brk, fork (the child's task starts), vfork (the child's task starts in the parent's address
 * space, and the parent blocks until the child has exec'd or exited), wait (the task blocks until the child has
 * exited), exec (a new address space with the image's mappings), exit. Each access record is one translation on
 * the vCPU (`touch`); its `count` accesses are counted as represented (the repeats are TLB hits on the page just
 * translated).
 */
export function startReplay(kernel: Kernel, runner: TaskRunner, trace: VxtTrace, stats: ReplayStats, name: string = trace.source.command || 'trace'): void {
  const byPid = new Map<number, VxtProcess>();
  for (const p of trace.processes) byPid.set(p.pid, p);
  for (const p of trace.processes) {
    if (p.parent !== 0 && byPid.has(p.parent)) continue;
    const proc = kernel.createProcess(runner.machine.vcpus[0]!, `pid${p.pid}`);
    runner.start(proc, (t) => replayProcess(t, p, trace, byPid, stats, name));
  }
}

function* replayProcess(t: Task, tp: VxtProcess, trace: VxtTrace, byPid: ReadonlyMap<number, VxtProcess>, stats: ReplayStats, name: string): Program {
  stats.processes++;
  const { kind, page, count } = trace.accesses;
  const events = tp.events;
  const v = t.vcpu;
  let ev = 0;
  let i = tp.recordStart;
  const end = tp.recordEnd;
  /** The children this process forked, by recorded pid (for its wait events). */
  const children = new Map<number, Process>();
  for (;;) {
    while (ev < events.length && events[ev]!.at <= i) {
      const e = events[ev++]!;
      if (e.type === 'exit') return;
      if (e.type === 'wait') {
        // Blocked in wait4 until the child has exited, as in the recording (the runner wakes it then).
        const child = children.get(e.child);
        if (child !== undefined) yield* t.wait(child);
        continue;
      }
      let child: Process | null;
      try {
        child = applyEvent(t, e, trace, byPid, stats, name);
      } catch (x) {
        // A checked trace never gets here (decodeVxt checks the ranges, the replay the mode's limit): an
        // event the guest kernel refuses is bad input, named with the trace, the process and the event.
        if (!(x instanceof GuestAbort)) throw x;
        throw new TraceError('inconsistent', name, `pid ${tp.pid}: ${e.type} event ${ev - 1} (before record ${e.at}) cannot be replayed: ${x.message}`);
      }
      if (child !== null && e.type === 'fork') {
        children.set(e.child, child);
        // vfork: asleep until the child has exec'd or exited (its accesses before that run in this address space).
        if (e.vfork === true) yield* t.vforkDone(child);
      }
    }
    if (i >= end) return;
    // The records up to the next event, or to the end of the quantum.
    const nextAt = ev < events.length ? Math.min(events[ev]!.at, end) : end;
    const stop = Math.min(nextAt, i + Math.max(1, t.budget));
    const start = i;
    let represented = 0;
    while (i < stop) {
      try {
        for (; i < stop; i++) {
          v.touch(page[i]! * PAGE_SIZE, KIND_ACCESS[kind[i]!]!);
          represented += count[i]!;
        }
      } catch (e) {
        if (!(e instanceof GuestAbort)) throw e;
        represented += count[i]!;
        stats.sigsegvRecords++;
        i++;
      }
    }
    stats.records += i - start;
    stats.represented += represented;
    t.accesses += represented;
    t.budget -= i - start;
    if (t.budget <= 0) yield;
  }
}

/** Applies one event of a process (not exit, not wait) to the OS model; for a fork, returns the child process. */
function applyEvent(
  t: Task,
  e: Exclude<VxtEvent, { type: 'exit' | 'wait' }>,
  trace: VxtTrace,
  byPid: ReadonlyMap<number, VxtProcess>,
  stats: ReplayStats,
  name: string,
): Process | null {
  const kernel = t.kernel;
  const v = t.vcpu;
  switch (e.type) {
    case 'mmap': {
      const anon = (e.flags & MAP_ANONYMOUS) !== 0;
      const backing = anon ? VMA_ANON : (e.flags & MAP_SHARED) !== 0 ? VMA_FILE_SHARED : VMA_FILE_PRIVATE;
      const file = anon ? null : kernel.file(e.file ?? `[fd@${e.start.toString(16)}]`);
      kernel.mmap(v, t.proc, e.start, e.length, e.prot, backing, file, e.offset);
      return null;
    }
    case 'munmap':
      kernel.munmap(v, t.proc, e.start, e.length);
      return null;
    case 'mprotect':
      kernel.mprotect(v, t.proc, e.start, e.length, e.prot);
      return null;
    case 'brk': {
      // The heap of the address space the process runs in (a vfork child's before its exec: its parent's).
      const mm = t.proc.mm;
      if (mm.brkBase === 0 || mm.brkEnd === 0) {
        mm.brkBase = e.result;
        mm.brkEnd = e.result;
      } else if (e.result !== mm.brkEnd) {
        kernel.brk(v, t.proc, e.result);
      }
      return null;
    }
    case 'fork': {
      const child = byPid.get(e.child);
      if (child === undefined) throw new TraceError('inconsistent', name, `pid ${e.parent}: forks pid ${e.child}, not in the trace`);
      const program = (c: Task): Program => replayProcess(c, child, trace, byPid, stats, name);
      return e.vfork === true ? t.vfork(program) : t.fork(program);
    }
    case 'exec':
      kernel.execAreas(v, t.proc, e.path, execAreas(kernel, e));
      return null;
  }
}

/** The areas an exec event's mappings become (the loader's work: ELF segments, ld.so, the stack, the vdso). */
function execAreas(kernel: Kernel, e: VxtExecEvent): AreaSpec[] {
  return e.mappings.map((m) => {
    const growsDown = m.role === 'stack';
    const fileBacked = m.role === 'exe' || m.role === 'interp' || m.role === 'vdso' || m.file !== null;
    const name = m.file ?? (m.role === 'exe' ? e.path : `[${m.role}]`);
    return {
      start: m.start,
      end: m.start + m.length,
      prot: m.prot | PROT_READ,
      backing: fileBacked && !growsDown ? VMA_FILE_PRIVATE : VMA_ANON,
      file: fileBacked && !growsDown ? kernel.file(name) : null,
      // The segment's offset in its file is not recorded: the address stands for it, so two processes that
      // map the same file at the same place share its page-cache pages.
      offset: m.start,
      growsDown,
    };
  });
}
