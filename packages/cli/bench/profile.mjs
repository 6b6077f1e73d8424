#!/usr/bin/env node
/**
 * Where a variant's simulation time goes: runs a workload on a variant (by default kbuild under "vmx shadow", the
 * exit-bound case) under V8's sampling profiler and keeps the samples of the window the run's counters cover (from
 * the workload's first process, or the start of the window it marks itself, to its end: not the VM's creation,
 * the boot, the trace's decoding or its planning), and prints the self time of the
 * functions that took the most, and the self time by package (`@vmexit/core/paging`, `@vmexit/mmu-shadow`, rxjs,
 * the garbage collector, ...). One warm-up run first, unprofiled, so that the profile is of optimized code;
 * then `--runs` profiled runs (default 3), their samples added up. `--cpuprofile FILE` writes the last run's
 * profile, cut to that window, for Chrome DevTools (Performance panel: Load profile).
 *
 * This is `node --cpu-prof` limited to the window the figures time, with the summary that the speed work's notes
 * put before and after a change.
 *
 *   node bench/profile.mjs [--variant SPEC] [--workload SPEC] [--mode MODE] [--top N] [--runs N]
 *                          [--interval US] [--cpuprofile FILE] [--json FILE] [--quick]
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import process from 'node:process';
import { createVm, tuneV8, VariantError } from '@vmexit/core';
import { createTraceLoader, TraceError, WorkloadError } from '@vmexit/guest';
import { InputError, parseVariantSpec } from '@vmexit/lab';
import { parseBenchArgs } from '../../../scripts/bench-args.mjs';
import { runWorkloadOn, syncPost } from '../../../scripts/kbuild-bench.mjs';

// The V8 flags the CLI runs with (core's tuneV8), set before anything is profiled: the profile is the CLI's.
tuneV8();

// Output cut short by its reader (`| head`) ends the run quietly.
process.stdout.on('error', (e) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});

const SYNOPSIS =
  'node bench/profile.mjs [--variant SPEC] [--workload SPEC] [--mode MODE] [--top N] [--runs N] [--interval US] [--cpuprofile FILE] [--json FILE] [--quick]';
let spec = 'vmx shadow';
let workload = null;
let mode = 'long4';
let top = 25;
let interval = 100;
let cpuprofile = null;
const value = (name, next, usage) => {
  const v = next();
  if (v === undefined || v.startsWith('--')) usage(`${name} needs a value`);
  return v;
};
const count = (name, v, lo, hi, usage) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < lo || n > hi) usage(`${name} ${v} is not an integer from ${lo} to ${hi}`);
  return n;
};
const opts = parseBenchArgs({
  name: 'profile',
  synopsis: SYNOPSIS,
  runs: 3,
  maxRuns: 20,
  options: {
    '--variant': (next, usage) => (spec = value('--variant', next, usage)),
    '--workload': (next, usage) => (workload = value('--workload', next, usage)),
    '--mode': (next, usage) => {
      mode = value('--mode', next, usage);
      if (!['legacy32', 'pae', 'long4', 'long5'].includes(mode)) usage(`--mode ${mode} is not one of legacy32, pae, long4, long5`);
    },
    '--top': (next, usage) => (top = count('--top', value('--top', next, usage), 1, 500, usage)),
    '--interval': (next, usage) => (interval = count('--interval', value('--interval', next, usage), 10, 100_000, usage)),
    '--cpuprofile': (next, usage) => {
      cpuprofile = value('--cpuprofile', next, usage);
      try {
        writeFileSync(cpuprofile, ''); // as --json: a file that cannot be written fails the run before it starts
      } catch (e) {
        usage(`cannot write --cpuprofile file '${cpuprofile}': ${e.message}`);
      }
    },
  },
});
workload ??= opts.quick ? 'pt-recycle:dirs=16,rounds=2' : 'kbuild';
const runs = opts.quick ? 1 : opts.runs;

/** An error's message on one line (a variant's errors list their findings on lines of their own). */
const oneLine = (e) =>
  e.message
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .join(' ');
let variant;
try {
  variant = await parseVariantSpec(spec, {});
} catch (e) {
  if (!(e instanceof InputError)) throw e;
  opts.usage(oneLine(e));
}
const native = variant.backend === 'none';
/** A VM of the variant, null for a native one (a variant the core refuses is a usage error, found before any run). */
async function vmOf() {
  if (native) return null;
  try {
    return await createVm({ ...variant, guest: { ...variant.guest, mode } }, { seed: 1 });
  } catch (e) {
    if (!(e instanceof VariantError)) throw e;
    opts.usage(`--variant "${spec}": ${oneLine(e)}`);
  }
}
await vmOf();

const session = new Session();
session.connect();
const post = syncPost(session);
post('Profiler.enable');
post('Profiler.setSamplingInterval', { interval });

const loadTrace = createTraceLoader();
const nowUs = () => Number(process.hrtime.bigint() / 1000n); // the profiler's clock (the monotonic clock, in us)

/**
 * One run; with `profile`, under the profiler, started before the VM is built (the profiler's thread takes a while
 * to take its first sample), and the run's window, from the counters' start to their end, in the profiler's clock.
 */
async function runOnce(profile) {
  if (profile) post('Profiler.start');
  const vm = await vmOf();
  let from = 0;
  let to = 0;
  let result;
  try {
    result = runWorkloadOn(vm, { workload, mode, seed: 1, loadTrace, atStart: () => (from = nowUs()), atEnd: () => (to = nowUs()) });
  } catch (e) {
    // A workload or trace the guest refuses is a usage error; anything else is a fault of the simulator.
    if (!(e instanceof WorkloadError || e instanceof TraceError)) throw e;
    if (profile) post('Profiler.stop');
    opts.usage(`--workload '${workload}' on "${spec}": ${oneLine(e)}`);
  }
  if (!profile) return { result };
  const { profile: p } = post('Profiler.stop');
  return { result, profile: p, from, to };
}

/**
 * `p` cut to the window (from, to], in the profiler's clock: the samples taken in it, each standing for the time
 * since the one before it, and the nodes' hit counts recounted (their per-line ticks, which cover the whole run, left out).
 */
function windowOf(p, from, to) {
  const samples = [];
  const timeDeltas = [];
  let at = p.startTime;
  let prev = from;
  for (let j = 0; j < p.samples.length; j++) {
    at += p.timeDeltas[j] ?? 0;
    if (at <= from || at > to) continue;
    samples.push(p.samples[j]);
    timeDeltas.push(at - prev);
    prev = at;
  }
  const hits = new Map();
  for (const id of samples) hits.set(id, (hits.get(id) ?? 0) + 1);
  const nodes = p.nodes.map((n) => {
    const m = { ...n, hitCount: hits.get(n.id) ?? 0 };
    delete m.positionTicks;
    return m;
  });
  return { nodes, startTime: from, endTime: to, samples, timeDeltas };
}

const warm = (await runOnce(false)).result; // warm-up, unprofiled
const self = new Map(); // function key -> microseconds
const byArea = new Map();
let total = 0;
let inHooks = 0;
let seconds = 0;
let exits = 0;
let last = null;
for (let i = 0; i < runs; i++) {
  const run = await runOnce(true);
  const profile = windowOf(run.profile, run.from, run.to);
  seconds += (run.to - run.from) / 1e6;
  exits = run.result.counters.total.exits ?? 0;
  last = profile;
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const ticks = new Map();
  for (let j = 0; j < profile.samples.length; j++) ticks.set(profile.samples[j], (ticks.get(profile.samples[j]) ?? 0) + profile.timeDeltas[j]);
  // The samples under a VmHooks method: the hypervisor's side of the exits (backend, pipeline, MMU, emulator).
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const underHooks = (id) => {
    for (let a = id; a !== undefined; a = parent.get(a)) if (nodes.get(a).callFrame.url.endsWith('/core/dist/vm/vm-hooks.js')) return true;
    return false;
  };
  for (const [id, us] of ticks) {
    const cf = nodes.get(id).callFrame;
    const area = areaOf(cf);
    if (area === null) continue; // (program) and (idle): not JavaScript of the run
    if (underHooks(id)) inHooks += us;
    const key = `${cf.functionName || '(anonymous)'}  ${shortUrl(cf.url)}${cf.url === '' ? '' : `:${cf.lineNumber + 1}`}`;
    self.set(key, (self.get(key) ?? 0) + us);
    byArea.set(area, (byArea.get(area) ?? 0) + us);
    total += us;
  }
}
session.disconnect();

/** The package (and for core, the folder) a frame's script belongs to; null for the profiler's own pseudo-frames. */
function areaOf(cf) {
  if (cf.functionName === '(program)' || cf.functionName === '(idle)' || cf.functionName === '(root)') return null;
  if (cf.functionName === '(garbage collector)') return '(garbage collector)';
  const m = /\/(?:packages|examples)\/([^/]+)\/dist\/(?:([^/]+)\/)?/.exec(cf.url);
  if (m !== null) return m[1] === 'core' && m[2] !== undefined ? `@vmexit/core/${m[2]}` : `@vmexit/${m[1]}`;
  const nm = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(cf.url);
  if (nm !== null) return nm[1];
  if (cf.url.startsWith('node:') || cf.url === '') return 'node internals';
  return 'other';
}
function shortUrl(url) {
  const m = /\/(?:packages|examples)\/([^/]+)\/dist\/(.*)$/.exec(url);
  if (m !== null) return `${m[1]}/${m[2]}`;
  const nm = /\/node_modules\/(.*)$/.exec(url);
  return nm !== null ? nm[1] : url;
}

const ms = (us) => `${(us / 1000).toFixed(0).padStart(7)} ms`;
const pct = (us) => `${((100 * us) / total).toFixed(1).padStart(5)}%`;
process.stdout.write(
  `profile: ${workload} under ${spec}, ${mode}, seed 1; ${runs} profiled run(s) after a warm-up, sampling interval ${interval} us requested (node ${process.version})\n` +
    `  profiled: the window each run's counters cover, ${(seconds / runs).toFixed(3)} s per run, ${exits} exits per run` +
    (exits > 0 ? ` (${(((seconds / runs) * 1e9) / exits).toFixed(0)} ns of window per exit)` : '') +
    `\n  the warm-up run, unprofiled: ${warm.wallSeconds.toFixed(3)} s (its wallSeconds)` +
    `\n  ${(total / 1000).toFixed(0)} ms of samples in JavaScript, native code and GC; ${pct(inHooks).trim()} of them under VmHooks` +
    ` (the hypervisor's side of the exits: backend, exit pipeline, MMU, emulator)\n\nself time by package:\n`,
);
const areas = [...byArea].sort((a, b) => b[1] - a[1]);
for (const [a, us] of areas) process.stdout.write(`  ${ms(us)} ${pct(us)}  ${a}\n`);
process.stdout.write(`\nself time by function, the ${top} that took the most:\n`);
const fns = [...self].sort((a, b) => b[1] - a[1]).slice(0, top);
for (const [k, us] of fns) process.stdout.write(`  ${ms(us)} ${pct(us)}  ${k}\n`);

if (cpuprofile !== null) writeFileSync(cpuprofile, JSON.stringify(last));
if (opts.json !== null)
  writeFileSync(
    opts.json,
    JSON.stringify(
      {
        schema: 'vmexit-profile/1',
        workload,
        variant: spec,
        mode,
        runs,
        intervalUs: interval,
        windowSecondsPerRun: seconds / runs,
        warmUpWallSeconds: warm.wallSeconds,
        exitsPerRun: exits,
        sampledMs: total / 1000,
        underVmHooksMs: inHooks / 1000,
        byPackage: areas.map(([area, us]) => ({ area, ms: us / 1000 })),
        functions: fns.map(([fn, us]) => ({ fn, ms: us / 1000 })),
      },
      null,
      2,
    ) + '\n',
  );
