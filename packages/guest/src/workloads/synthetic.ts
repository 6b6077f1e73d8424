import { ACC_FETCH, ACC_READ, ACC_WRITE, DirtyLog, DirtyRingError, PAGE_SIZE, type Rng } from '@vmexit/core';
import { PROT_READ, PROT_WRITE, VMA_ANON, type ImageSpec, type Kernel, type Process } from '../os/kernel.js';
import type { Program, Task, TaskRunner } from '../os/tasks.js';
import { WorkloadError, type ParamDef } from './params.js';

/**
 * Where a workload's steady state begins and ends. The run's counters are read at `begin()` and `end()`
 * (each at most once); a workload that never calls them is measured from the end of boot to its last access.
 */
export interface MeasureWindow {
  /** Starts the measured window now (at most once). */
  begin(): void;
  /** Ends the measured window now (at most once). */
  end(): void;
}

/** What a workload's setup gets: the kernel, the task runner, its own seeded random stream, its window. */
export interface WorkloadContext {
  readonly kernel: Kernel;
  readonly runner: TaskRunner;
  readonly rng: Rng;
  readonly vcpus: number;
  readonly measure: MeasureWindow;
  /**
   * Tells the run how many user accesses the workload will make in all (for the progress bar): at setup
   * when the parameters give it, else as soon as the workload knows it; an estimate where it cannot be
   * exact (mprotect-storm's readers; its setup says so). Each call replaces the last.
   */
  expectAccesses(total: number): void;
  /**
   * The VM's dirty log, attached to its MMU at the first call (null natively, or when the MMU has none): for
   * a workload that harvests it as a host thread would (dirty-log-test's `harvest`). Absent: null.
   */
  readonly dirtyLog?: () => DirtyLog | null;
  /** Adds the dirty-log check to the run's result (`result.dirtyLog`). */
  readonly reportDirtyLog?: (check: DirtyLogCheck) => void;
}

/**
 * dirty-log-test's check of the harvests against page contents (`result.dirtyLog` of `vmexit run`): after each
 * harvest, a page of the test area whose first 8 bytes changed since the previous harvest must have been
 * reported dirty (`lost` counts those that were not: a real bug); `falseDirty` counts pages reported dirty whose
 * 8 bytes did not change (not an error: a store of the same iteration number, or a mark without a store).
 */
export interface DirtyLogCheck {
  readonly mode: 'bitmap' | 'clear' | 'ring' | 'pml';
  readonly harvests: number;
  /** Page checks in all (pages of the area mapped at a harvest, summed over the harvests). */
  readonly checked: number;
  readonly lost: number;
  readonly falseDirty: number;
  /** ring mode: entries per vCPU ring, entries harvested, and KVM_EXIT_DIRTY_RING_FULL exits handled. */
  readonly ring?: { readonly entries: number; readonly harvested: number; readonly fullExits: number };
}

/**
 * dirty-log-test's harvest modes (its `harvest` parameter): none leaves the log to `vmexit migrate`; pml is
 * KVM_GET_DIRTY_LOG on a VM whose processor logs dirty pages itself (the `pml` policy: VMX with TDP).
 */
export const HARVEST_MODES = ['none', 'bitmap', 'clear', 'ring', 'pml'] as const;

/**
 * A synthetic workload: its name and doc, its parameters with ranges, the guest memory it needs, and the `setup` that starts its programs on the task
 * runner.
 */
export interface SyntheticWorkload {
  readonly name: string;
  readonly doc: string;
  readonly params: Readonly<Record<string, ParamDef>>;
  /** Guest pages the workload needs at least (beyond the kernel's), for an early "memory too small" error. */
  minPages(p: Readonly<Record<string, number>>, vcpus: number): number;
  /**
   * An upper bound of the work a run does, in operations: the guest's accesses, plus the pages the kernel
   * maps, copies, changes and tears down for it and the host's per-page work (a dirty-log harvest). A run
   * whose bound is over the limit (RunOptions.maxWork, MAX_WORKLOAD_WORK) is refused before it starts.
   */
  work(p: Readonly<Record<string, number>>, vcpus: number): number;
  /** Creates the processes and starts their programs on the runner. */
  setup(ctx: WorkloadContext, p: Readonly<Record<string, number>>): void;
}

const int = (def: number, min: number, max: number, doc: string): ParamDef => ({ default: def, min, max, integer: true, doc });
const real = (def: number, min: number, max: number, doc: string): ParamDef => ({ default: def, min, max, integer: false, doc });

const RW = PROT_READ | PROT_WRITE;
const MAX_PAGES = 1 << 22;

/**
 * The work a run may do (SyntheticWorkload.work), by default: 2^28 operations, a few minutes natively and
 * what a run under a hypervisor variant finishes in well under an hour. Larger parameter values are refused
 * up front, naming the bound, rather than left to run for days.
 */
export const MAX_WORKLOAD_WORK = 2 ** 28;

/** The value a workload stores: deterministic, different per page and pass. */
function word(page: number, n: number): number {
  return (Math.imul(page + 1, 0x9e3779b1) ^ n) | 0;
}

/** An anonymous read-write area of `pages` pages. */
function mapAnon(t: Task, pages: number): number {
  return t.kernel.mmap(t.vcpu, t.proc, null, pages * PAGE_SIZE, RW, VMA_ANON);
}

/** Starts `count` processes (one per vCPU by default), each running `program`. */
function startProcesses(ctx: WorkloadContext, name: string, count: number, program: (t: Task, index: number) => Program): void {
  for (let i = 0; i < count; i++) {
    const v = ctx.runner.machine.vcpus[i % ctx.vcpus]!;
    const p = ctx.kernel.createProcess(v, `${name}.${i}`);
    ctx.runner.start(p, (t) => program(t, i), v);
  }
}

const demandFault: SyntheticWorkload = {
  name: 'demand-fault',
  doc: 'one process touches N new pages once each: N demand-zero faults (or zero-page faults with write=0); measured over the touching only',
  params: {
    pages: int(16384, 1, MAX_PAGES, 'pages to touch'),
    write: int(1, 0, 1, '1: write each page (demand-zero), 0: read it (zero page)'),
  },
  minPages: (p) => p.pages! + Math.ceil(p.pages! / 512) + 8,
  // the accesses, and the mapping and teardown of each page
  work: (p) => 3 * p.pages! + 64,
  setup(ctx, p) {
    // one access per page, exactly
    ctx.expectAccesses(p.pages!);
    startProcesses(ctx, 'demand-fault', 1, function* (t) {
      const pages = p.pages!;
      const base = mapAnon(t, pages);
      const kind = p.write === 1 ? ACC_WRITE : ACC_READ;
      // The steady state is the touching: not the mmap before it, nor the teardown of the address space
      // when the process exits (which writes every PTE once more).
      ctx.measure.begin();
      for (let i = 0; i < pages; i++) {
        t.access(base + i * PAGE_SIZE + ((i * 64) % PAGE_SIZE), kind, word(i, 0));
        if (t.tick()) yield;
      }
      ctx.measure.end();
    });
  },
};

const forkCow: SyntheticWorkload = {
  name: 'fork-cow',
  doc: 'a parent writes its pages, then forks children that write a fraction of them (COW copies) and exit; after each, the parent writes all its pages again (write-protect faults it resolves in place)',
  params: {
    pages: int(1024, 1, MAX_PAGES, 'pages of the parent'),
    forks: int(8, 1, 1 << 16, 'children, one after the other'),
    write: real(0.5, 0, 1, 'fraction of the pages each child writes'),
  },
  minPages: (p) => 2 * p.pages! + 2 * Math.ceil(p.pages! / 512) + 16,
  // the parent's pass, then per child: the fork's copy of the parent's ptes, the child's writes (a copy
  // each), its teardown, the parent's pass (write-protect faults) and the order of its pages
  work: (p) => 3 * p.pages! + p.forks! * (5 * p.pages! + 2 * Math.floor(p.pages! * p.write!) + 64),
  setup(ctx, p) {
    const rng = ctx.rng;
    // exactly: the parent's first pass, then per child its k writes and the parent's pass after it
    ctx.expectAccesses(p.pages! + p.forks! * (Math.floor(p.pages! * p.write!) + p.pages!));
    startProcesses(ctx, 'fork-cow', 1, function* (t) {
      const pages = p.pages!;
      const base = mapAnon(t, pages);
      for (let i = 0; i < pages; i++) {
        t.write(base + i * PAGE_SIZE, word(i, 0));
        if (t.tick()) yield;
      }
      const k = Math.floor(pages * p.write!);
      for (let f = 1; f <= p.forks!; f++) {
        // The pages this child writes: k distinct pages, chosen by the seeded stream (partial Fisher-Yates).
        const order = Array.from({ length: pages }, (_, i) => i);
        for (let i = 0; i < k; i++) {
          const j = i + rng.nextInt(pages - i);
          [order[i], order[j]] = [order[j]!, order[i]!];
        }
        const chosen = order.slice(0, k);
        const child = t.fork(function* (c) {
          for (const i of chosen) {
            c.write(base + i * PAGE_SIZE + 8, word(i, f));
            if (c.tick()) yield;
          }
        });
        yield* t.wait(child);
        for (let i = 0; i < pages; i++) {
          t.write(base + i * PAGE_SIZE + 16, word(i, f));
          if (t.tick()) yield;
        }
      }
    });
  },
};

/** The image exec-storm's children run: text and data from the file, bss, a stack. */
function storeImage(p: Readonly<Record<string, number>>, n: number): ImageSpec {
  return { path: `/usr/bin/tool${n % 4}`, textPages: p.text!, dataPages: p.data!, bssPages: p.bss!, stackPages: p.stack! };
}

/** Runs an image's pages: fetch the text, read then write the data, write the bss and the stack. */
function* runImage(t: Task, image: ImageSpec, n: number): Program {
  const k = t.kernel;
  const { text, stackTop } = k.imageAddresses();
  let va = text;
  for (let i = 0; i < image.textPages; i++, va += PAGE_SIZE) {
    t.touch(va, ACC_FETCH);
    if (t.tick()) yield;
  }
  for (let i = 0; i < image.dataPages; i++, va += PAGE_SIZE) {
    t.read(va);
    t.write(va + 4, word(i, n));
    if (t.tick(2)) yield;
  }
  for (let i = 0; i < image.bssPages; i++, va += PAGE_SIZE) {
    t.write(va, word(i, n));
    if (t.tick()) yield;
  }
  for (let i = 1; i <= image.stackPages; i++) {
    t.write(stackTop - i * PAGE_SIZE + 64, word(i, n));
    if (t.tick()) yield;
  }
}

/** The user accesses `runImage` makes. */
function imageAccesses(image: ImageSpec): number {
  return image.textPages + 2 * image.dataPages + image.bssPages + image.stackPages;
}

const SHELL: ImageSpec = { path: '/bin/sh', textPages: 8, dataPages: 2, bssPages: 2, stackPages: 2 };

const execStorm: SyntheticWorkload = {
  name: 'exec-storm',
  doc: 'a shell forks children that exec an image, run its pages and exit: address spaces built and torn down, page-table pages freed and reused',
  params: {
    execs: int(64, 1, 1 << 20, 'children (fork + exec + exit), one after the other, per vCPU'),
    text: int(8, 1, 4096, 'text pages of the image'),
    data: int(4, 0, 4096, 'data pages'),
    bss: int(4, 0, 4096, 'bss pages'),
    stack: int(4, 1, 4096, 'stack pages'),
  },
  minPages: (p) => 64 + 4 * (p.text! + p.data! + p.bss! + p.stack!),
  // per vCPU: the shell, then per child its fork, the exec's mappings, the image's accesses and the teardown
  work: (p, vcpus) => vcpus * (64 + p.execs! * (64 + 4 * (p.text! + p.data! + p.bss! + p.stack!))),
  setup(ctx, p) {
    // exactly: per vCPU, the shell's image, then each child's
    ctx.expectAccesses(ctx.vcpus * (imageAccesses(SHELL) + p.execs! * imageAccesses(storeImage(p, 0))));
    startProcesses(ctx, 'sh', ctx.vcpus, function* (t, index) {
      t.kernel.exec(t.vcpu, t.proc, SHELL);
      yield* runImage(t, SHELL, 0);
      for (let n = 1; n <= p.execs!; n++) {
        const image = storeImage(p, n + index);
        const child = t.fork(function* (c) {
          c.kernel.exec(c.vcpu, c.proc, image);
          yield* runImage(c, image, n);
        });
        yield* t.wait(child);
      }
    });
  },
};

const mprotectStorm: SyntheticWorkload = {
  name: 'mprotect-storm',
  doc: 'a garbage-collector-like write barrier: the region is made read-only each round, writes take SIGSEGV and the handler makes the page writable again; threads on the other vCPUs read the region (TLB shootdowns)',
  params: {
    pages: int(32, 1, MAX_PAGES, 'pages of the region'),
    rounds: int(64, 1, 1 << 20, 'mprotect(PROT_READ) rounds'),
    writes: int(8, 0, 1 << 20, 'writes per round, to random pages'),
  },
  minPages: (p) => p.pages! + 16,
  // the first pass; per round the mprotect of the whole region, the writes with their retries and
  // single-page mprotects, and the readers' accesses on the other vCPUs (about a quantum each per round)
  work: (p, vcpus) => 3 * p.pages! + p.rounds! * (p.pages! + 4 * p.writes! + (vcpus - 1) * 128 + 64),
  setup(ctx, p) {
    const rng = ctx.rng;
    const pages = p.pages!;
    const v0 = ctx.runner.machine.vcpus[0]!;
    const proc = ctx.kernel.createProcess(v0, 'mprotect-storm');
    let base = -1;
    let finished = false;
    // An estimate: the writer's accesses are exact but for the retries (a write is executed again after the
    // SIGSEGV of the first write to each page in a round: the expected number of distinct pages among
    // `writes` uniform draws); the readers on the other vCPUs read until the writer is done, about one
    // quantum (4000 operations on average, 64 per read) each per round.
    const distinct = pages * (1 - Math.pow(1 - 1 / pages, p.writes!));
    ctx.expectAccesses(Math.round(pages + p.rounds! * (p.writes! + distinct + ((ctx.vcpus - 1) * 4000) / 64)));
    ctx.runner.start(
      proc,
      function* (t) {
        base = mapAnon(t, pages);
        for (let i = 0; i < pages; i++) {
          t.write(base + i * PAGE_SIZE, word(i, 0));
          if (t.tick()) yield;
        }
        for (let r = 1; r <= p.rounds!; r++) {
          t.kernel.mprotect(t.vcpu, t.proc, base, pages * PAGE_SIZE, PROT_READ);
          for (let w = 0; w < p.writes!; w++) {
            const i = rng.nextInt(pages);
            const va = base + i * PAGE_SIZE + 32;
            if (!t.write(va, word(i, r))) {
              // The SIGSEGV handler: unprotect the page, return, and the write is executed again.
              t.kernel.mprotect(t.vcpu, t.proc, base + i * PAGE_SIZE, PAGE_SIZE, PROT_READ | PROT_WRITE);
              t.write(va, word(i, r));
            }
            if (t.tick(4)) yield;
          }
          yield;
        }
        finished = true;
      },
      v0,
    );
    for (let i = 1; i < ctx.vcpus; i++) {
      const trng = rng.fork();
      ctx.runner.start(
        proc,
        function* (t) {
          while (!finished) {
            if (base >= 0) t.read(base + trng.nextInt(pages) * PAGE_SIZE);
            if (t.tick(64)) yield;
          }
        },
        ctx.runner.machine.vcpus[i]!,
      );
    }
  },
};

const ptRecycle: SyntheticWorkload = {
  name: 'pt-recycle',
  doc: 'processes that own page directories exit, and a survivor gets every frame they freed back as data pages, which it memsets with 8-byte stores',
  params: {
    dirs: int(16, 1, 1 << 16, 'page directories (level-2 tables) to free per round'),
    rounds: int(1, 1, 1 << 12, 'rounds'),
  },
  minPages: (p) => 64 + 24 * p.dirs!,
  // per round: at most `dirs` children (each owns a page directory or more), each freeing at most 16
  // frames (its tables at every level and its anonymous pages), each memset with 512 stores; the children's
  // exec, images and teardown
  work: (p) => p.rounds! * p.dirs! * (16 * 520 + 128),
  setup(ctx, p) {
    const image: ImageSpec = { path: '/bin/true', textPages: 1, dataPages: 0, bssPages: 1, stackPages: 1 };
    startProcesses(ctx, 'pt-recycle', 1, function* (t) {
      const k = t.kernel;
      for (let r = 1; r <= p.rounds!; r++) {
        // 1. Children that each own page directories, alive at once.
        const children: Process[] = [];
        let ready = 0;
        let release = false;
        let dirs = 0;
        let frames = 0;
        while (dirs < p.dirs!) {
          const child = k.createProcess(t.vcpu, 'true', t.proc);
          children.push(child);
          t.runner.start(child, function* (c) {
            c.kernel.exec(c.vcpu, c.proc, image);
            yield* runImage(c, image, r);
            ready++;
            while (!release) yield;
          });
          while (ready < children.length) yield;
          dirs += child.tables[2]!;
          // What its exit frees: its page-table pages and its anonymous pages (bss, stack).
          let tables = 0;
          for (let l = 1; l <= 5; l++) tables += child.tables[l]!;
          frames += tables + image.bssPages + image.stackPages;
        }
        // 2. The survivor's area for those frames, its page tables made beforehand.
        const span = k.ptSpan;
        const total = frames + Math.ceil((frames * PAGE_SIZE) / span) + 1;
        const base = mapAnon(t, total);
        const pre = new Uint8Array(total);
        for (let i = 0; i < total; i++) {
          const va = base + i * PAGE_SIZE;
          if (i === 0 || va % span === 0) {
            pre[i] = 1;
            t.write(va, 0);
          }
        }
        // Exactly, once the first round knows its children (every round is the same): the children's
        // images, the survivor's first stores and its memset of the freed frames (512 8-byte stores each).
        if (r === 1) {
          let first = 0;
          for (let i = 0; i < total; i++) first += pre[i]!;
          ctx.expectAccesses(p.rounds! * (children.length * imageAccesses(image) + first + frames * (PAGE_SIZE / 8)));
        }
        // 3. The children exit: their tables go back to the allocator, the page directories among them.
        release = true;
        for (const c of children) yield* t.wait(c);
        // 4. Every freed frame comes back as a data page, memset with 8-byte stores.
        let filled = 0;
        for (let i = 0; i < total && filled < frames; i++) {
          if (pre[i] === 1) continue;
          const va = base + i * PAGE_SIZE;
          const v = t.vcpu;
          for (let off = 0; off < PAGE_SIZE; off += 8) {
            t.accesses++;
            try {
              v.write(va + off, 8, (0xa5a5a5a5 ^ i) | 0, 0x5a5a5a5a);
            } catch (e) {
              if (!(e instanceof Error && e.name === 'GuestAbort')) throw e;
            }
          }
          filled++;
          if (t.tick(512)) yield;
        }
        k.munmap(t.vcpu, t.proc, base, total * PAGE_SIZE);
      }
    });
  },
};

/** Each process's accesses over its own area, drawn by `next(rng)` (a page index). */
function accessLoop(
  name: string,
  doc: string,
  extra: Record<string, ParamDef>,
  makeNext: (p: Readonly<Record<string, number>>, rng: Rng) => () => number,
): SyntheticWorkload {
  return {
    name,
    doc,
    params: {
      pages: int(4096, 1, MAX_PAGES, 'pages of each process'),
      ...extra,
      write: real(0.2, 0, 1, 'fraction of accesses that are writes'),
      procs: int(0, 0, 4096, 'processes (0: one per vCPU)'),
    },
    minPages: (p, vcpus) => (p.procs === 0 ? vcpus : p.procs!) * (p.pages! + Math.ceil(p.pages! / 512) + 8),
    // per process: its accesses, and its area's set-up (a distribution over the pages) and teardown
    work: (p, vcpus) => (p.procs === 0 ? vcpus : p.procs!) * ((p.accesses ?? p.passes! * p.pages!) + 3 * p.pages! + 64),
    setup(ctx, p) {
      const procs = p.procs === 0 ? ctx.vcpus : p.procs!;
      // exactly: n accesses per process
      ctx.expectAccesses(procs * (p.accesses ?? p.passes! * p.pages!));
      startProcesses(ctx, name, procs, function* (t) {
        const rng = ctx.rng.fork();
        const next = makeNext(p, rng);
        const base = mapAnon(t, p.pages!);
        const w = p.write!;
        const n = p.accesses ?? p.passes! * p.pages!;
        for (let i = 0; i < n; i++) {
          const page = next();
          const write = w > 0 && rng.nextFloat() < w;
          t.access(base + page * PAGE_SIZE + ((i & 63) << 6), write ? ACC_WRITE : ACC_READ, word(page, i));
          if (t.tick()) yield;
        }
      });
    },
  };
}

const scan = accessLoop(
  'scan',
  'each process reads/writes its pages in order, pass after pass',
  { passes: int(4, 1, 1 << 20, 'passes over the area') },
  (p) => {
    let i = -1;
    const n = p.pages!;
    return () => (i = (i + 1) % n);
  },
);

const randomWs = accessLoop('random-ws', 'uniformly random pages of a working set', { accesses: int(1_000_000, 1, 1e10, 'accesses per process') }, (p, rng) => {
  const n = p.pages!;
  return () => rng.nextInt(n);
});

const zipf = accessLoop(
  'zipf',
  'Zipf-distributed page popularity (rank r with weight 1/r^s), hot pages scattered over the area',
  { accesses: int(1_000_000, 1, 1e10, 'accesses per process'), s: real(1, 0.01, 5, 'the Zipf exponent') },
  (p, rng) => {
    const n = p.pages!;
    const cdf = new Float64Array(n);
    let sum = 0;
    for (let r = 0; r < n; r++) cdf[r] = sum += 1 / Math.pow(r + 1, p.s!);
    for (let r = 0; r < n; r++) cdf[r] = cdf[r]! / sum;
    const perm = new Int32Array(n);
    for (let i = 0; i < n; i++) perm[i] = i;
    for (let i = n - 1; i > 0; i--) {
      const j = rng.nextInt(i + 1);
      const x = perm[i]!;
      perm[i] = perm[j]!;
      perm[j] = x;
    }
    return () => {
      const u = rng.nextFloat();
      let lo = 0;
      let hi = n - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (cdf[mid]! < u) lo = mid + 1;
        else hi = mid;
      }
      return perm[lo]!;
    };
  },
);

/**
 * KVM's selftest tools/testing/selftests/kvm/dirty_log_test.c, as a guest workload: one area of `pages` pages
 * shared by a thread on each vCPU; in each iteration each thread writes the iteration number into the first 8
 * bytes of `writes` pages picked at random. Under `vmexit migrate` the host harvests the dirty log while it runs,
 * and the destination's memory must equal the source's at the stop.
 */
const dirtyLogTest: SyntheticWorkload = {
  name: 'dirty-log-test',
  doc: "KVM's dirty_log_test: a thread per vCPU writes the iteration number into the first 8 bytes of random pages of one area, iteration after iteration; with harvest=bitmap|clear|ring|pml (on a VM; pml on VMX with TDP) the host harvests the dirty log after each iteration of vCPU 0's thread and checks it against page contents (result.dirtyLog: lost, falseDirty)",
  params: {
    pages: int(1024, 1, MAX_PAGES, 'pages of the test area'),
    iterations: int(32, 1, 1 << 20, 'iterations'),
    writes: int(64, 1, 1 << 20, 'pages each vCPU writes per iteration'),
    harvest: {
      ...int(0, 0, HARVEST_MODES.length - 1, `how the host harvests: ${HARVEST_MODES.join(', ')} (none: left to vmexit migrate; the others need a VM)`),
      choices: HARVEST_MODES,
    },
    ring: int(4096, 256, 65536, 'harvest=ring: entries per vCPU ring (a power of two)'),
  },
  minPages: (p) => p.pages! + Math.ceil(p.pages! / 512) + 16,
  // the threads' stores; with a harvest, per iteration (and once more at the end) a pass over the area's
  // pages and over the log (a ring's entries)
  work: (p, vcpus) =>
    3 * p.pages! + vcpus * p.iterations! * p.writes! * 2 + (p.harvest === 0 ? 0 : (p.iterations! + 1) * (2 * p.pages! + vcpus * p.ring! + 64)),
  setup(ctx, p) {
    const pages = p.pages!;
    const iterations = p.iterations!;
    const writes = p.writes!;
    const mode = HARVEST_MODES[p.harvest!]!;
    // two 4-byte stores per page written (the 8-byte iteration number), by each vCPU's thread
    ctx.expectAccesses(ctx.vcpus * iterations * writes * 2);
    const host = mode === 'none' ? null : dirtyLogHost(ctx, mode, p.ring!, pages);
    let running = ctx.vcpus;
    function* writer(t: Task, base: number, harvester: boolean): Program {
      for (let it = 1; it <= iterations; it++) {
        for (let k = 0; k < writes; k++) {
          const va = base + ctx.rng.nextInt(pages) * PAGE_SIZE;
          t.access(va, ACC_WRITE, it);
          t.access(va + 4, ACC_WRITE, 0);
        }
        // The end of an iteration: the host may harvest here (with `harvest`, after each of vCPU 0's).
        if (harvester && host !== null) host.harvest(t.proc, base);
        yield;
      }
      // The last writer to finish: the host's final harvest sees every store.
      if (--running === 0 && host !== null) host.finish(t.proc, base);
    }
    const v0 = ctx.runner.machine.vcpus[0]!;
    const proc = ctx.kernel.createProcess(v0, 'dirty-log-test');
    ctx.runner.start(
      proc,
      function* (t) {
        const base = mapAnon(t, pages);
        for (let i = 1; i < ctx.vcpus; i++) t.spawnThread((u) => writer(u, base, false), ctx.runner.machine.vcpus[i]!);
        yield* writer(t, base, true);
      },
      v0,
    );
  },
};

/**
 * dirty-log-test's host side (the selftest's main thread): logging on for every writable memslot from the start
 * (with `ring`, KVM_CAP_DIRTY_LOG_RING first, and KVM_EXIT_DIRTY_RING_FULL reaped into the next harvest), then
 * harvests (`bitmap`: KVM_GET_DIRTY_LOG; `clear`: manual protect, KVM_GET_DIRTY_LOG then KVM_CLEAR_DIRTY_LOG;
 * `ring`: every ring collected, KVM_RESET_DIRTY_RINGS, and the bitmap of the host's own writes), each checked
 * against the first 8 bytes of every mapped page of the area (DirtyLogCheck).
 */
function dirtyLogHost(ctx: WorkloadContext, mode: 'bitmap' | 'clear' | 'ring' | 'pml', ringEntries: number, pages: number) {
  const log = ctx.dirtyLog?.() ?? null;
  if (log === null)
    throw new WorkloadError(
      'bad-config',
      'dirty-log-test',
      `harvest=${mode} needs a VM whose MMU logs dirty pages (a run with --backend vmx|svm); natively there is no dirty log`,
    );
  // pml: KVM_GET_DIRTY_LOG as bitmap, with the processor's page-modification log under it (KVM kicks the vCPUs to
  // empty their logs before the harvest, kvm_arch_sync_dirty_log). A VM without PML would silently be bitmap.
  if (mode === 'pml' && !log.cpuDirtyLog)
    throw new WorkloadError('bad-config', 'dirty-log-test', 'harvest=pml needs PML: the pml policy on VMX with --mmu tdp (SVM has no PML)');
  const memory = ctx.runner.machine.memory;
  const slots = memory.slots.filter((s) => !s.readonly);
  if (mode === 'ring') {
    if ((ringEntries & (ringEntries - 1)) !== 0) throw new WorkloadError('bad-value', 'dirty-log-test', `parameter ring=${ringEntries} must be a power of two`);
    try {
      log.enableRing(ctx.vcpus, ringEntries);
    } catch (e) {
      // KVM_CAP_DIRTY_LOG_RING's -EINVAL: e.g. a ring smaller than its reserved entries (64, plus PML's 512 with PML)
      if (e instanceof DirtyRingError) throw new WorkloadError('bad-value', 'dirty-log-test', `parameter ring=${ringEntries}: ${e.message}`);
      throw e;
    }
  }
  for (const s of slots) log.enable(s.id, mode === 'clear' ? { manualProtect: true } : {});
  const dirty = new Set<number>();
  let ringHarvested = 0;
  let fullExits = 0;
  const reap = (): void => {
    ringHarvested += log.collectRings((_slot, gfn) => dirty.add(gfn));
    log.resetDirtyRings();
  };
  log.onRingFull = () => {
    fullExits++;
    reap();
  };
  const last = new Uint32Array(pages);
  let harvests = 0;
  let checked = 0;
  let lost = 0;
  let falseDirty = 0;
  const harvest = (proc: Process, base: number): void => {
    if (mode === 'ring') reap();
    for (const s of slots) {
      const bitmap = log.getDirtyLog(s.id);
      if (mode === 'clear') log.clearDirtyLog(s.id, 0, s.pages, bitmap);
      for (const gfn of DirtyLog.gfns(s, bitmap)) dirty.add(gfn);
    }
    harvests++;
    for (let i = 0; i < pages; i++) {
      const pte = ctx.kernel.inspectPte(proc, base + i * PAGE_SIZE);
      if (pte === null || (pte.lo & 1) === 0) continue; // never written: not mapped yet
      const pa = (pte.lo & 0xfffff000) + (pte.hi & 0xfffff) * 2 ** 32;
      const value = memory.read32(pa);
      const changed = value !== last[i];
      const isDirty = dirty.has(pa / PAGE_SIZE);
      if (changed && !isDirty) lost++;
      if (isDirty && !changed) falseDirty++;
      last[i] = value;
      checked++;
    }
    dirty.clear();
  };
  return {
    harvest,
    finish(proc: Process, base: number): void {
      harvest(proc, base);
      ctx.reportDirtyLog?.({
        mode,
        harvests,
        checked,
        lost,
        falseDirty,
        ...(mode === 'ring' ? { ring: { entries: ringEntries, harvested: ringHarvested, fullExits } } : {}),
      });
    },
  };
}

/** The synthetic workloads, by name. */
export const SYNTHETIC_WORKLOADS: ReadonlyMap<string, SyntheticWorkload> = new Map(
  [demandFault, forkCow, execStorm, mprotectStorm, ptRecycle, scan, randomWs, zipf, dirtyLogTest].map((w) => [w.name, w]),
);
