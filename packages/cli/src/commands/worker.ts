import type { Command } from 'commander';
import { InputError } from '../errors.js';
import { parseRedisTimeout } from './sweep.js';

/**
 * `vmexit worker --queue redis://HOST:PORT [--jobs N] [--lock-ms MS] [--redis-timeout-ms MS]`: runs the cells
 * that `vmexit sweep --queue` enqueues, N at a time on worker threads, until Ctrl-C or SIGTERM (then it
 * finishes the cells it holds). Start one on each machine that should help; a worker that dies has its cells
 * run again elsewhere once their lock (--lock-ms) expires. It refuses the cells of a sweep of another vmexit
 * build, and stops with an error (exit 1) when Redis has not answered for --redis-timeout-ms.
 */
export function registerWorker(program: Command): void {
  program
    .command('worker')
    .description('run the cells of `vmexit sweep --queue` from a Redis queue, on worker threads, until stopped')
    .requiredOption('--queue <url>', 'the Redis of the queue: redis://HOST:PORT')
    .option('--queue-name <name>', 'the queue on that Redis', 'vmexit-sweep')
    .option('--jobs <n>', 'cells run at once, each on its own thread', '1')
    .option('--lock-ms <ms>', "how long a job's lock lasts unrenewed: a dead worker's cells are retried after this", '30000')
    .option('--redis-timeout-ms <ms>', 'how long to wait for a Redis that stopped answering before stopping with an error', '30000')
    .action(async (flags: { queue: string; queueName: string; jobs: string; lockMs: string; redisTimeoutMs: string }) => {
      if (!/^\d+$/.test(flags.jobs) || Number(flags.jobs) < 1 || Number(flags.jobs) > 256)
        throw new InputError(`--jobs: expected an integer from 1 to 256, got '${flags.jobs}'`);
      if (!/^\d+$/.test(flags.lockMs) || Number(flags.lockMs) < 500)
        throw new InputError(`--lock-ms: expected an integer of at least 500, got '${flags.lockMs}'`);
      const redisTimeoutMs = parseRedisTimeout(flags.redisTimeoutMs);
      const { parseRedisUrl, runQueueWorker } = await import('@vmexit/lab/queue');
      const connection = parseRedisUrl(flags.queue);
      const stop = new AbortController();
      const onSignal = (): void => {
        process.stderr.write('vmexit worker: finishing the cells it holds, then stopping\n');
        stop.abort();
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      try {
        const { completed } = await runQueueWorker({
          connection,
          queueName: flags.queueName,
          jobs: Number(flags.jobs),
          lockMs: Number(flags.lockMs),
          redisTimeoutMs,
          signal: stop.signal,
          onLog: (s) => process.stderr.write(`vmexit worker: ${s}`),
        });
        process.stdout.write(`${completed} cells run\n`);
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });
}
