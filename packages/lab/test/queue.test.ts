import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { expandGrid, sweep } from '../src/index.js';
import { jobId, parseRedisUrl, QueueExecutor, runQueueWorker, vmexitBuild, type RedisConnection } from '../src/queue.js';
import { ownRedis } from './helpers/redis.js';

const cells = expandGrid({ workloads: ['demand-fault:pages=16'], variants: ['vmx shadow'], modes: ['long4'], seeds: [1, 2, 3] });

/** `p`, or 'still waiting' after `ms`: what a hang looks like in a test with a bound. */
const within = <T>(p: Promise<T>, ms: number): Promise<T | 'still waiting'> =>
  Promise.race([p, new Promise<'still waiting'>((r) => setTimeout(() => r('still waiting'), ms).unref())]);

/** What `p` failed with, 'settled' if it did not fail, or 'still waiting' after 10 s. */
const failureOf = (p: Promise<unknown>): Promise<Error | 'settled' | 'still waiting'> =>
  within(
    p.then(
      () => 'settled' as const,
      (e: Error) => e,
    ),
    10_000,
  );

/**
 * A worker on `queueName` (in this process, as `vmexit worker` runs), started now: `until(what)` waits for its first log
 * line starting with `what` ('started', 'done'), `stop()` stops it once the cell it holds is finished.
 */
function liveWorker(connection: RedisConnection, queueName: string) {
  const abort = new AbortController();
  const lines: string[] = [];
  const worker = runQueueWorker({ connection, queueName, signal: abort.signal, onLog: (l) => lines.push(l) });
  return {
    until: async (what: string): Promise<void> => {
      for (let i = 0; !lines.some((l) => l.startsWith(what)); i++) {
        if (i > 600) throw new Error(`the worker logged no '${what}': ${lines.join('')}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    stop: async (): Promise<void> => {
      abort.abort();
      await worker;
    },
  };
}

/** Runs a worker on `queueName` until it has finished one cell, then stops it: a worker that takes a job in a race. */
async function finishOne(connection: RedisConnection, queueName: string): Promise<void> {
  const w = liveWorker(connection, queueName);
  await w.until('done');
  await w.stop();
}

/**
 * A worker in a process of its own (lock 1 s) that takes a job on `queueName` and never finishes it: `active` resolves
 * once it holds one, and the test kills it (SIGKILL) to leave the job active with a lock that will expire.
 */
function doomedWorker(port: number, queueName: string): ChildProcess & { active: Promise<void> } {
  const script = [
    "import { Worker } from 'bullmq';",
    `const w = new Worker('${queueName}', () => new Promise(() => {}), { connection: { host: '127.0.0.1', port: ${port}, maxRetriesPerRequest: null }, lockDuration: 1000 });`,
    "w.on('active', () => process.stdout.write('active\\n'));",
  ].join('\n');
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    cwd: resolve(import.meta.dirname, '..'),
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const active = new Promise<void>((r) => child.stdout.on('data', (d: Buffer) => String(d).includes('active') && r()));
  return Object.assign(child, { active });
}

describe('jobId', () => {
  it("names the cell's key and this build, so that sweeps of two builds never share a job", () => {
    const b = vmexitBuild();
    expect(b.id).toMatch(/^[0-9a-f]{16}$/);
    expect(b.packages['@vmexit/lab']).toMatch(/^\d+\.\d+\.\d+/);
    expect(jobId(cells[0]!)).toBe(`cell-${jobId(cells[0]!, b.id).slice(5, 21)}-${b.id.slice(0, 8)}`);
    expect(jobId(cells[0]!, 'ffffffffffffffff')).not.toBe(jobId(cells[0]!));
  });
});

// Redis going away must end a sweep, and a worker, with an error that says so, not leave them waiting: BullMQ's
// connections reconnect forever (the worker's must: maxRetriesPerRequest null), queueing every command meanwhile.
describe('a Redis that goes away', () => {
  it('fails the sweep with a RunFailure naming Redis after redisTimeoutMs, and the executor closes', async (ctx) => {
    const own = await ownRedis(); // a server of the test's own: it kills it
    if (own === null) return ctx.skip(); // outside CI, without redis-server
    const executor = new QueueExecutor({ connection: parseRedisUrl(own.url), queueName: 'gone', redisTimeoutMs: 1000, pollMs: 50 });
    // No worker: the cells stay queued, the sweep polls; Redis dies under it.
    const swept = sweep({ cells, executor });
    await new Promise((r) => setTimeout(r, 500));
    await own.kill();
    const started = Date.now();
    const outcome = await failureOf(swept);
    expect(outcome).toBeInstanceOf(Error);
    expect((outcome as Error).name).toBe('RunFailure');
    // The cause: the socket's error, or "connection closed" when none came before the deadline. A killed server's
    // sockets close without an error, and BullMQ's first reconnection attempt (whose failure is ECONNREFUSED) comes
    // 1 s after the close: as late as the deadline, so which of the two the message names is a race.
    expect((outcome as Error).message).toMatch(
      /^--queue redis:\/\/127\.0\.0\.1:\d+: lost the connection \((ECONNREFUSED|ECONNRESET|connection closed)\) for 1 s; the results so far are kept/,
    );
    // The deadline (1 s) plus at most a poll and a reconnection attempt.
    expect(Date.now() - started).toBeLessThan(5000);
    expect(await within(executor.close(), 3000)).toBeUndefined();
  }, 30_000);

  it('stops a worker with a RunFailure naming Redis after redisTimeoutMs', async (ctx) => {
    const own = await ownRedis();
    if (own === null) return ctx.skip();
    const lines: string[] = [];
    const worker = runQueueWorker({ connection: parseRedisUrl(own.url), queueName: 'gone', redisTimeoutMs: 1000, onLog: (s) => lines.push(s) });
    while (!lines.some((l) => l.startsWith('worker on gone'))) await new Promise((r) => setTimeout(r, 50));
    await own.kill();
    const outcome = await failureOf(worker);
    expect(outcome).toBeInstanceOf(Error);
    // The cause as above: the socket's error, or "connection closed" (before this, the client's status: "reconnecting").
    expect((outcome as Error).message).toMatch(
      /^--queue redis:\/\/127\.0\.0\.1:\d+: lost the connection \((ECONNREFUSED|ECONNRESET|connection closed)\) for 1 s$/,
    );
    // One line for the outage, not one per reconnection attempt.
    expect(lines.filter((l) => l.startsWith('error:'))).toHaveLength(1);
  }, 30_000);

  it('says the connection closed when its deadline comes before any socket error', async (ctx) => {
    const own = await ownRedis();
    if (own === null) return ctx.skip();
    // A killed server's sockets close without an error, and BullMQ tries to reconnect only 1 s later: with a
    // deadline of 0.3 s no error has come by then, and the message says what happened instead of the client's status.
    const worker = runQueueWorker({ connection: parseRedisUrl(own.url), queueName: 'closed', redisTimeoutMs: 300 });
    await new Promise((r) => setTimeout(r, 500));
    await own.kill();
    const outcome = await failureOf(worker);
    expect(outcome).toBeInstanceOf(Error);
    expect((outcome as Error).message).toMatch(/^--queue redis:\/\/127\.0\.0\.1:\d+: lost the connection \(connection closed\) for 0\.3 s$/);
  }, 30_000);

  // Two ways an executor outlives an outage: its connection reconnects when Redis is back, or its owner closes it and
  // runs it again (a new connection). Either way the next outage's message is that outage's.
  it.for(['reconnects', 'is closed and run again'])(
    'names the outage it fails on, not an earlier one, when the executor %s',
    { timeout: 30_000 },
    async (how, ctx) => {
      const own = await ownRedis();
      if (own === null) return ctx.skip();
      const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
      // A deadline of 0.3 s comes before BullMQ's first reconnection attempt (1 s after a close), whose failure would
      // be ECONNREFUSED: an outage that fails a sweep by it cannot have met that error itself.
      const executor = new QueueExecutor({ connection: parseRedisUrl(own.url), queueName: 'healed', redisTimeoutMs: 300, pollMs: 50 });
      const status = async () => (await executor['queue']!.backend.client).status;
      try {
        // The first outage fails the first sweep, and lasts: the executor's connection, which reconnects for ever, meets
        // ECONNREFUSED on its attempts (the precondition, checked: otherwise the old code passes too). Then Redis is back.
        const first = sweep({ cells, executor });
        await sleep(500);
        await own.kill();
        expect(await failureOf(first)).toHaveProperty(
          'message',
          expect.stringMatching(/lost the connection \((connection closed|ECONNRESET|EPIPE)\) for 0\.3 s;/),
        );
        await sleep(2500);
        expect(executor['lastError']).toHaveProperty('code', 'ECONNREFUSED');
        if (how === 'is closed and run again') await executor.close();
        await own.restart();
        if (how === 'reconnects') {
          for (let i = 0; (await status()) !== 'ready'; i++) {
            if (i > 100) throw new Error(`the executor did not reconnect (status ${await status()})`);
            await sleep(50);
          }
        }
        // The second sweep runs on the healed (or a new) connection, and the second outage fails it: by its own cause,
        // the close or a socket error of its own (a killed server's socket may also reset, seen under load), and not by
        // the first outage's ECONNREFUSED, which no reconnection attempt of this one can meet before its deadline.
        const second = sweep({ cells, executor });
        await sleep(500);
        await own.kill();
        const outcome = await failureOf(second);
        expect(outcome).toBeInstanceOf(Error);
        expect((outcome as Error).message).toMatch(
          /^--queue redis:\/\/127\.0\.0\.1:\d+: lost the connection \((connection closed|ECONNRESET|EPIPE)\) for 0\.3 s;/,
        );
      } finally {
        await executor.close();
        await own.kill();
      }
    },
  );
});

describe('a sweep stopped while a worker takes a waiting cell', () => {
  it('keeps the result of a cell that a worker took and finished after the sweep read it as waiting', async (ctx) => {
    const own = await ownRedis();
    if (own === null) return ctx.skip();
    // Stopped at once, the sweep drains: it reads the only cell's job as waiting and fetches it to take it back. Right
    // then (in the sweep's own call of getJob) a worker takes that job and finishes it, as one could in the round trip
    // between the two. The sweep must not take back a job that is no longer waiting: that would delete it with its
    // result (BullMQ removes a finished job, which holds no lock), and the cell would run again in the next sweep.
    const connection = parseRedisUrl(own.url);
    const executor = new QueueExecutor({ connection, queueName: 'taken', pollMs: 50 });
    // The executor's queue, opened now so that its getJob can be wrapped on the instance (nothing global is patched:
    // the package's tests share their workers' modules).
    const queue: Queue = (executor['queue'] = executor['open']());
    const getJob = queue.getJob.bind(queue);
    let raced = false;
    queue.getJob = async (id: string) => {
      if (!raced) {
        raced = true;
        await finishOne(connection, 'taken');
      }
      return getJob(id);
    };
    try {
      const outcome = await within(sweep({ cells: cells.slice(0, 1), executor, signal: AbortSignal.abort() }), 20_000);
      expect(raced).toBe(true);
      expect(outcome === 'still waiting' ? outcome : [outcome.ran, outcome.interrupted, outcome.records.length]).toEqual([1, true, 1]);
    } finally {
      await executor.close();
      await own.kill();
    }
  }, 30_000);
});

describe('a sweep stopped while a dead worker holds a cell that BullMQ hands to another worker', () => {
  // A cell that takes a few seconds: the live worker is still running it when the sweep tries to take it back.
  const slow = expandGrid({ workloads: ['pt-recycle:dirs=64,rounds=4'], variants: ['vmx shadow'], modes: ['long4'], seeds: [1] });
  it.for(['has finished', 'still runs'])(
    'keeps the result when a live worker that BullMQ handed the cell to %s it as the sweep takes it back',
    { timeout: 30_000 },
    async (how, ctx) => {
      const own = await ownRedis();
      if (own === null) return ctx.skip();
      // A worker (a process of its own, lock 1 s) takes the only cell and dies. Once its lock expired the draining sweep
      // goes to take the job back from the active list. Right then BullMQ's stalled check puts the job back on the wait
      // list (done here by hand, as its script does: off the active list, onto the wait list) and a live worker takes
      // it, and finishes it or is still running it (locked, back on the active list). Either way the sweep must leave
      // the job to that worker and collect its result, not delete it (with its result, or under the running worker).
      const connection = parseRedisUrl(own.url);
      const child = doomedWorker(own.port, 'stalled');
      const executor = new QueueExecutor({ connection, queueName: 'stalled', pollMs: 50 });
      // The executor's own queue and connection, the latter's script call wrapped on the instance: the first take-back
      // from the active list runs the race first.
      const queue: Queue = (executor['queue'] = executor['open']());
      const client = await queue.backend.client;
      const runCommand = client.runCommand.bind(client);
      let live: ReturnType<typeof liveWorker> | null = null;
      client.runCommand = async (name: string, args: string[]) => {
        if (live === null && args[0] === queue.keys.active) {
          const id = args[args.length - 1]!;
          const other = new Redis(own.port, '127.0.0.1'); // BullMQ's client takes no plain list commands
          await other.multi().lrem(queue.keys.active!, 1, id).rpush(queue.keys.wait!, id).exec();
          other.disconnect();
          live = liveWorker(connection, 'stalled');
          await live.until(how === 'has finished' ? 'done' : 'started');
        }
        return runCommand(name, args);
      };
      try {
        const stop = new AbortController();
        const swept = sweep({ cells: slow, executor, signal: stop.signal });
        await child.active;
        child.kill('SIGKILL');
        stop.abort();
        const outcome = await within(swept, 20_000);
        expect(live).not.toBe(null);
        expect(outcome === 'still waiting' ? outcome : [outcome.ran, outcome.interrupted, outcome.records.length]).toEqual([1, true, 1]);
      } finally {
        child.kill('SIGKILL');
        await (live as ReturnType<typeof liveWorker> | null)?.stop();
        await executor.close();
        await own.kill();
      }
    },
  );
});

describe('a sweep stopped before any worker came', () => {
  it('takes its cells back and leaves no key of its queue behind', async (ctx) => {
    const own = await ownRedis();
    if (own === null) return ctx.skip();
    // No worker: every cell is still waiting when the sweep, stopped at once, takes them back. Adding them left BullMQ's
    // marker (which wakes workers) as well as the jobs; with the queue empty, nothing of it may stay in Redis.
    const executor = new QueueExecutor({ connection: parseRedisUrl(own.url), queueName: 'unserved', pollMs: 50 });
    try {
      const outcome = await within(sweep({ cells, executor, signal: AbortSignal.abort() }), 10_000);
      expect(outcome === 'still waiting' ? outcome : [outcome.ran, outcome.interrupted]).toEqual([0, true]);
      const client = await executor['queue']!.backend.client;
      expect(await client.scan('0', { MATCH: 'bull:unserved:*', COUNT: 1000 })).toEqual(['0', []]);
    } finally {
      await executor.close();
      await own.kill();
    }
  }, 30_000);
});

describe('a sweep stopped while a dead worker holds a cell', () => {
  it('takes the cell back once its lock expired, instead of waiting for ever for a worker to find it stalled', async (ctx) => {
    const own = await ownRedis();
    if (own === null) return ctx.skip();
    // The only worker (a process of its own, lock 1 s) takes the only cell and dies (SIGKILL): no worker is left to
    // find the job stalled, so it stays active. The sweep is stopped (Ctrl-C): it must not wait for that cell.
    const child = doomedWorker(own.port, 'dead');
    const executor = new QueueExecutor({ connection: parseRedisUrl(own.url), queueName: 'dead', pollMs: 50 });
    try {
      const stop = new AbortController();
      const swept = sweep({ cells: cells.slice(0, 1), executor, signal: stop.signal });
      await child.active;
      child.kill('SIGKILL');
      stop.abort();
      const outcome = await within(swept, 10_000);
      expect(outcome === 'still waiting' ? outcome : [outcome.ran, outcome.interrupted]).toEqual([0, true]);
    } finally {
      child.kill('SIGKILL');
      await executor.close();
      await own.kill();
    }
  }, 30_000);
});
