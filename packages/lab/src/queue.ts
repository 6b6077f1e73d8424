import { Queue, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { cellKey, compiledFile, type Cell, type CellOutcome } from './cell.js';
import { InputError, RunFailure } from './errors.js';
import type { CellExecutor } from './sweep.js';

/** Socket errors that mean Redis is away (an outage), whatever the client's status says at that moment. */
const CONNECTION_ERRORS = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'ENOTCONN', 'EHOSTUNREACH', 'ENETUNREACH']);

/**
 * What a message says lost the connection: the socket's last error (its code: ECONNREFUSED, ...), or, when none
 * came, that the connection closed. A server that dies closes its sockets without an error on the client's side,
 * and the first reconnection attempt, whose failure names ECONNREFUSED, comes only after a delay (BullMQ's retry
 * strategy waits at least 1 s), which may be after the deadline.
 */
function lostCause(lastError: Error | null, status: string): string {
  const code = (lastError as NodeJS.ErrnoException | null)?.code;
  if (code !== undefined) return code;
  if (lastError !== null) return lastError.message;
  return status === 'reconnecting' || status === 'close' || status === 'end' ? 'connection closed' : 'no answer';
}

/** Where the Redis is: `redis://[:PASSWORD@]HOST:PORT[/DB]`. */
export interface RedisConnection {
  readonly host: string;
  readonly port: number;
  readonly password?: string;
  readonly db?: number;
}

/** `redis://127.0.0.1:6390` -> { host, port }; anything else is an InputError naming the URL. */
export function parseRedisUrl(text: string): RedisConnection {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new InputError(`--queue: '${text}' is not a URL (expected redis://HOST:PORT)`);
  }
  if (u.protocol !== 'redis:') throw new InputError(`--queue: '${text}': expected a redis:// URL`);
  if (u.hostname === '') throw new InputError(`--queue: '${text}': no host`);
  const port = u.port === '' ? 6379 : Number(u.port);
  const db = u.pathname.length > 1 ? Number(u.pathname.slice(1)) : undefined;
  if (db !== undefined && (!Number.isInteger(db) || db < 0)) throw new InputError(`--queue: '${text}': the database must be a number`);
  return {
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port,
    ...(u.password !== '' ? { password: decodeURIComponent(u.password) } : {}),
    ...(db !== undefined ? { db } : {}),
  };
}

/** Connects once, without retrying, so that a wrong address is an InputError rather than a hang. */
export async function checkRedis(c: RedisConnection): Promise<void> {
  const client = new Redis({ ...c, lazyConnect: true, connectTimeout: 5000, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  let cause: Error | null = null; // the socket's error (ECONNREFUSED), which the rejection only calls "Connection is closed."
  client.on('error', (e: Error) => (cause ??= e));
  try {
    await client.connect();
    await client.ping();
  } catch (e) {
    const err = (cause ?? e) as NodeJS.ErrnoException;
    throw new InputError(`--queue redis://${c.host}:${c.port}: cannot connect (${err.code ?? err.message})`);
  } finally {
    client.disconnect();
  }
}

/**
 * A cell's job id: its key and the build that runs it. Jobs of the same cell from two sweeps of one build are
 * one job, as their results are one result; sweeps of two builds never share one (nor does a rerun after an
 * upgrade pick up a result of the old build that is still in the queue).
 */
export function jobId(cell: Cell, build: string = vmexitBuild().id): string {
  return `cell-${cellKey(cell)}-${build.slice(0, 8)}`;
}

/** Which vmexit runs here: the version of each package a cell runs on, and `id`, a hash of those and of their compiled code. */
export interface VmexitBuild {
  readonly id: string;
  readonly packages: Readonly<Record<string, string>>;
}

/** The packages whose code decides a cell's result (third-party policies are named in each result's provenance). */
const BUILD_PACKAGES = [
  '@vmexit/backend-svm',
  '@vmexit/backend-vmx',
  '@vmexit/core',
  '@vmexit/guest',
  '@vmexit/lab',
  '@vmexit/mmu-shadow',
  '@vmexit/mmu-tdp',
  '@vmexit/policies',
];
let thisBuild: VmexitBuild | null = null;

/**
 * This process's build: two machines agree on it when they run the same versions of the same compiled code
 * (a checkout rebuilt after a change differs though its versions do not). The sweep sends its own with each cell,
 * and a worker of another build refuses the cell, so that one merged result never mixes two builds.
 */
export function vmexitBuild(): VmexitBuild {
  if (thisBuild !== null) return thisBuild;
  const req = createRequire(import.meta.url);
  const hash = createHash('sha256');
  const packages: Record<string, string> = {};
  for (const name of BUILD_PACKAGES) {
    let manifest: string;
    try {
      manifest = req.resolve(`${name}/package.json`);
    } catch {
      packages[name] = 'not installed';
      hash.update(`${name}\0-\0`);
      continue;
    }
    const version = String((JSON.parse(readFileSync(manifest, 'utf8')) as { version?: unknown }).version);
    packages[name] = version;
    hash.update(`${name}\0${version}\0`);
    const dist = join(dirname(manifest), 'dist');
    let files: string[] = [];
    try {
      files = readdirSync(dist, { recursive: true, encoding: 'utf8' })
        .filter((f) => f.endsWith('.js'))
        .sort();
    } catch {
      // no dist (not built): the versions alone
    }
    for (const f of files)
      hash
        .update(f)
        .update('\0')
        .update(readFileSync(join(dist, f)));
  }
  thisBuild = { id: hash.digest('hex').slice(0, 16), packages };
  return thisBuild;
}

/** A build as a user reads it: its id and the version of @vmexit/lab. */
function describeBuild(b: VmexitBuild | { id: string; lab?: string }): string {
  const lab = 'packages' in b ? b.packages['@vmexit/lab'] : b.lab;
  return `build ${b.id}${lab !== undefined ? `, @vmexit/lab ${lab}` : ''}`;
}

/** What the sweep puts on the queue for a cell: the cell, and the build that must run it. */
export type CellJob = Cell & { readonly build: string };

/** What a queue worker answers for a cell: the outcome, with the build and host that ran (or refused) it. */
export type QueueOutcome = CellOutcome & { readonly build: string; readonly lab: string; readonly host: string };

/** How a QueueExecutor reaches its queue: the Redis connection, the queue name, the poll interval and the attempts per cell. */
export interface QueueExecutorOptions {
  readonly connection: RedisConnection;
  /** Default `vmexit-sweep`. */
  readonly queueName?: string;
  /** How often the sweep looks for finished cells (default 200 ms). */
  readonly pollMs?: number;
  /** Attempts per cell (default 3): a cell whose worker died is retried. */
  readonly attempts?: number;
  /** Receives one line per queue event worth telling the user (a cell retried, a worker lost). */
  readonly onLog?: (line: string) => void;
  /**
   * How long the sweep waits for a Redis that stopped answering (default 30 s) before it fails with an error
   * that says so; the results collected so far are kept.
   */
  readonly redisTimeoutMs?: number;
  /** The build the workers must run (default this process's, `vmexitBuild()`); tests give another one. */
  readonly build?: VmexitBuild;
}

/**
 * Runs cells on the `vmexit worker`s of a BullMQ queue: enqueues each cell as a job whose id is the cell's key
 * and build (adding a job that exists is a no-op, so a cell is queued once), then collects each job's result as
 * it completes, hands it on once, and removes the job. BullMQ delivers at least once: a worker killed mid-job
 * loses its lock, the job is found stalled and run again by another worker (its stalled-job check), and a
 * worker whose lock expired cannot complete the job any more (BullMQ checks the lock's token); the result of a
 * cell is the same whoever ran it, and the sweep's store writes each key once. A result from a worker of another
 * build is refused, as is a Redis that stops answering for `redisTimeoutMs`. Once every cell is in and the queue
 * holds no other job, the queue's own keys (its event stream, which repeats each result, its meta, id counter
 * and marker) are deleted.
 */
export class QueueExecutor implements CellExecutor {
  private queue: Queue | null = null;
  /** The last error of the queue's connection (ECONNREFUSED ...), for the message when Redis stops answering. */
  private lastError: Error | null = null;
  constructor(readonly options: QueueExecutorOptions) {}

  /**
   * Enqueues the cells that are not in the queue yet and calls `onOutcome` as each finishes on some worker; once
   * `signal` aborts, takes back the cells not started and waits for the ones running.
   */
  async run(cells: readonly Cell[], onOutcome: (cell: Cell, outcome: CellOutcome) => void, signal?: AbortSignal): Promise<void> {
    const o = this.options;
    const build = o.build ?? vmexitBuild();
    await checkRedis(o.connection);
    const queue = (this.queue ??= this.open());
    const client = await queue.backend.client;
    // A command waits while Redis is away (BullMQ reconnects and replays it); it fails once Redis has been away for
    // redisTimeoutMs, however long a command takes while it answers (queueing 100,000 cells does take a while).
    const redis = <T>(p: Promise<T>): Promise<T> =>
      whileConnected(
        p,
        () => client.status === 'ready',
        o.redisTimeoutMs ?? 30_000,
        () => this.lost(client.status),
      );
    const pending = new Map(cells.map((c) => [jobId(c, build.id), c]));
    const job = (id: string, c: Cell) => ({ name: 'cell', data: { ...c, build: build.id } satisfies CellJob, opts: { jobId: id, attempts: o.attempts ?? 3 } });
    await redis(queue.addBulk([...pending].map(([id, c]) => job(id, c))));
    o.onLog?.(`queued ${cells.length} cells on ${queue.name} at redis://${o.connection.host}:${o.connection.port}\n`);
    while (pending.size > 0) {
      // Once `signal` aborts, the sweep takes back the cells no worker has started and waits for the ones running, as
      // the local executors do: their results are kept, and no job is left behind in Redis.
      const draining = signal?.aborted === true;
      for (const [id, cell] of [...pending]) {
        // The state first, then the job: a job read while active and found completed after would have no result.
        const state = await redis(queue.getJobState(id));
        if (state === 'unknown') {
          if (draining) pending.delete(id);
          else {
            // Removed by another sweep that collected it first: queue it again.
            const again = job(id, cell);
            await redis(queue.add(again.name, again.data, again.opts));
          }
          continue;
        }
        // Draining, every job not finished and not held by a live worker is taken back (`takeBack`): one no worker has
        // started, and one whose lock expired (its worker died, and no other worker may be left to find the job
        // stalled: waiting for it would never end). A job a worker holds is waited for.
        if (state !== 'completed' && state !== 'failed' && !draining) continue;
        const j: Job | undefined = await redis(queue.getJob(id));
        if (j === undefined) continue; // removed meanwhile: the next round finds it unknown
        if (state === 'completed') {
          pending.delete(id);
          onOutcome(cell, checkBuild(j.returnvalue as QueueOutcome | CellOutcome, build));
          await redis(j.remove().catch(() => {}));
        } else if (state === 'failed') {
          pending.delete(id);
          onOutcome(cell, { ok: false, error: { name: 'QueueError', message: `the job failed after ${j.attemptsMade} attempts: ${j.failedReason}` } });
          await redis(j.remove().catch(() => {}));
        } else if (await redis(takeBack(queue, client, j, state))) {
          // Draining: a cell no worker has started, or whose worker's lock expired (a worker without the lock cannot
          // finish the job: BullMQ's moveToFinished checks the lock's token), is taken back. One a live worker holds
          // (its lock is there), or that moved since the state was read, is not: the next round waits for it or
          // collects its result.
          pending.delete(id);
        }
      }
      if (pending.size > 0) await sleep(o.pollMs ?? 200);
    }
    await redis(tidy(queue));
  }

  private open(): Queue {
    // A new connection: an error of the one before (closed by `close`) says nothing about it.
    this.lastError = null;
    const queue = new Queue(this.options.queueName ?? 'vmexit-sweep', {
      connection: { ...this.options.connection },
      // Each `completed` event repeats the job's result; nothing reads them, so keep few.
      streams: { events: { maxLen: 100 } },
    });
    queue.on('error', (e: Error) => (this.lastError = e)); // reported once, by `lost`, not once per reconnection
    // An outage that healed is over: its error must not name a later one (whose deadline may come before any error).
    void queue.backend.client.then(
      (c) => c.on('ready', () => (this.lastError = null)),
      () => {},
    );
    return queue;
  }

  private lost(status: string): RunFailure {
    const c = this.options.connection;
    const why = lostCause(this.lastError, status);
    const s = (this.options.redisTimeoutMs ?? 30_000) / 1000;
    return new RunFailure(
      `--queue redis://${c.host}:${c.port}: lost the connection (${why}) for ${s} s; the results so far are kept: rerun the sweep once Redis is back`,
    );
  }

  /** Closes the queue connection (at once, when Redis is gone). */
  async close(): Promise<void> {
    const q = this.queue;
    this.queue = null;
    if (q === null) return;
    const client = await q.backend.client.catch(() => null);
    if (client?.status === 'ready') await withDeadline(q.close(), 2000, () => new Error('close')).catch(() => {});
    // A client still reconnecting never ends on BullMQ's disconnect (it waits for 'end'): end it without waiting.
    client?.disconnect();
  }
}

/** A worker's answer, refused (as a failed cell naming both builds) when that worker runs another build than the sweep. */
function checkBuild(out: QueueOutcome | CellOutcome, build: VmexitBuild): CellOutcome {
  const theirs = typeof out === 'object' && out !== null && 'build' in out ? out : null;
  if (theirs !== null && theirs.build === build.id) {
    const { build: _build, lab: _lab, host: _host, ...outcome } = theirs;
    return outcome as CellOutcome;
  }
  const worker = theirs === null ? 'a vmexit from before build checks' : `${describeBuild({ id: theirs.build, lab: theirs.lab })} on ${theirs.host}`;
  return {
    ok: false,
    error: {
      name: 'BuildMismatch',
      message: `a worker runs another vmexit (${worker}) than this sweep (${describeBuild(build)}): run the same build on every machine`,
    },
  };
}

/**
 * Draining: removes job `j`, read in `state`, unless a worker has it. A job read as waiting, or as active without a
 * lock (its worker died), is taken off its list and deleted in one atomic step (`TAKE_BACK`), and only if it is
 * still on that list and unlocked. Workers move jobs between lists atomically too (BullMQ's moveToActive takes a
 * waiting job with RPOPLPUSH; its stalled check puts an unlocked active job back on the wait list), so a job no
 * longer where it was read was taken since, and may even be finished; it stays (the next round waits for it or
 * collects its result; BullMQ's removal would delete a finished job with its result, since it holds no lock). A
 * job in any other state is removed unless it is locked (`removed`).
 */
async function takeBack(queue: Queue, client: Awaited<Queue['backend']['client']>, j: Job, state: string): Promise<boolean> {
  if (state !== 'waiting' && state !== 'active') return removed(j);
  // A command of our own through the client's script engine (BullMQ's clients take no other commands), defined once
  // per client (as BullMQ defines its own: a redefinition would send the whole script again instead of its hash).
  if ((client as unknown as Record<string, unknown>)[TAKE_BACK] === undefined) client.defineCommand(TAKE_BACK, { numberOfKeys: 9, lua: TAKE_BACK_LUA });
  const key = queue.toKey(j.id!);
  const lists = state === 'waiting' ? [queue.keys.wait!, queue.keys.paused!] : [queue.keys.active!, queue.keys.active!];
  const keys = [key, ...['logs', 'dependencies', 'processed', 'failed', 'unsuccessful'].map((k) => `${key}:${k}`)];
  return (await client.runCommand(TAKE_BACK, [...lists, `${key}:lock`, ...keys, j.id!])) === 1;
}

/** The client command `takeBack` defines. */
const TAKE_BACK = 'vmexitTakeBack';
/**
 * KEYS: the two lists the job was read on (waiting: the wait list, and the paused list, where BullMQ before version
 * 6 kept the waiting jobs of a paused queue and which its getState still reads as waiting; active: the active list
 * twice), the job's lock, then the job's hash and the five keys named after it that BullMQ's removeJob deletes with
 * it (its removeJobKeys: logs, dependencies, processed, failed, unsuccessful); ARGV: the job id. When the job is not
 * locked and its id is on either list, it is taken off and those keys are deleted: 1; else nothing changes: 0.
 * Unlike BullMQ's removeJob it writes no `removed` event and has no priority, deduplication or parent job to clean
 * up: a sweep's jobs have none, and nothing reads the event stream.
 */
const TAKE_BACK_LUA = `if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 and redis.call('LREM', KEYS[2], 1, ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9])
return 1`;

/** Removes `j` unless a worker holds it (then BullMQ refuses: the job is locked). */
async function removed(j: Job): Promise<boolean> {
  try {
    await j.remove();
    return true;
  } catch {
    return false;
  }
}

/** Once no job is left in the queue (no other sweep's either), deletes its event stream, meta, id counter and marker. */
async function tidy(queue: Queue): Promise<void> {
  const counts = await queue.getJobCounts();
  if (Object.values(counts).some((n) => n > 0)) return;
  const client = await queue.backend.client;
  // The marker wakes workers when a job is added; with no job left it marks nothing (a sweep stopped before any worker came leaves it).
  await client.del(queue.keys.events!, queue.keys.meta!, queue.keys.id!, queue.keys.marker!);
}

/** How a worker (`vmexit worker`) serves a queue: the Redis connection, the queue name, cells at once, and the lock duration. */
export interface QueueWorkerOptions {
  readonly connection: RedisConnection;
  readonly queueName?: string;
  /** Cells run at once, each on its own worker thread (default 1). */
  readonly jobs?: number;
  /**
   * How long a job's lock lasts without renewal (default 30 s, BullMQ's). A worker that dies holds its jobs
   * this long; the other workers then find them stalled (checked as often) and run them again.
   */
  readonly lockMs?: number;
  /** How long the worker waits for a Redis that stopped answering (default 30 s) before it stops with an error that says so. */
  readonly redisTimeoutMs?: number;
  /** Receives one line per job the worker starts or finishes. */
  readonly onLog?: (line: string) => void;
  readonly signal?: AbortSignal;
}

/**
 * A queue worker (`vmexit worker`): takes cells from the queue and runs each on a worker thread (BullMQ's
 * sandboxed processor, so the lock is renewed while the cell computes) until `signal` aborts, then finishes
 * the cells it holds and returns. A cell queued by a sweep of another vmexit build is refused (answered with
 * an error naming both builds), not run. A Redis that stops answering for `redisTimeoutMs` stops the worker
 * with a RunFailure (its cells are then run again by other workers, once their locks expire).
 */
export async function runQueueWorker(o: QueueWorkerOptions): Promise<{ completed: number }> {
  await checkRedis(o.connection);
  const lock = o.lockMs ?? 30_000;
  const processor = pathToFileURL(compiledFile('queue-processor'));
  const worker = new Worker(o.queueName ?? 'vmexit-sweep', processor, {
    connection: { ...o.connection, maxRetriesPerRequest: null },
    concurrency: o.jobs ?? 1,
    useWorkerThreads: true,
    lockDuration: lock,
    stalledInterval: lock,
    maxStalledCount: 2,
  });
  let completed = 0;
  let lastError: Error | null = null;
  worker.on('active', (job: Job) => o.onLog?.(`started ${job.id} ${describe(job.data as Cell)}\n`));
  worker.on('completed', (job: Job) => {
    const out = job.returnvalue as QueueOutcome;
    if (!out.ok && out.error.name === 'BuildMismatch') o.onLog?.(`refused ${job.id}: ${out.error.message}\n`);
    else completed++;
    o.onLog?.(`done ${job.id}\n`);
  });
  worker.on('failed', (job: Job | undefined, e: Error) => o.onLog?.(`failed ${job?.id ?? '?'}: ${e.message}\n`));
  const client = await worker.backend.client;
  worker.on('error', (e: Error) => {
    // A lock it could not renew, ...: logged each time. But the socket's own error (the first of an outage, ECONNRESET
    // when Redis dies) can come while the client still says 'ready': it is the outage, not another error.
    if (client.status === 'ready' && !CONNECTION_ERRORS.has((e as NodeJS.ErrnoException).code ?? '')) return o.onLog?.(`error: ${e.message}\n`);
    // Redis is away: once per outage, not once per reconnection attempt.
    if (lastError === null) o.onLog?.(`error: ${e.message}; retrying for ${(o.redisTimeoutMs ?? 30_000) / 1000} s\n`);
    lastError = e;
  });
  await worker.waitUntilReady();
  o.onLog?.(`worker on ${worker.name} at redis://${o.connection.host}:${o.connection.port}, ${o.jobs ?? 1} at a time, ${describeBuild(vmexitBuild())}\n`);
  let watchdog: ReturnType<typeof setInterval> | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      if (o.signal?.aborted === true) resolve();
      o.signal?.addEventListener('abort', () => resolve());
      const timeout = o.redisTimeoutMs ?? 30_000;
      let downSince: number | null = null;
      watchdog = setInterval(
        () => {
          if (client.status === 'ready') {
            if (downSince !== null && lastError !== null) o.onLog?.(`reconnected\n`);
            downSince = null;
            lastError = null;
            return;
          }
          downSince ??= Date.now();
          if (Date.now() - downSince < timeout) return;
          const why = lostCause(lastError, client.status);
          reject(new RunFailure(`--queue redis://${o.connection.host}:${o.connection.port}: lost the connection (${why}) for ${timeout / 1000} s`));
        },
        Math.min(1000, timeout / 4),
      );
    });
  } catch (e) {
    // Redis is gone: nothing can be finished or handed back; the cells held are run again elsewhere once their locks expire.
    await withDeadline(worker.close(true), 2000, () => new Error('close')).catch(() => {});
    client.disconnect();
    (await worker.backend.blockingClient?.catch(() => null))?.disconnect();
    throw e;
  } finally {
    clearInterval(watchdog);
  }
  await worker.close();
  // The worker's stalled-job check (BullMQ moveStalledJobsToWait, which trims the event stream through
  // getOrSetMaxEvents) writes the queue's meta hash back whenever it is missing: after a sweep tidied the queue, a
  // worker still serving it brings `meta` back. So a worker that stops tidies as the sweep does, once no job is left
  // (a queue opened without writing its own meta).
  const queue = new Queue(worker.name, { connection: { ...o.connection }, skipMetasUpdate: true });
  try {
    await withDeadline(tidy(queue), 2000, () => new Error('tidy')).catch(() => {}); // best effort: the cells are done
  } finally {
    await withDeadline(queue.close(), 2000, () => new Error('close')).catch(() => {});
  }
  return { completed };
}

function describe(c: Cell): string {
  return `${c.workload} on "${c.variant}", ${c.mode}, seed ${c.seed}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** `p`, or the error of `lost` once `connected()` has been false for `ms` while `p` is pending. */
function whileConnected<T>(p: Promise<T>, connected: () => boolean, ms: number, lost: () => Error): Promise<T> {
  let timer: ReturnType<typeof setInterval> | undefined;
  let downSince: number | null = null;
  const watch = new Promise<never>((_, reject) => {
    timer = setInterval(
      () => {
        if (connected()) downSince = null;
        else if (Date.now() - (downSince ??= Date.now()) >= ms) reject(lost());
      },
      Math.min(250, ms / 4),
    );
  });
  return Promise.race([p, watch]).finally(() => clearInterval(timer));
}

/** `p`, or the error of `onTimeout` once `ms` passed without it settling. */
function withDeadline<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(onTimeout()), ms)));
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}
