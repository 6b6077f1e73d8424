// The kbuild benchmark that packages/policies and packages/mmu-tdp run on their own variants: the bundled
// kbuild trace natively and under each variant, in one process, reporting represented guest accesses/s for
// each, the ratio to the native run, and a plain scan of the decoded trace's records (the scan baseline), all
// measured in the same run. The scan, `runWorkloadOn`, `median` and `spread` also serve packages/cli/bench/main.bench.mjs
// (`runWorkloadOn` packages/cli/bench/exit-breakdown.mjs and profile.mjs)
// (the scan and `median` packages/guest/bench/replay.bench.mjs).
//
// Each variant is composed by `createVm` with the built-in module sources, as `vmexit run` does (@vmexit/lab's
// runVariant), and run by `runWorkload` on the VM's machine. Every round runs each variant once (round-robin),
// so that the load of a shared machine falls on all of them alike; round 0 is the warm-up. It fails when a
// run's memory digest or exit count differs from the run before it, or its digest or accesses from native's. The
// garbage of the runs before is collected before each run (`collectGarbage`).
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { readFileSync } from 'node:fs';
import { createVm } from '@vmexit/core';
import { KBUILD_TRACE_PATH, decodeVxt, nativeCounters, runWorkload } from '@vmexit/guest';

const SEED = 1;
const MODE = 'long4';

/** The median of `a` (the upper one of an even count). */
export const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
/** (max - min) / median of `a`; 0 for fewer than two. */
export const spread = (a) => (a.length < 2 ? 0 : (Math.max(...a) - Math.min(...a)) / median(a));

/** The scan baseline: one timed pass over a decoded trace's records (count and page of each). */
export function scanRecords(trace) {
  const { count, page } = trace.accesses;
  const t = performance.now();
  let n = 0;
  let s = 0;
  for (let j = 0; j < count.length; j++) {
    n += count[j];
    s += page[j];
  }
  const seconds = (performance.now() - t) / 1000;
  if (s === -1) console.log(''); // keep the sum live
  return { seconds, represented: n };
}

/**
 * `session.post` (node:inspector) as a call that returns the method's result, or throws its error: the Profiler and
 * HeapProfiler domains answer before `post` returns, as the inspector runs in this thread.
 */
export function syncPost(session) {
  return (method, params = {}) => {
    let result;
    let error = null;
    session.post(method, params, (e, r) => {
      error = e;
      result = r;
    });
    if (error !== null) throw error;
    return result;
  };
}

/** V8's full collection: `gc` of `node --expose-gc`, else the flag set now (see collectGarbage). */
let fullGc = null;

/**
 * Collects the garbage of the runs before, outside any timed window: called before each run, so that a run does
 * not pay for the heap that another variant left (a round-robin round runs every variant in one process, and an
 * old VM's shadow pages, maps and guest memory are collected at whatever point of the next run V8 chooses). A
 * run still pays for the garbage it makes itself while it runs.
 */
export function collectGarbage() {
  if (fullGc === null) {
    if (typeof globalThis.gc === 'function') fullGc = globalThis.gc;
    else {
      // Without the flag on the command line: set, it takes effect for the contexts made after it, so a new context
      // hands over its `gc` (which collects the whole heap). Set at the first call, not at import.
      setFlagsFromString('--expose-gc');
      fullGc = runInNewContext('gc');
    }
  }
  fullGc();
}

/** `RUNS` from the environment: measured runs per variant (default 3). */
export function runsFromEnv() {
  const runs = Number(process.env.RUNS ?? 3);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`RUNS: expected a positive integer, got '${process.env.RUNS}'`);
  return runs;
}

/**
 * One run of `workload` on `vm`'s machine, natively when `vm` is null, counting with the VM's counters. Its trace,
 * if it has one: `trace` (already decoded), or what `loadTrace` loads. `atStart` and `atEnd` are called where the
 * counted window starts (after the guest booted) and ends.
 */
export function runWorkloadOn(vm, { workload, mode, seed, trace = null, loadTrace = () => trace, atStart, atEnd }) {
  const { result } = runWorkload({
    workload,
    mode,
    seed,
    loadTrace,
    machine: vm === null ? undefined : vm.machine,
    counters: (machine, at) => {
      if (at === 'start' && atStart !== undefined) atStart();
      if (at === 'end' && atEnd !== undefined) atEnd();
      if (vm === null) return nativeCounters(machine);
      const c = vm.counters();
      return { total: c.total, vcpus: c.perVcpu.map((x) => ({ ...x })) };
    },
  });
  return result;
}

/**
 * Runs the benchmark and prints its table (and, with JSON=1 in the environment, one JSON document).
 * - `variants`: [name, variant] pairs, the variant as `createVm` takes it without `guest` (null = native; the
 *   first native one is the reference);
 * - `runs`: measured runs per variant, after one warm-up round;
 * - `target`: the least ratio to native that each non-native variant should reach;
 * - `extra`: one more counter of each row: `{ field, counter, column }`, its name in the JSON, the counter it
 *   reads, and its label in the table (null: JSON only).
 */
export async function runKbuildBench({ variants, runs, target, extra }) {
  const bytes = readFileSync(KBUILD_TRACE_PATH);
  const trace = decodeVxt(bytes, KBUILD_TRACE_PATH);

  async function runOnce(variant) {
    const vm = variant === null ? null : await createVm({ ...variant, guest: { mode: MODE, personality: 'linux' } }, { seed: SEED });
    return runWorkloadOn(vm, { workload: 'kbuild', mode: MODE, seed: SEED, trace });
  }

  const walls = new Map(variants.map(([name]) => [name, []]));
  const last = new Map();
  const scans = [];
  let represented = 0;
  for (let i = 0; i < runs + 1; i++) {
    for (const [name, variant] of variants) {
      collectGarbage();
      const sc = scanRecords(trace);
      represented = sc.represented;
      const r = await runOnce(variant);
      const prev = last.get(name);
      if (prev !== undefined && (r.memoryDigest !== prev.memoryDigest || r.counters.total.exits !== prev.counters.total.exits)) {
        throw new Error(
          `${name}: run ${i} differs from the run before it (digest ${r.memoryDigest} vs ${prev.memoryDigest}, exits ${r.counters.total.exits} vs ${prev.counters.total.exits}): runs must be deterministic`,
        );
      }
      last.set(name, r);
      if (i === 0) continue; // warm-up
      scans.push(sc.seconds);
      walls.get(name).push(r.wallSeconds);
    }
  }
  const rows = variants.map(([name]) => {
    const r = last.get(name);
    const w = walls.get(name);
    const wall = median(w);
    return {
      name,
      runs: w.length,
      wallSeconds: wall,
      spread: spread(w),
      accesses: r.guest.accesses,
      accessesPerSecond: r.guest.accesses / wall,
      exits: r.counters.total.exits ?? 0,
      [extra.field]: r.counters.total[extra.counter] ?? 0,
      memoryDigest: r.memoryDigest,
    };
  });

  const nativeName = variants.find(([, v]) => v === null)[0];
  const native = rows.find((r) => r.name === nativeName);
  for (const r of rows) {
    if (r.memoryDigest !== native.memoryDigest)
      throw new Error(`${r.name}: memory digest ${r.memoryDigest} differs from the native run's ${native.memoryDigest}`);
    if (r.accesses !== native.accesses) throw new Error(`${r.name}: ${r.accesses} represented accesses, natively ${native.accesses}`);
  }
  const scanSeconds = median(scans);
  const scanRate = represented / scanSeconds;

  const M = (x) => `${(x / 1e6).toFixed(1).padStart(6)} M/s`;
  console.log(
    `kbuild (${MODE}, seed ${SEED}): ${trace.accesses.length} records, ${represented} represented accesses; median of ${runs} round-robin runs after a warm-up round; spread = (max - min) / median`,
  );
  console.log(`  ${'scan of records'.padEnd(17)} ${M(scanRate)}`);
  for (const r of rows) {
    const ratio = r.accessesPerSecond / native.accessesPerSecond;
    const perExit = r.exits > 0 ? `${(((r.wallSeconds - native.wallSeconds) / r.exits) * 1e6).toFixed(2)} us/exit over native` : '';
    const column = extra.column === null ? '' : `${extra.column} ${r[extra.field]}  `;
    console.log(
      `  ${r.name.padEnd(17)} ${M(r.accessesPerSecond)}  ${r.wallSeconds.toFixed(3)} s (spread ${(r.spread * 100).toFixed(0)}%)  ` +
        `${ratio.toFixed(3)}x native  ${(r.accessesPerSecond / scanRate).toFixed(4)}x scan  exits ${r.exits}  ${column}${perExit}` +
        (r === native ? '' : `  target >= ${target}x native: ${ratio >= target ? 'met' : 'MISSED'}`),
    );
  }
  if (process.env.JSON === '1') {
    console.log(
      JSON.stringify({
        trace: KBUILD_TRACE_PATH,
        mode: MODE,
        seed: SEED,
        runs,
        representedAccesses: represented,
        scanAccessesPerSecond: scanRate,
        variants: rows.map((r) => ({ ...r, ratioToNative: r.accessesPerSecond / native.accessesPerSecond, ratioToScan: r.accessesPerSecond / scanRate })),
      }),
    );
  }
}
