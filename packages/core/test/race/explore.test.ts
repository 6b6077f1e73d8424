import { describe, expect, it } from 'vitest';
import { explore, replaySchedule, type RaceInstance, type RaceScenario, type RaceThread } from '../../src/index.js';
import { MmuLock } from '../../src/mmu/index.js';

/** Two threads that increment a shared counter with a read step and a write step (a lost update), optionally under a lock. */
function counter(locked: boolean): RaceScenario {
  return {
    name: locked ? 'locked-increment' : 'racy-increment',
    description: 'two increments',
    create(): RaceInstance {
      const shared = { value: 0 };
      const lock = new MmuLock();
      const thread = (id: number): RaceThread => {
        let phase = locked ? 0 : 1;
        let seen = 0;
        return {
          name: `t${id}`,
          get done() {
            return phase === 4;
          },
          runnable: () => phase !== 0 || lock.available(id),
          step(): string {
            switch (phase) {
              case 0:
                if (!lock.tryAcquire(id)) return 'spin';
                phase = 1;
                return 'lock';
              case 1:
                seen = shared.value;
                phase = 2;
                return 'read';
              case 2:
                shared.value = seen + 1;
                phase = locked ? 3 : 4;
                return 'write';
              default:
                lock.release(id);
                phase = 4;
                return 'unlock';
            }
          },
        };
      };
      return { threads: [thread(0), thread(1)], check: () => (shared.value === 2 ? [] : [`lost update: ${shared.value}`]) };
    },
  };
}

describe('explore', () => {
  it('with no preemption runs each order of the two threads once: 2 interleavings, the lost update unseen', () => {
    const r = explore(counter(false), { preemptions: 0 });
    expect(r.interleavings).toBe(2);
    expect(r.violations).toBe(0);
  });

  it('with one preemption finds the lost update, and its schedule reproduces it', () => {
    const r = explore(counter(false), { preemptions: 1 });
    // Two steps each, at most one preemption: the 2 serial orders, and each thread preempted after its read,
    // the other running to its end, then the first finishing (no cost: the other was done): t0 t1 t1 t0 and
    // t1 t0 t0 t1, which both lose an update. t0 t1 t0 t1 would need 2 preemptions.
    expect(r.interleavings).toBe(4);
    expect(r.violations).toBe(2);
    expect(replaySchedule(counter(false), r.examples[0]!.schedule).problems).toEqual(['lost update: 1']);
  });

  it('under the lock no interleaving loses the update: a thread that would spin is not scheduled, so only the 2 orders remain', () => {
    const r = explore(counter(true), { preemptions: 3 });
    expect(r.violations).toBe(0);
    expect(r.complete).toBe(true);
    expect(r.interleavings).toBe(2);
  });

  it('runs exactly the schedules within the bound: three threads, one lock, against a brute-force enumeration', () => {
    // Each thread is a list of steps: 'L' takes the lock (not runnable while another holds it), 'U' releases it,
    // 'n' is a plain step. The enumeration counts every complete schedule whose switches away from a thread that
    // could have continued number at most the bound; a lock-blocked or finished thread is switched from for free.
    const specs = [
      ['n', 'L', 'n', 'U', 'n'],
      ['L', 'U', 'n'],
      ['n', 'n', 'n'],
    ];
    const scenario: RaceScenario = {
      name: 'three',
      description: 'three threads, one lock',
      create(): RaceInstance {
        const lock = new MmuLock();
        const threads = specs.map((ops, id): RaceThread => {
          let pc = 0;
          return {
            name: `t${id}`,
            get done() {
              return pc >= ops.length;
            },
            runnable: () => ops[pc] !== 'L' || lock.available(id),
            step(): string {
              const op = ops[pc]!;
              if (op === 'L' && !lock.tryAcquire(id)) return 'spin';
              if (op === 'U') lock.release(id);
              pc++;
              return op;
            },
          };
        });
        return { threads, check: () => [] };
      },
    };
    const brute = (bound: number): number => {
      let count = 0;
      const go = (pcs: number[], holder: number, cur: number, pre: number): void => {
        const en = specs.flatMap((ops, i) => (pcs[i]! < ops.length && !(ops[pcs[i]!] === 'L' && holder !== -1) ? [i] : []));
        if (en.length === 0) {
          count++;
          return;
        }
        for (const t of en) {
          const p = pre + (en.includes(cur) && t !== cur ? 1 : 0);
          if (p > bound) continue;
          const op = specs[t]![pcs[t]!];
          go(
            pcs.map((x, i) => (i === t ? x + 1 : x)),
            op === 'L' ? t : op === 'U' ? -1 : holder,
            t,
            p,
          );
        }
      };
      go([0, 0, 0], -1, -1, 0);
      return count;
    };
    // Bound 0: the 3! orders; unbounded, 3,300 schedules.
    expect([0, 1, 2, 3].map((b) => brute(b))).toEqual([6, 47, 237, 755]);
    for (const b of [0, 1, 2, 3]) expect(explore(scenario, { preemptions: b }).interleavings, `bound ${b}`).toBe(brute(b));
  });

  it('refuses a negative bound', () => {
    expect(() => explore(counter(false), { preemptions: -1 })).toThrow(/non-negative integer/);
  });
});

describe('MmuLock', () => {
  it('counts acquisitions and one contention per waiting acquisition', () => {
    const l = new MmuLock();
    l.acquire(0);
    expect(l.tryAcquire(1)).toBe(false);
    expect(l.tryAcquire(1)).toBe(false);
    l.release(0);
    expect(l.tryAcquire(1)).toBe(true);
    expect([l.acquired, l.contended]).toEqual([2, 1]);
    expect(() => l.release(0)).toThrow(/held by 1/);
  });
});
