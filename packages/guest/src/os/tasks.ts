import { ACC_READ, ACC_WRITE, GuestAbort, type Machine, type Vcpu } from '@vmexit/core';
import type { Kernel, Process } from './kernel.js';

/**
 * A user program: a generator that runs its process's instructions on `task.vcpu` and gives the CPU back
 * (`yield`) when its quantum (`task.budget`, in operations) is used up or when it waits for something.
 */
export type Program = Generator<void, void, void>;
/** Starts a program for a task: the generator the task runner resumes at each quantum. */
export type ProgramFactory = (task: Task) => Program;

/** A thread of a process, pinned to one vCPU. */
export class Task {
  /** Operations left in the current quantum. */
  budget = 0;
  /**
   * The task is blocked until this process has exited (wait4), or with `vforkWait`, until this vfork child has
   * released the task's address space (at its exec or exit).
   */
  waitingFor: Process | null = null;
  /** `waitingFor` is a vfork child: the task sleeps in vfork (kernel/fork.c `wait_for_vfork_done`). */
  vforkWait = false;
  done = false;
  /** User accesses this task performed (represented accesses for trace records). */
  accesses = 0;
  program!: Program;
  /** Its index in its vCPU's task list (the runner's). */
  pos = 0;
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

  /**
   * vfork: the child, which runs in this process's address space, runs `program` on a vCPU the runner picks. The
   * caller then sleeps until the child has exec'd or exited: `yield* task.vforkDone(child)`.
   */
  vfork(program: ProgramFactory): Process {
    const child = this.kernel.vfork(this.vcpu, this.proc);
    this.runner.start(child, program);
    return child;
  }

  /**
   * Blocks until the vfork child `p` has released this task's address space, at its exec or exit (kernel/fork.c
   * `wait_for_vfork_done`, woken by `complete_vfork_done`). Use as `yield* task.vforkDone(p)`.
   */
  *vforkDone(p: Process): Program {
    while (p.borrowedMm !== null) {
      this.waitingFor = p;
      this.vforkWait = true;
      yield;
    }
    this.waitingFor = null;
    this.vforkWait = false;
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

/** How the task runner schedules programs on the vCPUs: the quantum bounds, and a hook called at each quantum's end. */
export interface TaskRunnerOptions {
  /** Quantum bounds, in operations (the scheduler draws each quantum uniformly). */
  readonly quantumMin?: number;
  readonly quantumMax?: number;
  /** Called after each quantum with the number of user accesses so far. */
  readonly onQuantum?: (accesses: number) => void;
}

/**
 * A set of task positions with `firstFrom` and `last` in O(log n): a tree of counts over the positions.
 */
class PositionSet {
  private size = 1;
  private cnt = new Int32Array(2);
  /** Tree nodes visited (a cost counter for tests). */
  steps = 0;

  get count(): number {
    return this.cnt[1]!;
  }

  set(i: number, on: boolean): void {
    if (i >= this.size) this.grow(i);
    let x = this.size + i;
    const d = (on ? 1 : 0) - this.cnt[x]!;
    if (d === 0) return;
    for (; x >= 1; x >>= 1) {
      this.steps++;
      this.cnt[x]! += d;
    }
  }

  /** The lowest position at or above `i` in the set, or -1. */
  firstFrom(i: number): number {
    if (i >= this.size) return -1;
    let x = this.size + i;
    if (this.cnt[x] !== 0) return i;
    for (; x > 1; x >>= 1) {
      this.steps++;
      if ((x & 1) === 0 && this.cnt[x + 1] !== 0) return this.descend(x + 1, false);
    }
    return -1;
  }

  /** The highest position in the set, or -1. */
  last(): number {
    return this.cnt[1] === 0 ? -1 : this.descend(1, true);
  }

  private descend(x: number, high: boolean): number {
    while (x < this.size) {
      this.steps++;
      x = 2 * x;
      if (high ? this.cnt[x + 1] !== 0 : this.cnt[x] === 0) x++;
    }
    return x - this.size;
  }

  private grow(i: number): void {
    let size = this.size;
    while (size <= i) size *= 2;
    const cnt = new Int32Array(2 * size);
    cnt.set(this.cnt.subarray(this.size, 2 * this.size), size);
    for (let x = size - 1; x >= 1; x--) cnt[x] = cnt[2 * x]! + cnt[2 * x + 1]!;
    this.steps += size;
    this.size = size;
    this.cnt = cnt;
  }
}

/**
 * The tasks of one vCPU in the order they started (`tasks`, never reordered). The round robin is that of a
 * list from which the finished tasks are dropped once it is over 64 long (`kept`: the tasks still in that
 * list), with a position (`cut`): the next task to try is the first runnable one at or after it, cyclically.
 */
class VcpuTasks {
  readonly tasks: Task[] = [];
  /** The tasks that can run now: not done, not waiting for a process that has not exited. */
  readonly runnable = new PositionSet();
  /** The tasks not dropped from the round-robin list. */
  readonly kept = new PositionSet();
  /** The finished tasks still in the round-robin list. */
  readonly done: Task[] = [];
  cut = 0;
}

/** The position of the runnable task a vCPU runs next: the first from its round-robin position, else from the start. */
function nextRunnable(q: VcpuTasks): number {
  const at = q.runnable.firstFrom(q.cut);
  return at >= 0 ? at : q.runnable.firstFrom(0);
}

/**
 * Runs tasks on the machine's vCPUs. The machine's seeded scheduler picks which vCPU runs the next quantum
 * (among those with a runnable task) and how long it is; each vCPU runs its tasks round robin, switching
 * address spaces with a CR3 write (none between two tasks of one address space: Kernel.switchTo). A process ends
 * (exit) when its last task finishes. Each quantum costs O(vCPUs + log tasks): the runnable tasks are kept in a
 * set, and a task that waits for a process is woken when that process exits, or in vfork when its child execs
 * (Linux's run queue and `wait_queue_head`, kernel/sched/core.c `try_to_wake_up`).
 */
export class TaskRunner {
  readonly tasks: Task[] = [];
  private readonly perVcpu: VcpuTasks[];
  /** The tasks blocked on each process: in wait4 until it exits, or in vfork until it releases their space. */
  private readonly waiters = new Map<Process, Task[]>();
  private nextVcpu = 0;
  private live = 0;
  accesses = 0;
  private readonly qmin: number;
  private readonly qmax: number;

  constructor(
    readonly machine: Machine,
    readonly kernel: Kernel,
    private readonly options: TaskRunnerOptions = {},
  ) {
    this.perVcpu = machine.vcpus.map(() => new VcpuTasks());
    this.qmin = options.quantumMin ?? 2000;
    this.qmax = options.quantumMax ?? 6000;
  }

  /** Tree nodes the scheduling structures visited (a cost counter for tests). */
  get steps(): number {
    let n = 0;
    for (const q of this.perVcpu) n += q.runnable.steps + q.kept.steps;
    return n;
  }

  /** Starts `program` as a task of `proc` on `vcpu` (by default the next vCPU in turn). */
  start(proc: Process, program: ProgramFactory, vcpu?: Vcpu): Task {
    const v = vcpu ?? this.machine.vcpus[this.nextVcpu++ % this.machine.vcpus.length]!;
    const t = new Task(this, proc, v);
    t.program = program(t);
    proc.threads++;
    this.tasks.push(t);
    const q = this.perVcpu[v.id]!;
    t.pos = q.tasks.length;
    q.tasks.push(t);
    q.kept.set(t.pos, true);
    q.runnable.set(t.pos, true);
    this.live++;
    return t;
  }

  private runnable(t: Task): boolean {
    const p = t.waitingFor;
    return !t.done && (p === null || p.exited || (t.vforkWait && p.borrowedMm === null));
  }

  /** Runs until every task has finished. */
  run(): void {
    const vcpus = this.machine.vcpus;
    const ready: number[] = [];
    for (;;) {
      ready.length = 0;
      for (let i = 0; i < vcpus.length; i++) if (this.perVcpu[i]!.runnable.count > 0) ready.push(i);
      if (ready.length === 0) {
        if (this.live > 0) throw new Error('guest deadlock: every remaining task waits for a process that never exits');
        return;
      }
      const vi = ready[this.machine.scheduler.pick(ready.length)]!;
      const q = this.perVcpu[vi]!;
      const at = nextRunnable(q);
      // the list's next position, or its first when the task was its last
      q.cut = q.kept.last() > at ? at + 1 : 0;
      const t = q.tasks[at]!;
      this.runQuantum(t);
      const stopped = t.done || !this.runnable(t);
      if (stopped && !t.done) this.block(t);
      // A task that finished or waits gives up the vCPU at once (kernel/sched/core.c `__schedule`): the vCPU
      // switches to its next task now, not at that task's quantum, so that flushes of the old space no longer
      // reach it; with nothing left to run it goes idle, in lazy TLB mode (Kernel.idle).
      if (stopped) this.switchAway(q, t.vcpu);
      this.compact(vi);
    }
  }

  /** After its task stopped: `v` switches to the task its next quantum will run, or to the idle task. */
  private switchAway(q: VcpuTasks, v: Vcpu): void {
    if (q.runnable.count === 0) {
      this.kernel.idle(v);
      return;
    }
    this.kernel.switchTo(v, q.tasks[nextRunnable(q)]!.proc);
  }

  private runQuantum(t: Task): void {
    const v = t.vcpu;
    this.kernel.switchTo(v, t.proc);
    t.budget = this.machine.scheduler.quantum(this.qmin, this.qmax);
    v.setCpl(3);
    const before = t.accesses;
    const p = t.proc;
    const borrowing = p.borrowedMm !== null;
    const r = t.program.next();
    v.setCpl(0);
    this.accesses += t.accesses - before;
    // A vfork child that exec'd in this quantum released its parent's space: the parent wakes (complete_vfork_done).
    if (borrowing && p.borrowedMm === null) this.wake(p);
    if (r.done === true) this.finish(t);
    this.options.onQuantum?.(this.accesses);
  }

  /** `t` waits for a process that has not exited: off the runnable set until that process exits. */
  private block(t: Task): void {
    const p = t.waitingFor!;
    this.perVcpu[t.vcpu.id]!.runnable.set(t.pos, false);
    const w = this.waiters.get(p);
    if (w === undefined) this.waiters.set(p, [t]);
    else w.push(t);
  }

  private finish(t: Task): void {
    t.done = true;
    const q = this.perVcpu[t.vcpu.id]!;
    q.runnable.set(t.pos, false);
    q.done.push(t);
    this.live--;
    const p = t.proc;
    p.threads--;
    if (p.threads === 0 && !p.exited) this.kernel.exit(t.vcpu, p);
    if (p.exited) this.wake(p);
  }

  /** Makes the tasks waiting on `p` that can run now runnable again; the others keep waiting. */
  private wake(p: Process): void {
    const w = this.waiters.get(p);
    if (w === undefined) return;
    const still: Task[] = [];
    for (const t of w) {
      if (this.runnable(t)) this.perVcpu[t.vcpu.id]!.runnable.set(t.pos, true);
      else still.push(t);
    }
    if (still.length === 0) this.waiters.delete(p);
    else this.waiters.set(p, still);
  }

  /**
   * Drops the finished tasks from a round-robin list over 64 long, keeping its position on the same next
   * task (or on its first one when no task is left after it). (It used to reset the position to 0 whenever the
   * list was over 64 long, after every quantum, even with nothing to drop: with more than 64 live tasks on a
   * vCPU the first runnable one ran every quantum and the others never did, so `pt-recycle:dirs=127`, whose
   * parent waits on its 65th child, never finished.)
   */
  private compact(vi: number): void {
    const q = this.perVcpu[vi]!;
    if (q.kept.count <= 64 || q.done.length === 0) return;
    for (const t of q.done) q.kept.set(t.pos, false);
    q.done.length = 0;
    if (q.kept.last() < q.cut) q.cut = 0;
  }
}
