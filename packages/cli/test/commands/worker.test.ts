import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { deterministicPart, expandGrid, readResults, sweep, type CellRecord } from '@vmexit/lab';
import { parseRedisUrl, QueueExecutor, vmexitBuild } from '@vmexit/lab/queue';
import { captureStdio } from '../helpers/stdio.js';
import { testRedis } from '../helpers/redis.js';
import { main } from '../../src/program.js';

const { err } = captureStdio();
const BIN = fileURLToPath(new URL('../../dist/bin/vmexit.js', import.meta.url));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-queue-'));
let redis: Awaited<ReturnType<typeof testRedis>> = null;
const workers: ChildProcess[] = [];

beforeAll(async () => {
  redis = await testRedis();
});
afterAll(async () => {
  for (const w of workers) if (w.exitCode === null && w.signalCode === null) w.kill('SIGKILL');
  await redis?.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** A `vmexit worker` subprocess whose stderr lines are collected. */
function startWorker(url: string, queue: string, lockMs = 1500): { proc: ChildProcess; log: string[]; started: Promise<string> } {
  const proc = spawn(process.execPath, [BIN, 'worker', '--queue', url, '--queue-name', queue, '--lock-ms', String(lockMs)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  workers.push(proc);
  const log: string[] = [];
  let onStart: (id: string) => void = () => {};
  const started = new Promise<string>((r) => (onStart = r));
  proc.stderr!.setEncoding('utf8').on('data', (s: string) => {
    log.push(s);
    const m = /started (cell-[0-9a-f]+-[0-9a-f]+)/.exec(s);
    if (m !== null) onStart(m[1]!);
  });
  return { proc, log, started };
}

const byKey = (rs: readonly CellRecord[]): Record<string, unknown> => Object.fromEntries(rs.map((r) => [r.cell.key, deterministicPart(r)]));

describe('sweep --queue and worker (BullMQ on Redis)', () => {
  it('collects every cell once from two workers, one killed mid-job, equal to a local sweep', async (ctx) => {
    if (redis === null) return ctx.skip(); // outside CI, without redis-server
    const url = redis.url;
    const queue = `vmexit-test-${process.pid}`;
    const grid = ['--workload', 'demand-fault:pages=8', '--variant', 'vmx shadow', '--seeds', '1..3'];
    // Worker A takes the first cell and is killed (SIGKILL: no goodbye, its lock just stops being renewed);
    // worker B, started after, finds A's job stalled once the lock expires and runs it again.
    const a = startWorker(url, queue);
    const swept = main(['sweep', ...grid, '--out', path.join(tmp, 'queued'), '--queue', url, '--queue-name', queue]);
    const killed = await a.started;
    a.proc.kill('SIGKILL');
    const b = startWorker(url, queue);
    expect(await swept).toBe(0);
    expect(b.log.join('')).toContain(`started ${killed}`);
    b.proc.kill('SIGTERM');

    expect(await main(['sweep', ...grid, '--out', path.join(tmp, 'local')])).toBe(0);
    const queued = readResults(path.join(tmp, 'queued', 'results.jsonl'));
    const local = readResults(path.join(tmp, 'local', 'results.jsonl'));
    expect(queued.length).toBe(3);
    expect(new Set(queued.map((r) => r.cell.key)).size).toBe(3);
    expect(byKey(queued)).toEqual(byKey(local));
    // The summary is the local sweep's, byte for byte, though the killed worker's cell came in last.
    expect(fs.readFileSync(path.join(tmp, 'queued', 'summary.csv'), 'utf8')).toBe(fs.readFileSync(path.join(tmp, 'local', 'summary.csv'), 'utf8'));
    expect(err.join('')).toMatch(/queued 3 cells on vmexit-test-\d+/);
  }, 240_000);

  it('keeps the result of the worker that holds the lock when a worker whose lock expired finishes the same cell', async (ctx) => {
    if (redis === null) return ctx.skip();
    const queue = `vmexit-test-slow-${process.pid}`;
    // Of two workers, the one that takes the cell (A) is stopped (SIGSTOP: a worker cut off from Redis, or swapped
    // out) for longer than its lock (1.5 s); the other (B) finds the job stalled and starts it again; then A
    // resumes mid-cell and finishes. A's lock is gone (BullMQ checks its token when a job completes), so A's
    // result must not be taken: the cell is collected once, from B, and A is told that its lock does not hold
    // (Lock mismatch: B's lock is there) or that the job is gone (Missing key: the sweep collected B's first).
    const workers2 = [startWorker(redis.url, queue), startWorker(redis.url, queue)];
    const out = path.join(tmp, 'slow');
    const swept = main(['sweep', '--workload', 'demand-fault:pages=500', '--variant', 'vmx shadow', '--out', out, '--queue', redis.url, '--queue-name', queue]);
    const [a, b] = await Promise.race(workers2.map((w, i) => w.started.then(() => (i === 0 ? workers2 : [workers2[1]!, workers2[0]!]))));
    const id = await a!.started;
    a!.proc.kill('SIGSTOP');
    expect(await b!.started).toBe(id);
    a!.proc.kill('SIGCONT');
    expect(await swept).toBe(0);
    expect(readResults(path.join(out, 'results.jsonl')).map((r) => r.cell.key)).toEqual([id.slice(5, 21)]);
    expect(b!.log.join('')).toContain(`done ${id}`);
    const refused = new RegExp(`(Lock mismatch|Missing lock|Missing key) for job ${id}\\.( Cmd)? moveToFinished`);
    while (!refused.test(a!.log.join(''))) await new Promise((r) => setTimeout(r, 100));
    expect(a!.log.join('')).not.toContain(`done ${id}`);
    for (const w of workers2) w.proc.kill('SIGTERM');
  }, 120_000);

  it('collects what a sweep killed mid-way left, when the same sweep is run again', async (ctx) => {
    if (redis === null) return ctx.skip();
    const queue = `vmexit-test-resume-${process.pid}`;
    const w = startWorker(redis.url, queue);
    const out = path.join(tmp, 'resume');
    const args = [
      'sweep',
      '--workload',
      'demand-fault:pages=16',
      '--variant',
      'vmx shadow',
      '--seeds',
      '1..4',
      '--out',
      out,
      '--queue',
      redis.url,
      '--queue-name',
      queue,
    ];
    // The first sweep is a process of its own, killed (SIGKILL: its machine crashed) once a result is in --out.
    const first = spawn(process.execPath, [BIN, ...args], { stdio: 'ignore' });
    workers.push(first);
    const results = path.join(out, 'results.jsonl');
    while (!(fs.existsSync(results) && fs.readFileSync(results, 'utf8').includes('\n'))) await new Promise((r) => setTimeout(r, 50));
    first.kill('SIGKILL');
    await new Promise((r) => first.once('exit', r));
    const before = readResults(results).length;
    expect(before).toBeGreaterThanOrEqual(1);
    const lines = err.length;
    expect(await main(args)).toBe(0);
    // Every cell once: the ones in --out skipped, the others collected (finished meanwhile, or run now).
    const after = readResults(results);
    expect(after.length).toBe(4);
    expect(new Set(after.map((r) => r.cell.key)).size).toBe(4);
    expect(err.slice(lines).join('')).toContain(`queued ${4 - before} cells on ${queue}`);
    w.proc.kill('SIGTERM');
  }, 120_000);

  it('finishes the cell it holds on SIGTERM, hands in its result and exits 0', async (ctx) => {
    if (redis === null) return ctx.skip();
    const queue = `vmexit-test-term-${process.pid}`;
    const w = startWorker(redis.url, queue);
    const out = path.join(tmp, 'term');
    const swept = main(['sweep', '--workload', 'demand-fault:pages=500', '--variant', 'vmx shadow', '--out', out, '--queue', redis.url, '--queue-name', queue]);
    const id = await w.started;
    w.proc.kill('SIGTERM'); // mid-cell: its first, in a fresh thread
    const code = await new Promise<number | null>((r) => w.proc.once('exit', (c) => r(c)));
    expect(code).toBe(0);
    expect(w.log.join('')).toContain(`finishing the cells it holds, then stopping`);
    expect(w.log.join('')).toContain(`done ${id}`);
    // No other worker: the sweep can only have its cell from the one that stopped.
    expect(await swept).toBe(0);
    expect(readResults(path.join(out, 'results.jsonl')).map((r) => r.cell.key)).toEqual([id.slice(5, 21)]);
  }, 120_000);

  it('stops as a local sweep does: takes back the cells not started, keeps the one running, and leaves no job behind', async (ctx) => {
    if (redis === null) return ctx.skip();
    const queue = `vmexit-test-stop-${process.pid}`;
    // The worker stays alive here: a lock that outlasts its cell even if CPU contention delays the renewals (with
    // 1.5 s, a renewal late by more than 0.75 s would let it expire, and the sweep would rightly take the cell back
    // as a dead worker's).
    const w = startWorker(redis.url, queue, 30_000);
    // 2 cells, 1 worker: the sweep is stopped (Ctrl-C) while the worker runs the first. As the local executors do
    // (and as `vmexit sweep` says: "stopping after the cells running now"), it must wait for that cell and keep
    // its result, take back the second, and leave nothing in Redis (no finished job that nobody reads).
    const executor = new QueueExecutor({ connection: parseRedisUrl(redis.url), queueName: queue, pollMs: 50 });
    // The first cell must still be running when the stop reaches Redis: a cell of a second or more (pt-recycle, about
    // 1.6 million exits), not one of 0.1 s that a loaded machine lets finish first, after which the worker takes the
    // second cell before the sweep can take it back. Only the first runs: the second is taken back.
    const cells = expandGrid({ workloads: ['pt-recycle:dirs=64,rounds=4'], variants: ['vmx shadow'], modes: ['long4'], seeds: [1, 2] });
    const stop = new AbortController();
    const out = path.join(tmp, 'stopped');
    const swept = sweep({ cells, out, executor, signal: stop.signal });
    const id = await w.started;
    stop.abort();
    const outcome = await swept;
    await executor.close();
    expect([outcome.ran, outcome.interrupted]).toEqual([1, true]);
    expect(readResults(path.join(out, 'results.jsonl')).map((r) => r.cell.key)).toEqual([id.slice(5, 21)]);
    expect(w.log.join('').match(/started /g)).toHaveLength(1);
    // Once the worker stopped too: a worker serving the queue writes its meta back (see the next test).
    w.proc.kill('SIGTERM');
    expect(await new Promise<number | null>((r) => w.proc.once('exit', (c) => r(c)))).toBe(0);
    expect(await keysWithoutExpiry(redis.url, queue)).toEqual([]);
  }, 120_000);

  it('refuses the cells of a sweep of another vmexit build, naming both builds', async (ctx) => {
    if (redis === null) return ctx.skip();
    const queue = `vmexit-test-build-${process.pid}`;
    const w = startWorker(redis.url, queue);
    // This sweep says it runs another build (as a coordinator on a machine with another checkout would): the
    // worker must not run its cell, whose result could differ, and the sweep must say why, not store a result.
    const other = { id: 'ffffffffffffffff', packages: { '@vmexit/lab': '9.9.9' } };
    const executor = new QueueExecutor({ connection: parseRedisUrl(redis.url), queueName: queue, build: other, pollMs: 50 });
    const cells = expandGrid({ workloads: ['demand-fault:pages=16'], variants: ['vmx shadow'], modes: ['long4'], seeds: [1] });
    const out = path.join(tmp, 'other-build');
    try {
      await expect(sweep({ cells, out, executor })).rejects.toThrow(
        new RegExp(
          `: a worker runs another vmexit \\(build ${vmexitBuild().id}, @vmexit/lab \\S+ on \\S+\\) than this sweep \\(build ffffffffffffffff, @vmexit/lab 9\\.9\\.9\\): run the same build on every machine$`,
        ),
      );
    } finally {
      await executor.close();
    }
    expect(fs.existsSync(path.join(out, 'results.jsonl'))).toBe(false);
    expect(w.log.join('')).toMatch(/refused cell-[0-9a-f]{16}-ffffffff: the worker on \S+ runs vmexit build [0-9a-f]{16} .*, the sweep build ffffffffffffffff/);
    w.proc.kill('SIGTERM');
  }, 120_000);

  it("leaves no key of the queue without an expiry once the sweep is done (each result is repeated in BullMQ's event stream)", async (ctx) => {
    if (redis === null) return ctx.skip();
    const queue = `vmexit-test-keys-${process.pid}`;
    const w = startWorker(redis.url, queue);
    const grid = ['--workload', 'demand-fault:pages=16', '--variant', 'vmx shadow', '--seeds', '1..2'];
    expect(await main(['sweep', ...grid, '--out', path.join(tmp, 'keys'), '--queue', redis.url, '--queue-name', queue])).toBe(0);
    // With the worker still connected, the sweep has left no job, event stream or id counter, and no meta unless the
    // worker's stalled-job check (BullMQ moveStalledJobsToWait: trimEvents -> getOrSetMaxEvents) wrote it back since,
    // which it does whenever it runs after the sweep's tidy; its own throttle (stalled-check) expires.
    const left = await keysWithoutExpiry(redis.url, queue);
    expect(left.filter((k) => k !== `bull:${queue}:meta`)).toEqual([]);
    // And it does write it back: its stalled-job check runs every 1.5 s (--lock-ms).
    const deadline = Date.now() + 20_000;
    while (!(await keysWithoutExpiry(redis.url, queue)).includes(`bull:${queue}:meta`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(await keysWithoutExpiry(redis.url, queue)).toEqual([`bull:${queue}:meta`]);
    // Once the worker stopped, it has tidied as the sweep does: nothing stays for ever.
    w.proc.kill('SIGTERM');
    expect(await new Promise<number | null>((r) => w.proc.once('exit', (c) => r(c)))).toBe(0);
    expect(await keysWithoutExpiry(redis.url, queue)).toEqual([]);
  }, 120_000);
});

/** The keys of queue `queue` that have no expiry (PTTL < 0). */
async function keysWithoutExpiry(url: string, queue: string): Promise<string[]> {
  const client = new Redis(parseRedisUrl(url));
  try {
    const keys = await client.keys(`bull:${queue}:*`);
    const ttls = await Promise.all(keys.map(async (k) => [k, await client.pttl(k)] as const));
    return ttls.filter(([, ttl]) => ttl < 0).map(([k]) => k);
  } finally {
    client.disconnect();
  }
}
