import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deterministicPart, readResults, type CellRecord } from '@vmexit/lab';
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
function startWorker(url: string, queue: string): { proc: ChildProcess; log: string[]; started: Promise<string> } {
  const proc = spawn(process.execPath, [BIN, 'worker', '--queue', url, '--queue-name', queue, '--lock-ms', '1500'], { stdio: ['ignore', 'ignore', 'pipe'] });
  workers.push(proc);
  const log: string[] = [];
  let onStart: (id: string) => void = () => {};
  const started = new Promise<string>((r) => (onStart = r));
  proc.stderr!.setEncoding('utf8').on('data', (s: string) => {
    log.push(s);
    const m = /started (cell-[0-9a-f]+)/.exec(s);
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
    expect(err.join('')).toMatch(/queued 3 cells on vmexit-test-\d+/);
  }, 240_000);
});
