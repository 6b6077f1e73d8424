import { Queue, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { cellKey, compiledFile, type Cell, type CellOutcome } from './cell.js';
import { InputError } from './errors.js';
import type { CellExecutor } from './sweep.js';
import { pathToFileURL } from 'node:url';

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

/** A cell's job id: its key (jobs of the same cell from two sweeps are one job, as their results are one result). */
export function jobId(cell: Cell): string {
  return `cell-${cellKey(cell)}`;
}

export interface QueueExecutorOptions {
  readonly connection: RedisConnection;
  /** Default `vmexit-sweep`. */
  readonly queueName?: string;
  /** How often the sweep looks for finished cells (default 200 ms). */
  readonly pollMs?: number;
  /** Attempts per cell (default 3): a cell whose worker died is retried. */
  readonly attempts?: number;
  readonly onLog?: (line: string) => void;
}

/**
 * Runs cells on the `vmexit worker`s of a BullMQ queue: enqueues each cell as a job whose id is the cell's key
 * (adding a job that exists is a no-op, so a cell is queued once), then collects each job's result as it
 * completes, hands it on once, and removes the job. BullMQ delivers at least once: a worker killed mid-job
 * loses its lock, the job is found stalled and run again by another worker (its stalled-job check), and the
 * result of a cell is the same whoever ran it; the sweep's store writes each key once.
 */
export class QueueExecutor implements CellExecutor {
  private queue: Queue | null = null;
  constructor(readonly options: QueueExecutorOptions) {}

  async run(cells: readonly Cell[], onOutcome: (cell: Cell, outcome: CellOutcome) => void, signal?: AbortSignal): Promise<void> {
    const o = this.options;
    await checkRedis(o.connection);
    const queue = (this.queue ??= new Queue(o.queueName ?? 'vmexit-sweep', { connection: { ...o.connection } }));
    const pending = new Map(cells.map((c) => [jobId(c), c]));
    await queue.addBulk(
      cells.map((c) => ({ name: 'cell', data: c, opts: { jobId: jobId(c), attempts: o.attempts ?? 3, removeOnComplete: false, removeOnFail: false } })),
    );
    o.onLog?.(`queued ${cells.length} cells on ${queue.name} at redis://${o.connection.host}:${o.connection.port}\n`);
    while (pending.size > 0) {
      if (signal?.aborted === true) {
        // Take back the cells no worker has started; the ones running finish on their workers, unread.
        for (const id of pending.keys()) await (await queue.getJob(id))?.remove().catch(() => {});
        return;
      }
      for (const [id, cell] of [...pending]) {
        const job: Job | undefined = await queue.getJob(id);
        if (job === undefined) {
          // Removed by another sweep that collected it first: queue it again.
          await queue.add('cell', cell, { jobId: id, attempts: o.attempts ?? 3 });
          continue;
        }
        const state = await job.getState();
        if (state === 'completed') {
          pending.delete(id);
          onOutcome(cell, job.returnvalue as CellOutcome);
          await job.remove().catch(() => {});
        } else if (state === 'failed') {
          pending.delete(id);
          onOutcome(cell, { ok: false, error: { name: 'QueueError', message: `the job failed after ${job.attemptsMade} attempts: ${job.failedReason}` } });
          await job.remove().catch(() => {});
        }
      }
      if (pending.size > 0) await sleep(o.pollMs ?? 200);
    }
  }

  async close(): Promise<void> {
    await this.queue?.close();
    this.queue = null;
  }
}

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
  readonly onLog?: (line: string) => void;
  readonly signal?: AbortSignal;
}

/**
 * A queue worker (`vmexit worker`): takes cells from the queue and runs each on a worker thread (BullMQ's
 * sandboxed processor, so the lock is renewed while the cell computes) until `signal` aborts, then finishes
 * the cells it holds and returns.
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
  worker.on('active', (job: Job) => o.onLog?.(`started ${job.id} ${describe(job.data as Cell)}\n`));
  worker.on('completed', (job: Job) => {
    completed++;
    o.onLog?.(`done ${job.id}\n`);
  });
  worker.on('failed', (job: Job | undefined, e: Error) => o.onLog?.(`failed ${job?.id ?? '?'}: ${e.message}\n`));
  worker.on('error', (e: Error) => o.onLog?.(`error: ${e.message}\n`));
  await worker.waitUntilReady();
  o.onLog?.(`worker on ${worker.name} at redis://${o.connection.host}:${o.connection.port}, ${o.jobs ?? 1} at a time\n`);
  await new Promise<void>((resolve) => {
    if (o.signal?.aborted === true) resolve();
    o.signal?.addEventListener('abort', () => resolve());
  });
  await worker.close();
  return { completed };
}

function describe(c: Cell): string {
  return `${c.workload} on "${c.variant}", ${c.mode}, seed ${c.seed}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
