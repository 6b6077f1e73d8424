import { ACC_READ, ACC_WRITE, GuestAbort, type Machine, type Vcpu } from '@vmexit/core';
import type { Kernel, Process } from './kernel.js';

/**
 * A user program: a generator that runs its process's instructions on `task.vcpu` and gives the CPU back
 * (`yield`) when its quantum (`task.budget`, in operations) is used up or when it waits for something.
 */
export type Program = Generator<void, void, void>;
export type ProgramFactory = (task: Task) => Program;

/** A thread of a process, pinned to one vCPU. */
export class Task {
  /** Operations left in the current quantum. */
  budget = 0;
  /** The task is blocked until this process has exited (wait4). */
  waitingFor: Process | null = null;
  done = false;
  /** User accesses this task performed (represented accesses for trace records). */
  accesses = 0;
  program!: Program;
  /** aliased-pdes: reads of the arena go through its read-only alias view, this far above. */
  private readonly aliasDelta: number;
  private readonly arenaBase: number;
  private readonly arenaEnd: number;

  constructor(
    readonly runner: TaskRunner,
    readonly proc: Process,
    readonly vcpu: Vcpu,
  ) {
    const k = runner.kernel;
    this.aliasDelta = k.personalities.has('aliased-pdes') ? k.layout.arenaSize : 0;
    this.arenaBase = k.layout.arenaBase;
    this.arenaEnd = k.layout.arenaBase + k.layout.arenaSize;
  }

  get kernel(): Kernel {
    return this.runner.kernel;
  }

  /** A user load of 4 bytes; false when it ended in SIGSEGV. */
  read(va: number): boolean {
    this.accesses++;
    try {
      this.vcpu.read(va, 4);
      return true;
    } catch (e) {
      if (e instanceof GuestAbort) return false;
      throw e;
    }
  }

  /** A user store of 4 bytes; false when it ended in SIGSEGV. */
  write(va: number, value: number): boolean {
    this.accesses++;
    try {
      this.vcpu.write(va, 4, value);
      return true;
    } catch (e) {
      if (e instanceof GuestAbort) return false;
      throw e;
    }
  }

  /** A user access with no data (ACC_READ, ACC_WRITE, ACC_FETCH); false when it ended in SIGSEGV. */
  touch(va: number, kind: number): boolean {
    this.accesses++;
    try {
      this.vcpu.touch(va, kind);
      return true;
    } catch (e) {
      if (e instanceof GuestAbort) return false;
      throw e;
    }
  }

  /**
   * Reads (kind ACC_READ) or writes (ACC_WRITE, storing `value`) 4 bytes at `va`. With aliased-pdes, a read
   * of the arena goes through the alias view (the other PDE, without R/W, that maps the same page table).
   */
  access(va: number, kind: number, value: number): boolean {
    if (kind === ACC_READ && this.aliasDelta !== 0 && va >= this.arenaBase && va < this.arenaEnd) return this.read(va + this.aliasDelta);
    return kind === ACC_WRITE ? this.write(va, value) : kind === ACC_READ ? this.read(va) : this.touch(va, kind);
  }

  /** fork: the child runs `program` on a vCPU the runner picks. */
  fork(program: ProgramFactory): Process {
    const child = this.kernel.fork(this.vcpu, this.proc);
    this.runner.start(child, program);
    return child;
  }

  /** A new thread of this process on another vCPU (clone with CLONE_VM). */
  spawnThread(program: ProgramFactory, vcpu: Vcpu): Task {
    return this.runner.start(this.proc, program, vcpu);
  }

  /** Blocks until `p` has exited (wait4). Use as `yield* task.wait(p)`. */
  *wait(p: Process): Program {
    while (!p.exited) {
      this.waitingFor = p;
      yield;
    }
    this.waitingFor = null;
  }

  /** Counts one operation; true when the quantum is used up (then the program should yield). */
  tick(n = 1): boolean {
    this.budget -= n;
    return this.budget <= 0;
  }
}

export interface TaskRunnerOptions {
  /** Quantum bounds, in operations (the scheduler draws each quantum uniformly). */
  readonly quantumMin?: number;
  readonly quantumMax?: number;
  /** Called after each quantum with the number of user accesses so far. */
  readonly onQuantum?: (accesses: number) => void;
}

/**
 * Runs tasks on the machine's vCPUs. The machine's seeded scheduler picks which vCPU runs the next quantum
 * (among those with a runnable task) and how long it is; each vCPU runs its tasks round robin, switching
 * address spaces with a CR3 write. A process ends (exit) when its last task finishes.
 */
export class TaskRunner {
  readonly tasks: Task[] = [];
  private readonly perVcpu: Task[][];
  private readonly rr: number[];
  private nextVcpu = 0;
  accesses = 0;
  private readonly qmin: number;
  private readonly qmax: number;

  constructor(
    readonly machine: Machine,
    readonly kernel: Kernel,
    private readonly options: TaskRunnerOptions = {},
  ) {
    this.perVcpu = machine.vcpus.map(() => []);
    this.rr = machine.vcpus.map(() => 0);
    this.qmin = options.quantumMin ?? 2000;
    this.qmax = options.quantumMax ?? 6000;
  }

  /** Starts `program` as a task of `proc` on `vcpu` (by default the next vCPU in turn). */
  start(proc: Process, program: ProgramFactory, vcpu?: Vcpu): Task {
    const v = vcpu ?? this.machine.vcpus[this.nextVcpu++ % this.machine.vcpus.length]!;
    const t = new Task(this, proc, v);
    t.program = program(t);
    proc.threads++;
    this.tasks.push(t);
    this.perVcpu[v.id]!.push(t);
    return t;
  }

  private runnable(t: Task): boolean {
    return !t.done && (t.waitingFor === null || t.waitingFor.exited);
  }

  /** Runs until every task has finished. */
  run(): void {
    const vcpus = this.machine.vcpus;
    const ready: number[] = [];
    for (;;) {
      ready.length = 0;
      let live = false;
      for (let i = 0; i < vcpus.length; i++) {
        const list = this.perVcpu[i]!;
        let any = false;
        for (const t of list) {
          if (!t.done) live = true;
          if (this.runnable(t)) any = true;
        }
        if (any) ready.push(i);
      }
      if (ready.length === 0) {
        if (live) throw new Error('guest deadlock: every remaining task waits for a process that never exits');
        return;
      }
      const vi = ready[this.machine.scheduler.pick(ready.length)]!;
      const list = this.perVcpu[vi]!;
      let t: Task | undefined;
      for (let k = 0; k < list.length; k++) {
        const c = list[(this.rr[vi]! + k) % list.length]!;
        if (this.runnable(c)) {
          t = c;
          this.rr[vi] = (this.rr[vi]! + k + 1) % list.length;
          break;
        }
      }
      this.runQuantum(t!);
      this.compact(vi);
    }
  }

  private runQuantum(t: Task): void {
    const v = t.vcpu;
    this.kernel.switchTo(v, t.proc);
    t.budget = this.machine.scheduler.quantum(this.qmin, this.qmax);
    v.setCpl(3);
    const before = t.accesses;
    const r = t.program.next();
    v.setCpl(0);
    this.accesses += t.accesses - before;
    if (r.done === true) this.finish(t);
    this.options.onQuantum?.(this.accesses);
  }

  private finish(t: Task): void {
    t.done = true;
    const p = t.proc;
    p.threads--;
    if (p.threads === 0 && !p.exited) this.kernel.exit(t.vcpu, p);
  }

  /**
   * Drops finished tasks from a long list, keeping the round-robin position on the same next task. (It used to
   * reset the position to 0 whenever the list was over 64 long, after every quantum, even with nothing to drop:
   * with more than 64 live tasks on a vCPU the first runnable one ran every quantum and the others never did,
   * so `pt-recycle:dirs=127`, whose parent waits on its 65th child, never finished.)
   */
  private compact(vi: number): void {
    const list = this.perVcpu[vi]!;
    if (list.length <= 64) return;
    const next = this.rr[vi]!;
    let kept = 0;
    let nextKept = 0;
    for (let i = 0; i < list.length; i++) {
      if (i === next) nextKept = kept;
      const t = list[i]!;
      if (!t.done) list[kept++] = t;
    }
    if (kept === list.length) return;
    list.length = kept;
    this.rr[vi] = kept === 0 ? 0 : nextKept % kept;
  }
}
