#!/usr/bin/env node
/**
 * Instructions per exit, by JavaScript function: runs `vmexit run` (by default pt-recycle under VMX shadow paging)
 * under valgrind's callgrind with V8's code map (`--perf-basic-prof`), and prints the instructions the run executed,
 * per exit, in all and in each compiled function (callgrind.mjs maps them), the functions that took the most first.
 *
 * An instruction count does not depend on the machine's load, as wall time does on a shared machine (in one hour
 * of 2026-12-08, the same build's pt-recycle figure in `main.bench.mjs` ranged from 462 to 787 ns/exit): a change
 * to the exit path shows in it exactly, and stays there from run to run within a few parts per thousand. It counts
 * instructions, not time: a cache miss or a mispredicted branch costs nothing here. The figures are of the whole
 * run divided by its exits (start-up, the boot and V8's compilers included, in `unmapped` for what is not compiled
 * JavaScript): compare runs of the same workload. V8 runs with `--single-threaded` (no background compilation, so
 * that the counts repeat); the CLI sets its own flags as it starts (core's tuneV8).
 *
 * Needs valgrind (Debian: `apt-get install valgrind`); a run of the default workload takes about two minutes.
 *
 *   node bench/instructions.mjs [--top N] [--json FILE] [-- VMEXIT-RUN-ARGUMENTS...]
 *
 * The arguments after `--` replace the default `--backend vmx --mmu shadow --workload pt-recycle:dirs=8,rounds=8`
 * (any `vmexit run` options; `--json` is added).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';
import { parseBenchArgs } from '../../../scripts/bench-args.mjs';
import { countByFunction, instructionCosts, perfMap } from './callgrind.mjs';

const SYNOPSIS = 'node bench/instructions.mjs [--top N] [--json FILE] [-- VMEXIT-RUN-ARGUMENTS...]';
const dash = process.argv.indexOf('--');
const own = dash < 0 ? process.argv.slice(2) : process.argv.slice(2, dash);
const runArgs = dash < 0 ? ['--backend', 'vmx', '--mmu', 'shadow', '--workload', 'pt-recycle:dirs=8,rounds=8'] : process.argv.slice(dash + 1);
let top = 25;
const opts = parseBenchArgs(
  {
    name: 'instructions',
    synopsis: SYNOPSIS,
    runs: 1,
    maxRuns: 1,
    options: {
      '--top': (next, usage) => {
        const v = next();
        const n = Number(v);
        if (!Number.isInteger(n) || n < 1 || n > 500) usage(`--top ${v} is not an integer from 1 to 500`);
        top = n;
      },
    },
  },
  own,
);

const version = spawnSync('valgrind', ['--version'], { encoding: 'utf8' });
if (version.error !== undefined || version.status !== 0) {
  process.stderr.write('instructions: valgrind is not installed (Debian: apt-get install valgrind)\n');
  process.exit(2);
}

const cli = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'bin', 'vmexit.js');
const work = mkdtempSync(join(tmpdir(), 'vmexit-instructions-'));
let mapFile = null;
try {
  measure();
} catch (e) {
  process.stderr.write(`instructions: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
} finally {
  // The callgrind output and V8's code map are large: nothing stays behind, whatever happened.
  rmSync(work, { recursive: true, force: true });
  if (mapFile !== null) rmSync(mapFile, { force: true });
}

function measure() {
  const out = join(work, 'callgrind.out');
  const run = spawnSync(
    'valgrind',
    [
      '--tool=callgrind',
      '--dump-instr=yes',
      '--dump-line=yes', // the cost lines' positions are `instr line` (callgrind.mjs), whatever ~/.valgrindrc says
      `--callgrind-out-file=${out}`,
      // V8 writes and rewrites code at run time: valgrind must see every change, outside files too.
      '--smc-check=all-non-file',
      process.execPath,
      '--single-threaded',
      '--perf-basic-prof',
      cli,
      'run',
      ...runArgs,
      '--json',
    ],
    { cwd: work, encoding: 'utf8', maxBuffer: 1 << 28 },
  );
  // V8 writes its code map to /tmp/perf-PID.map, whatever TMPDIR says; valgrind runs node in its own process (==PID==).
  const pid = /==(\d+)==/.exec(run.stderr ?? '')?.[1];
  if (pid !== undefined) mapFile = `/tmp/perf-${pid}.map`;
  if (run.status !== 0) {
    process.stderr.write(
      `instructions: vmexit run ${runArgs.join(' ')} failed under valgrind (exit ${run.status}):\n${(run.stderr ?? '').split('\n').slice(-12).join('\n')}\n`,
    );
    process.exitCode = run.status === 2 ? 2 : 1;
    return;
  }
  const result = JSON.parse(run.stdout);
  const exits = result.counters?.total?.exits ?? 0;
  if (mapFile === null || !existsSync(mapFile)) throw new Error(`V8's code map (${mapFile ?? '/tmp/perf-PID.map'}) was not written`);
  const costs = instructionCosts(readFileSync(out, 'utf8'));
  const entries = perfMap(readFileSync(mapFile, 'utf8'));
  const { byFunction, mapped, unmapped } = countByFunction(costs, entries);
  const total = mapped + unmapped;
  // Per exit; a run without exits (a native one) is shown whole.
  const unit = exits > 0 ? 'per exit' : 'in the whole run, which had no exits';
  const per = (n) => (exits > 0 ? n / exits : n);
  let compiled = 0;
  for (const [name, n] of byFunction) if (name.startsWith('JS:')) compiled += n;
  const rows = [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top);
  process.stdout.write(
    `instructions: vmexit run ${runArgs.join(' ')} under callgrind (node ${process.version}, --single-threaded): ${exits} exits\n` +
      `  all instructions      ${total.toLocaleString('en-US')} (${per(total).toFixed(0)} ${unit})\n` +
      `  compiled JavaScript   ${compiled.toLocaleString('en-US')} (${per(compiled).toFixed(0)} ${unit})\n` +
      `  V8's builtins         ${(mapped - compiled).toLocaleString('en-US')} (${per(mapped - compiled).toFixed(0)} ${unit})\n` +
      `  outside the code map  ${unmapped.toLocaleString('en-US')} (${per(unmapped).toFixed(0)} ${unit}: node and V8's C++, the compilers, the GC, start-up)\n` +
      `by function, the ${rows.length} that ran the most (${unit}):\n`,
  );
  for (const [name, n] of rows) process.stdout.write(`  ${per(n).toFixed(1).padStart(9)}  ${name}\n`);
  if (opts.json !== null) {
    writeFileSync(
      opts.json,
      `${JSON.stringify(
        {
          schema: 'vmexit-instructions/1',
          node: process.version,
          run: runArgs,
          exits,
          instructions: { total, compiled, builtins: mapped - compiled, unmapped },
          byFunction: rows.map(([name, count]) => ({ name, count })),
        },
        null,
        2,
      )}\n`,
    );
  }
}
