import type { Command } from 'commander';
import { PAGING_MODE_NAMES, type PagingModeName } from '@vmexit/core';
import { PERSONALITIES, type Personality } from '@vmexit/guest';
import { absoluteSpec, checkHostPages, expandGrid, sweep, type CellExecutor } from '@vmexit/lab';
import { CountBar } from '../progress.js';
import { InputError } from '../errors.js';
import { parseSize } from './run.js';
import { checkWorkloadSpec } from '../workload-check.js';

interface SweepFlags {
  workload: string[];
  variant: string[];
  mode: string[];
  seeds: string;
  param: string[];
  jobs: string;
  out: string;
  queue?: string;
  queueName: string;
  redisTimeoutMs: string;
  personality?: string[];
  vcpus?: string;
  memory?: string;
  hostPages?: string;
  costModel?: string;
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** The most seeds or cells one sweep takes: a typo (`--seeds 1..1000000`) is refused rather than run for a week. */
const MAX_CELLS = 100_000;

/**
 * `vmexit sweep --workload W... --variant V... [--mode M...] [--seeds 1..N] [--param k=v1,v2...] [--jobs N]
 * --out DIR [--queue redis://HOST:PORT]`: runs the cross product of workloads (with each parameter value),
 * variants, modes and seeds, on `--jobs` worker threads or on the `vmexit worker`s of a queue, into DIR:
 * results.jsonl (one RunResult per cell), summary.csv. Cells already in DIR are skipped; Ctrl-C stops
 * starting cells and leaves whole results (rerun to finish). A progress bar with ETA goes to stderr when it
 * is a terminal.
 */
export function registerSweep(program: Command): void {
  program
    .command('sweep')
    .description('run the cross product of workloads, variants, modes and seeds on worker threads or a queue; write results.jsonl and summary.csv')
    .requiredOption('--workload <spec>', 'a workload spec (repeat for several)', collect, [])
    .requiredOption('--variant <variant>', 'a config file or a flag string such as "vmx shadow pte-update" (repeat for several)', collect, [])
    .option('--mode <mode>', `paging mode (repeat for several): ${PAGING_MODE_NAMES.join(', ')}`, collect, [])
    .option('--seeds <list>', 'seeds: a range 1..N, or a list 1,2,7', '1')
    .option('--param <k=v1,v2>', 'expand a workload parameter over values (repeat for several parameters)', collect, [])
    .option('--jobs <n>', 'worker threads (with --queue: how many cells to keep queued at once is not limited; workers set their own)', '1')
    .requiredOption('--out <dir>', 'the output directory (cells already in its results.jsonl are skipped)')
    .option('--queue <url>', 'run the cells on the `vmexit worker`s of this Redis (redis://HOST:PORT) instead of here')
    .option('--queue-name <name>', 'the queue on that Redis', 'vmexit-sweep')
    .option('--redis-timeout-ms <ms>', 'with --queue: how long to wait for a Redis that stopped answering before failing', '30000')
    .option('--personality <names...>', `guest personalities: ${PERSONALITIES.join(', ')}`)
    .option('--vcpus <n>', 'number of vCPUs (overrides the variants)')
    .option('--memory <size>', 'guest RAM, e.g. 256M (overrides the variants)')
    .option('--host-pages <size>', 'host page size backing guest RAM, 4k, 2m or 1g (every variant: --mmu tdp only; or the spec word host-pages=2m)')
    .option('--cost-model <name>', 'the cost model for modelled cycles (overrides the variants)')
    .action(async (flags: SweepFlags) => {
      const modes = (flags.mode.length > 0 ? flags.mode : ['long4']).map(checkMode);
      const seeds = parseSeeds(flags.seeds);
      const params = parseParams(flags.param);
      const jobs = parseJobs(flags.jobs);
      const personalities = (flags.personality ?? []).flatMap((p) => p.split(',')).filter((p) => p.length > 0);
      for (const p of personalities)
        if (!(PERSONALITIES as readonly string[]).includes(p))
          throw new InputError(`--personality: unknown personality '${p}' (expected ${PERSONALITIES.join(', ')})`);
      if (flags.vcpus !== undefined && (!/^\d+$/.test(flags.vcpus) || Number(flags.vcpus) < 1 || Number(flags.vcpus) > 256))
        throw new InputError(`--vcpus: expected an integer from 1 to 256, got '${flags.vcpus}'`);
      const cells = expandGrid({
        workloads: flags.workload,
        variants: flags.variant.map((v) => absoluteSpec(v)),
        modes,
        seeds,
        params,
        personalities: personalities as Personality[],
        overrides: {
          vcpus: flags.vcpus,
          memory: flags.memory === undefined ? undefined : String(parseSize(flags.memory)),
          costModel: flags.costModel,
          hostPages: flags.hostPages === undefined ? undefined : checkHostPages(flags.hostPages, '--host-pages'),
        },
      });
      if (cells.length > MAX_CELLS) throw new InputError(`the sweep has ${cells.length} cells, more than ${MAX_CELLS}`);
      // Every cell's workload, with its --param values, before anything runs or is written (an unknown workload,
      // a parameter out of range or given twice, an unreadable trace).
      for (const w of new Set(cells.map((c) => c.workload))) checkWorkloadSpec(w, '--workload');
      const redisTimeoutMs = parseRedisTimeout(flags.redisTimeoutMs);
      let executor: CellExecutor | undefined;
      if (flags.queue !== undefined) {
        const { QueueExecutor, parseRedisUrl } = await import('@vmexit/lab/queue');
        executor = new QueueExecutor({
          connection: parseRedisUrl(flags.queue),
          queueName: flags.queueName,
          redisTimeoutMs,
          onLog: (s) => process.stderr.write(s),
        });
      }
      const stop = new AbortController();
      const onSigint = (): void => {
        process.stderr.write('\nvmexit sweep: stopping after the cells running now (Ctrl-C again to quit at once)\n');
        process.off('SIGINT', onSigint);
        stop.abort();
      };
      process.on('SIGINT', onSigint);
      const bar = new CountBar('cells');
      let outcome;
      try {
        outcome = await sweep({ cells, out: flags.out, jobs, executor, signal: stop.signal, onProgress: (p) => bar.update(p) });
      } finally {
        process.off('SIGINT', onSigint);
        bar.clear();
        await executor?.close();
      }
      const where = `${flags.out}/results.jsonl, ${flags.out}/summary.csv`;
      process.stdout.write(`${cells.length} cells: ${outcome.ran} ran, ${outcome.skipped} already done; ${where}\n`);
      if (outcome.interrupted) {
        process.stderr.write(`vmexit sweep: interrupted; ${cells.length - outcome.ran - outcome.skipped} cells not run (rerun the same command to finish)\n`);
        process.exitCode = 130;
      }
    });
}

function checkMode(mode: string): PagingModeName {
  if (!(PAGING_MODE_NAMES as readonly string[]).includes(mode))
    throw new InputError(`--mode: unknown paging mode '${mode}' (expected ${PAGING_MODE_NAMES.join(', ')})`);
  return mode as PagingModeName;
}

/** `1..5` (inclusive), `3`, `1,2,7`: seeds from 0 to 2^32-1, each once. */
export function parseSeeds(text: string): number[] {
  const bad = (why: string): InputError => new InputError(`--seeds: ${why}, got '${text}' (examples: 1..10, 1,2,7)`);
  const seed = (s: string): number => {
    if (!/^\d+$/.test(s.trim()) || Number(s) > 0xffffffff) throw bad('expected integers from 0 to 4294967295');
    return Number(s);
  };
  const range = /^\s*(\d+)\s*\.\.\s*(\d+)\s*$/.exec(text);
  let out: number[];
  if (range !== null) {
    const a = seed(range[1]!);
    const b = seed(range[2]!);
    if (b < a) throw bad('the range ends before it starts');
    if (b - a + 1 > MAX_CELLS) throw bad(`more than ${MAX_CELLS} seeds`);
    out = Array.from({ length: b - a + 1 }, (_, i) => a + i);
  } else out = text.split(',').map(seed);
  if (new Set(out).size !== out.length) throw bad('a seed is repeated');
  return out;
}

/** `--param pages=16,64 --param write=0,1` -> { pages: ['16', '64'], write: ['0', '1'] }. */
export function parseParams(list: readonly string[]): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const p of list) {
    const m = /^([A-Za-z][\w-]*)=(.+)$/.exec(p.trim());
    if (m === null) throw new InputError(`--param: expected NAME=V1,V2,..., got '${p}'`);
    if (m[1]! in out) throw new InputError(`--param: ${m[1]} is given twice`);
    const values = m[2]!.split(',').map((v) => v.trim());
    if (values.some((v) => v.length === 0 || /[:=,\s]/.test(v))) throw new InputError(`--param ${m[1]}: empty or malformed value in '${m[2]}'`);
    if (new Set(values).size !== values.length) throw new InputError(`--param ${m[1]}: a value is repeated in '${m[2]}'`);
    out[m[1]!] = values;
  }
  return out;
}

/** `--redis-timeout-ms`: at least 500 ms (a reconnection takes some), in milliseconds. */
export function parseRedisTimeout(text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 500) throw new InputError(`--redis-timeout-ms: expected an integer of at least 500, got '${text}'`);
  return Number(text);
}

export function parseJobs(text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > 256) throw new InputError(`--jobs: expected an integer from 1 to 256, got '${text}'`);
  return Number(text);
}
