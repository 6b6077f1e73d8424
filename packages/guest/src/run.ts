import { performance } from 'node:perf_hooks';
import { Machine, Rng, pagingModeId, PAGING_MODE_NAMES, type DirtyLog, type MachineOptions, type PagingModeName } from '@vmexit/core';
import { OutOfMemoryError } from './os/frames.js';
import { GuestConfigError, Kernel, PERSONALITIES, type Personality } from './os/kernel.js';
import { FAULT_KIND_NAMES, FAULT_SIGSEGV, type FaultKindName, type GuestEventLog } from './os/stats.js';
import { TaskRunner } from './os/tasks.js';
import { KBUILD_TRACE_PATH, ReplayStats, loadVxtFile, prepareReplay, startReplay, type TraceLoader } from './replay.js';
import { perSharedTrace } from './trace/shared.js';
import type { VxtTrace } from './trace/types.js';
import type { TraceRelocation } from './relocate.js';
import { WorkloadError, parseWorkloadRef, resolveParams } from './workloads/params.js';
import { MAX_WORKLOAD_WORK, SYNTHETIC_WORKLOADS, type DirtyLogCheck } from './workloads/synthetic.js';

export const RUN_SCHEMA = 'vmexit.run/1';
export const DEFAULT_MEMORY = 256 * 1024 * 1024;

/** Counters of what runs below the guest: VM totals and per vCPU, under KVM's names. */
export interface RunCounters {
  readonly total: Record<string, number>;
  readonly vcpus: Record<string, number>[];
}

/**
 * What `runWorkload` runs: the workload, the paging mode, guest memory, vCPUs, seed, personalities, and the machine to run on (a fresh native one when none is given), and how its counters are read.
 */
export interface RunOptions {
  /** `NAME[:k=v,...]`, `kbuild`, or a path ending in `.vxt`. */
  readonly workload: string;
  readonly mode?: PagingModeName;
  readonly vcpus?: number;
  /** Guest RAM in bytes. */
  readonly memory?: number;
  readonly seed?: number;
  readonly personalities?: readonly Personality[];
  /**
   * The machine to run on: an already-built one (its vCPUs' hooks set by the VM), or a factory given the
   * machine options. Default: `new Machine(options)` with native hooks (no hypervisor). The run boots the guest
   * kernel on it, so it must be one no kernel has booted on (its vCPUs' paging off): one workload per machine.
   */
  readonly machine?: Machine | ((options: MachineOptions) => Machine);
  /** What the variant is, merged into `result.variant` (default `{ backend: 'none' }`). */
  readonly variant?: Readonly<Record<string, unknown>>;
  /**
   * Counters of what runs below the guest; default: the vCPUs' own (TLB, exceptions). Read after boot and
   * at the end: the result holds the difference, i.e. the workload's steady state without the boot and
   * the direct-map warm-up. `at` says which end of the window a read is: 'start' after boot and again at
   * the workload's `measure.begin()` (the last start counts), 'end' at its `measure.end()` or, without
   * one, after the last access.
   */
  readonly counters?: (machine: Machine, at: 'start' | 'end') => RunCounters;
  /** Loads a trace workload (default: read and decode the file; `kbuild` is the bundled trace). */
  readonly loadTrace?: TraceLoader;
  /**
   * Progress, after each quantum: user accesses so far and the expected total (a trace's represented
   * accesses, or what a synthetic workload expects, see WorkloadContext.expectAccesses; null until known).
   */
  readonly onProgress?: (accesses: number, total: number | null) => void;
  /** The VM's dirty log, attached to its MMU on first call (WorkloadContext.dirtyLog); absent natively. */
  readonly dirtyLog?: () => DirtyLog | null;
  /**
   * The most work a synthetic workload may do (SyntheticWorkload.work, in operations); a workload whose
   * parameters give more is refused before anything runs. Default MAX_WORKLOAD_WORK.
   */
  readonly maxWork?: number;
}

/** One run's result document (schema `vmexit.run/1`). */
export interface RunResult {
  readonly schema: typeof RUN_SCHEMA;
  readonly variant: { backend: string; mode: PagingModeName; vcpus: number; memory: number; personalities: string[]; [k: string]: unknown };
  readonly workload: { name: string; input: string; kind: 'synthetic' | 'trace'; params: Record<string, number> };
  readonly seed: number;
  readonly guest: {
    accesses: number;
    processes: number;
    contextSwitches: number;
    faults: { total: number } & Record<FaultKindName, number>;
    /** SIGSEGVs sent: by the #PF handler (`faults.sigsegv`) and by the #GP handler (a non-canonical user access). */
    sigsegv: number;
    syscalls: { fork: number; exec: number; exit: number; mmap: number; munmap: number; mprotect: number; brk: number };
    tlb: { invlpg: number; fullFlushes: number; shootdowns: number };
    pageTables: { allocated: Record<string, number>; freed: Record<string, number>; reusedAsData: Record<string, number> };
    pteWrites: number;
    pageCacheMisses: number;
    trace?: { records: number; represented: number; sigsegvRecords: number; relocation?: TraceRelocation };
  };
  /** Counters (and guest.faults) cover the window a workload marks as its steady state, when it marks one. */
  readonly counters: RunCounters;
  readonly measured?: string;
  /** dirty-log-test with `harvest`: the harvests checked against page contents. */
  readonly dirtyLog?: DirtyLogCheck;
  /**
   * Seconds of the workload's run on the machine: from the start of its processes to the end of the last, after
   * the setup (the machine built, the kernel booted, a trace loaded and planned or relocated for the paging mode).
   */
  readonly wallSeconds: number;
  /** `guest.accesses` / `wallSeconds`. */
  readonly accessesPerSecond: number;
  readonly memoryDigest: string;
}

/** A run's result and what a caller may inspect further (the guest-visible events for `--check`). */
export interface RunOutcome {
  readonly result: RunResult;
  readonly events: GuestEventLog;
  readonly kernel: Kernel;
  readonly machine: Machine;
}

const LEVEL_NAMES = ['', 'pt', 'pd', 'pdpt', 'pml4', 'pml5'];

/** Default counters: what the vCPUs count themselves (no hypervisor below). */
export function nativeCounters(machine: Machine): RunCounters {
  const vcpus = machine.vcpus.map((v) => ({
    accesses: v.accesses,
    exits: 0,
    exceptions: v.exceptions,
    pf_delivered: v.pageFaultsDelivered,
    tlb_hits: v.tlb.hits,
    tlb_misses: v.tlb.misses,
    tlb_flush: v.tlb.flushes,
    invlpg: v.tlb.invlpgs,
  }));
  const total: Record<string, number> = {};
  for (const c of vcpus) for (const [k, n] of Object.entries(c)) total[k] = (total[k] ?? 0) + n;
  return { total, vcpus };
}

/**
 * Boots the guest kernel on a machine, runs a workload to the end, and returns the RunResult. Bad input
 * (workload, parameters, memory size, mode) is a WorkloadError that names the input and the problem.
 */
export function runWorkload(options: RunOptions): RunOutcome {
  const input = options.workload;
  const modeName = options.mode ?? 'long4';
  if (!PAGING_MODE_NAMES.includes(modeName))
    throw new WorkloadError('bad-config', input, `unknown paging mode '${modeName}' (expected ${PAGING_MODE_NAMES.join(', ')})`);
  const vcpuCount = options.vcpus ?? 1;
  const memory = options.memory ?? DEFAULT_MEMORY;
  const seed = options.seed ?? 1;
  const personalities = [...new Set(options.personalities ?? [])].sort();
  for (const p of personalities) {
    if (!PERSONALITIES.includes(p)) throw new WorkloadError('bad-config', input, `unknown personality '${p}' (expected ${PERSONALITIES.join(', ')})`);
  }
  const ref = parseWorkloadRef(input);
  let params: Record<string, number> = {};
  let trace: VxtTrace | null = null;
  let tracePath = '';
  const synthetic = ref.kind === 'synthetic' ? SYNTHETIC_WORKLOADS.get(ref.name) : undefined;
  if (ref.kind === 'synthetic') {
    if (synthetic === undefined) {
      throw new WorkloadError(
        'unknown-workload',
        input,
        `no workload '${ref.name}' (known: ${[...SYNTHETIC_WORKLOADS.keys()].join(', ')}, kbuild, or a .vxt file)`,
      );
    }
    params = resolveParams(input, ref.name, synthetic.params, ref.raw);
    const limit = options.maxWork ?? MAX_WORKLOAD_WORK;
    const work = synthetic.work(params, vcpuCount);
    if (!(work <= limit)) {
      throw new WorkloadError(
        'too-much-work',
        input,
        `these parameters ask for about ${work.toExponential(2)} operations (accesses, and pages mapped, copied and torn down) on ${vcpuCount} vCPU${vcpuCount === 1 ? '' : 's'}, over the limit of ${limit.toExponential(2)} a run may do; give smaller values`,
      );
    }
  } else {
    tracePath = ref.path ?? KBUILD_TRACE_PATH;
    trace = (options.loadTrace ?? loadVxtFile)(tracePath);
  }

  const machineOptions: MachineOptions = { memoryBytes: memory, vcpus: vcpuCount, seed };
  let machine: Machine;
  try {
    machine =
      options.machine === undefined ? new Machine(machineOptions) : typeof options.machine === 'function' ? options.machine(machineOptions) : options.machine;
  } catch (e) {
    if (e instanceof RangeError) throw new WorkloadError('bad-config', input, e.message);
    throw e;
  }
  // The boot below is a power-on boot: the boot loader writes the kernel's tables into RAM from frame 1 up with
  // physical writes, and the vCPUs leave real mode. On a machine that already runs a kernel it would write over
  // that kernel's tables and pages, while the TLBs (global entries survive the new CR3) and the hypervisor's MMU
  // keep what the first kernel mapped; nothing models a reset (INIT, RAM, the MMU), so such a machine is refused.
  const booted = machine.vcpus.find((v) => v.pagingEnabled);
  if (booted !== undefined) {
    throw new WorkloadError(
      'bad-config',
      input,
      `vCPU ${booted.id} already has paging on (CR0.PG=1): a guest kernel was booted on this machine (an earlier runWorkload), and a second boot would write its page tables over the first kernel's memory while the TLBs and the hypervisor's MMU still map it; one workload per machine: create a new machine (or VM) for each run`,
    );
  }
  let kernel: Kernel;
  try {
    kernel = new Kernel(machine, pagingModeId(modeName), { personalities });
  } catch (e) {
    if (e instanceof GuestConfigError) throw new WorkloadError('too-small-memory', input, e.message);
    throw e;
  }
  const vcpus = machine.vcpus.length;
  if (synthetic !== undefined) {
    const need = synthetic.minPages(params, vcpus);
    if (need > kernel.frames.freeCount) {
      throw new WorkloadError(
        'too-small-memory',
        input,
        `needs at least ${need} free pages (${mib(need * 4096)}) but ${mib(machine.memory.size)} of guest memory leaves ${kernel.frames.freeCount} after boot; give more --memory`,
      );
    }
  }
  // The expected total for the progress bar: a trace's represented accesses, or what the workload says.
  let total = trace === null ? null : sumCounts(trace);
  const runner = new TaskRunner(machine, kernel, {
    onQuantum: options.onProgress === undefined ? undefined : (n) => options.onProgress!(n, total),
  });
  const replay = new ReplayStats();
  // A trace is planned (and relocated when it must be) before the timed window, as the kernel was booted.
  const replayed = trace === null ? null : prepareReplay(kernel, trace, replay, tracePath);
  const readCounters = options.counters ?? nativeCounters;
  let baseline = readCounters(machine, 'start');
  let final: RunCounters | null = null;
  let faultsAtBegin = 0;
  let faultsAtEnd = -1;
  const kindsAtBegin = new Float64Array(FAULT_KIND_NAMES.length);
  let kindsAtEnd: Float64Array | null = null;
  let began = false;
  const measure = {
    begin(): void {
      if (began) throw new Error('measure.begin() called twice');
      began = true;
      baseline = readCounters(machine, 'start');
      faultsAtBegin = kernel.stats.pageFaults;
      kindsAtBegin.set(kernel.stats.faults);
    },
    end(): void {
      if (final !== null) throw new Error('measure.end() called twice');
      final = readCounters(machine, 'end');
      faultsAtEnd = kernel.stats.pageFaults;
      kindsAtEnd = Float64Array.from(kernel.stats.faults);
    },
  };
  let dirtyLogCheck: DirtyLogCheck | null = null;
  const t0 = performance.now();
  try {
    const expectAccesses = (n: number): void => {
      total = n;
    };
    const reportDirtyLog = (c: DirtyLogCheck): void => {
      dirtyLogCheck = c;
    };
    if (synthetic !== undefined)
      synthetic.setup({ kernel, runner, rng: new Rng(seed ^ 0x3c6ef372), vcpus, measure, expectAccesses, dirtyLog: options.dirtyLog, reportDirtyLog }, params);
    else startReplay(kernel, runner, replayed!, replay, tracePath);
    runner.run();
  } catch (e) {
    if (e instanceof OutOfMemoryError) {
      throw new WorkloadError('too-small-memory', input, `${mib(machine.memory.size)} of guest memory is too small for this workload: ${e.message}`);
    }
    throw e;
  }
  const wallSeconds = (performance.now() - t0) / 1000;
  const accesses = runner.accesses;
  const s = kernel.stats;
  // Guest faults over the same window as the counters (the whole run when the workload sets none).
  const windowed = faultsAtEnd >= 0;
  const faults = { total: windowed ? faultsAtEnd - faultsAtBegin : s.pageFaults } as { total: number } & Record<FaultKindName, number>;
  FAULT_KIND_NAMES.forEach((k, i) => (faults[k] = windowed ? kindsAtEnd![i]! - kindsAtBegin[i]! : s.faults[i]!));
  const levels = (a: Float64Array): Record<string, number> => {
    const o: Record<string, number> = {};
    for (let l = 1; l <= kernel.layout.top; l++) o[LEVEL_NAMES[l]!] = a[l]!;
    return o;
  };
  const result: RunResult = {
    schema: RUN_SCHEMA,
    variant: { backend: 'none', ...options.variant, mode: modeName, vcpus, memory: machine.memory.size, personalities },
    workload: { name: ref.name, input, kind: ref.kind, params },
    seed,
    guest: {
      accesses,
      processes: s.processes,
      contextSwitches: s.contextSwitches,
      faults,
      sigsegv: s.faults[FAULT_SIGSEGV]! + s.generalProtection,
      syscalls: { fork: s.forks, exec: s.execs, exit: s.exits, mmap: s.mmaps, munmap: s.munmaps, mprotect: s.mprotects, brk: s.brks },
      tlb: { invlpg: s.invlpgs, fullFlushes: s.fullFlushes, shootdowns: s.shootdowns },
      pageTables: { allocated: levels(s.tablesAllocated), freed: levels(s.tablesFreed), reusedAsData: levels(kernel.frames.tableReusedAsData) },
      pteWrites: s.pteWrites,
      pageCacheMisses: s.pageCacheMisses,
      ...(trace === null
        ? {}
        : {
            trace: {
              records: replay.records,
              represented: replay.represented,
              sigsegvRecords: replay.sigsegvRecords,
              ...(replay.relocation === null ? {} : { relocation: replay.relocation }),
            },
          }),
    },
    counters: diffCounters(final ?? readCounters(machine, 'end'), baseline),
    ...(windowed ? { measured: 'steady state (the workload marks it)' } : {}),
    ...(dirtyLogCheck === null ? {} : { dirtyLog: dirtyLogCheck }),
    wallSeconds,
    accessesPerSecond: wallSeconds > 0 ? accesses / wallSeconds : 0,
    memoryDigest: machine.memory.digest(),
  };
  return { result, events: kernel.events, kernel, machine };
}

/** `after - before`, key by key (keys missing before count from 0). */
export function diffCounters(after: RunCounters, before: RunCounters): RunCounters {
  const d = (a: Record<string, number>, b: Record<string, number> | undefined): Record<string, number> => {
    const o: Record<string, number> = {};
    for (const [k, n] of Object.entries(a)) o[k] = n - (b?.[k] ?? 0);
    return o;
  };
  return { total: d(after.total, before.total), vcpus: after.vcpus.map((c, i) => d(c, before.vcpus[i])) };
}

/** The accesses a trace represents (the sum of its records' counts), kept for a shared trace (trace/shared.ts). */
const representedOf = new WeakMap<VxtTrace, number>();
function sumCounts(trace: VxtTrace): number {
  return perSharedTrace(representedOf, trace, (t) => {
    let n = 0;
    const c = t.accesses.count;
    for (let i = 0; i < c.length; i++) n += c[i]!;
    return n;
  });
}

function mib(bytes: number): string {
  return bytes >= 1024 * 1024 ? `${+(bytes / (1024 * 1024)).toFixed(2)} MiB` : `${bytes} bytes`;
}
