import type { RaceInstance, RaceScenario } from './thread.js';

/** One step of a schedule: which thread ran and what it did. */
export interface ScheduleStep {
  readonly thread: string;
  readonly action: string;
}

/** One interleaving whose check failed: the schedule to replay it, what each step did, and the violations. */
export interface RaceViolation {
  /** The thread indices in the order they ran: `replaySchedule` runs exactly this interleaving again. */
  readonly schedule: readonly number[];
  readonly steps: readonly ScheduleStep[];
  readonly problems: readonly string[];
}

/** How far `explore` goes: the preemption bound and the guards. */
export interface ExploreOptions {
  /** The most preemptions per interleaving (CHESS's preemption bound): a switch away from a runnable thread. */
  readonly preemptions: number;
  /** Stop after this many interleavings (a guard; default 1e6). `complete` is false when it stopped early. */
  readonly maxInterleavings?: number;
  /** Keep at most this many violations (default 10); all are counted. */
  readonly keepViolations?: number;
}

/** What `explore` found: the interleavings run, whether the bound was covered, and the violations kept. */
export interface ExploreResult {
  readonly scenario: string;
  readonly preemptions: number;
  readonly interleavings: number;
  readonly violations: number;
  /** The steps of all interleavings together. */
  readonly steps: number;
  readonly complete: boolean;
  /** The instances' `stats()` summed over all interleavings. */
  readonly stats: Record<string, number>;
  readonly examples: readonly RaceViolation[];
}

/** A run longer than this is a livelock (a thread that never finishes), reported as a violation. */
const MAX_STEPS = 10_000;

/**
 * Runs every interleaving of `scenario`'s threads with at most `preemptions` preemptions (the method of CHESS,
 * Musuvathi et al. OSDI 2008, and of tokio's loom): a depth-first search over schedules, each run replayed from
 * a fresh instance (stateless model checking). At each step the default is to keep running the current thread;
 * every other runnable thread is an alternative, costing one preemption when the current thread could have
 * continued and none when it finished or spins on a lock. After each interleaving `check()` runs; a run where no
 * thread can move but some are not done is a deadlock.
 */
export function explore(scenario: RaceScenario, options: ExploreOptions): ExploreResult {
  const bound = options.preemptions;
  if (!Number.isInteger(bound) || bound < 0) throw new RangeError(`preemptions must be a non-negative integer, not ${bound}`);
  const maxRuns = options.maxInterleavings ?? 1_000_000;
  const keep = options.keepViolations ?? 10;
  const pending: number[][] = [[]];
  let interleavings = 0;
  let violations = 0;
  let steps = 0;
  const examples: RaceViolation[] = [];
  const stats: Record<string, number> = {};
  while (pending.length > 0) {
    if (interleavings >= maxRuns) break;
    const prefix = pending.pop()!;
    const inst = scenario.create();
    const threads = inst.threads;
    const schedule: number[] = [];
    const trace: ScheduleStep[] = [];
    let cur = -1;
    let pre = 0;
    const problems: string[] = [];
    const run = (t: number): void => {
      trace.push({ thread: threads[t]!.name, action: threads[t]!.step() });
      schedule.push(t);
      cur = t;
    };
    try {
      for (const t of prefix) {
        if (cur >= 0 && t !== cur && isRunnable(inst, cur)) pre++;
        run(t);
      }
      for (;;) {
        const en: number[] = [];
        for (let i = 0; i < threads.length; i++) if (isRunnable(inst, i)) en.push(i);
        if (en.length === 0) {
          const stuck = threads.filter((t) => !t.done).map((t) => t.name);
          if (stuck.length > 0) problems.push(`deadlock: ${stuck.join(', ')} cannot run`);
          break;
        }
        if (schedule.length >= MAX_STEPS) {
          problems.push(`livelock: no end after ${MAX_STEPS} steps`);
          break;
        }
        const curRunnable = cur >= 0 && en.includes(cur);
        const def = curRunnable ? cur : en[0]!;
        for (const alt of en) {
          if (alt === def) continue;
          if (pre + (curRunnable ? 1 : 0) <= bound) pending.push([...schedule, alt]);
        }
        run(def);
      }
    } catch (e) {
      problems.push(`error: ${(e as Error).message}`);
    }
    if (problems.length === 0) problems.push(...inst.check());
    interleavings++;
    steps += schedule.length;
    for (const [k, v] of Object.entries(inst.stats?.() ?? {})) stats[k] = (stats[k] ?? 0) + v;
    if (problems.length > 0) {
      violations++;
      if (examples.length < keep) examples.push({ schedule, steps: trace, problems });
    }
  }
  return { scenario: scenario.name, preemptions: bound, interleavings, violations, steps, complete: pending.length === 0, stats, examples };
}

/** Runs one interleaving of `scenario` given as thread indices (a violation's `schedule`), then finishes it thread by thread. */
export function replaySchedule(scenario: RaceScenario, schedule: readonly number[]): { steps: ScheduleStep[]; problems: string[] } {
  const inst = scenario.create();
  const steps: ScheduleStep[] = [];
  for (const t of schedule) {
    const th = inst.threads[t];
    if (th === undefined || !isRunnable(inst, t)) throw new RangeError(`schedule step ${steps.length}: thread ${t} cannot run`);
    steps.push({ thread: th.name, action: th.step() });
  }
  // The rest: the lowest-numbered thread that can run, each to its end (or until it spins on a lock).
  for (let guard = 0; ; guard++) {
    const i = inst.threads.findIndex((_, k) => isRunnable(inst, k));
    if (i < 0) break;
    if (guard >= MAX_STEPS) return { steps, problems: [`livelock: no end after ${MAX_STEPS} steps`] };
    steps.push({ thread: inst.threads[i]!.name, action: inst.threads[i]!.step() });
  }
  const stuck = inst.threads.filter((t) => !t.done).map((t) => t.name);
  if (stuck.length > 0) return { steps, problems: [`deadlock: ${stuck.join(', ')} cannot run`] };
  return { steps, problems: inst.check() };
}

/** Runs the threads one after another, each to its end (the sequential reference of a scenario). */
export function runSequential(scenario: RaceScenario): { steps: number; problems: string[] } {
  const r = replaySchedule(scenario, []);
  return { steps: r.steps.length, problems: r.problems };
}

function isRunnable(inst: RaceInstance, i: number): boolean {
  const t = inst.threads[i]!;
  return !t.done && t.runnable();
}
