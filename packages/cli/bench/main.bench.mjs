#!/usr/bin/env node
/**
 * The exit-path and whole-run benchmark: every variant that `vmexit main` runs, on the bundled
 * kbuild trace, against the native run and a plain scan of the trace's records, all in one process; the cost
 * of an exit on `pt-recycle` under VMX shadow paging (no write-flood), by exit kind, and the heap it allocates
 * (V8's sampling heap profiler over one run); the RxJS exit pipeline's share of it; and the peak RSS and wall
 * time of a 64 GiB guest running `demand-fault:pages=16`, each in a child process of its own
 * (bench/guest-rss.mjs).
 *
 *   node bench/main.bench.mjs [--json FILE] [--runs N] [--quick] [--only kbuild,pt-recycle,pipeline,rss]
 *
 * Every variant is composed by `createVm` from the spec `vmexit main` uses (its HEADLINE_VARIANTS and
 * WITH_FLOOD lists) plus the two TDP variants, and run by `runWorkload` on the VM's machine, as `vmexit run`
 * does. Runs are round-robin (each round runs every variant once, so that the load of a shared machine falls
 * on all of them alike; round 0 is a warm-up); the median wall time is reported. A variant's ratio to native
 * is the median over the rounds of that round's native wall time over the variant's: each variant is set
 * against the native run of its own round, so that a machine that speeds up or slows down between rounds
 * (this one does, by a third at times) moves both sides of a ratio. The garbage of the runs before is collected
 * before each run, outside its window (scripts/kbuild-bench.mjs collectGarbage): otherwise a run pays, at whatever
 * point V8 chooses, for the heap another variant left, and a ratio measures the order of the round. Each run is checked against
 * the previous run of the same variant (same exits, same memory digest) and against the native run (same
 * memory digest, same represented accesses): a figure is never printed for work that differs.
 *
 * Ratio to the scan: accesses/s divided by the scan's represented accesses/s; ns figures divided by the
 * scan's ns per record (the scan of the decoded kbuild records, timed before every run).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Session } from 'node:inspector';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { createVm, PF_VECTOR, tuneV8 } from '@vmexit/core';
import { KBUILD_TRACE_PATH, decodeVxt } from '@vmexit/guest';
import { parseVariantSpec } from '@vmexit/lab';
import { parseBenchArgs } from '../../../scripts/bench-args.mjs';
import { collectGarbage, median, runWorkloadOn, scanRecords, spread, syncPost } from '../../../scripts/kbuild-bench.mjs';

// The V8 flags the CLI runs with (core's tuneV8), set before anything is measured: the figures are the CLI's.
tuneV8();
const here = dirname(fileURLToPath(import.meta.url));
let HEADLINE_VARIANTS;
let WITH_FLOOD;
try {
  ({ HEADLINE_VARIANTS, WITH_FLOOD } = await import('../dist/commands/main.js'));
} catch (e) {
  process.stderr.write(`main.bench: cannot load ../dist/commands/main.js (${e.message}); build first: npx tsc -b packages/cli\n`);
  process.exit(1);
}

// ---------------------------------------------------------------------------------------------------------
// Command line

const PARTS = ['kbuild', 'pt-recycle', 'pipeline', 'rss'];
const only = new Set(PARTS);
const opts = parseBenchArgs({
  name: 'main.bench',
  synopsis: `node bench/main.bench.mjs [--json FILE] [--runs N] [--quick] [--only ${PARTS.join(',')}]`,
  runs: 3,
  maxRuns: 51,
  options: {
    '--only': (next, usage) => {
      const arg = next();
      const parts = (arg ?? '').split(',').filter((s) => s !== '');
      const bad = parts.filter((p) => !PARTS.includes(p));
      if (parts.length === 0 || bad.length > 0) usage(`--only: expected some of ${PARTS.join(', ')}, got '${arg ?? ''}'`);
      only.clear();
      for (const p of parts) only.add(p);
    },
  },
});
const RUNS = opts.quick ? 1 : opts.runs;
const SEED = 1;
const MODE = 'long4';
/** Targets (the README's Measured table): shadow paging at >= 0.6x native, TDP at >= 0.8x native, an exit in <= 150 ns. */
const SHADOW_TARGET = 0.6;
const TDP_TARGET = 0.8;
const EXIT_NS_TARGET = 150;
/** V8's heap sampling interval for the allocation figure: one sample per this many bytes allocated, on average. */
const ALLOC_SAMPLING_INTERVAL = 128;
const RSS_MB_TARGET = 200;
const RSS_WALL_TARGET = 3;
/** pt-recycle big enough that its exits (nearly all emulated writes to recycled page tables) dominate. */
const PT_RECYCLE = opts.quick ? 'pt-recycle:dirs=16,rounds=2' : 'pt-recycle:dirs=64,rounds=4';
const RSS_WORKLOAD = 'demand-fault:pages=16';
const RSS_MEMORY = 64 * 2 ** 30;

const out = { schema: 'vmexit-main-bench/3', node: process.version, runs: RUNS, quick: opts.quick, seed: SEED, mode: MODE };
const lines = [];
const say = (s) => {
  lines.push(s);
  process.stdout.write(`${s}\n`);
};
say(`vmexit main benchmark: node ${process.version}, ${RUNS} round-robin run(s) after a warm-up round, median${opts.quick ? ', --quick' : ''}`);

// ---------------------------------------------------------------------------------------------------------
// (0) A 64 GiB guest running demand-fault:pages=16: peak RSS and wall time, in a child process each, spawned
// first, while this process is small (see guest-rss.mjs: ru_maxrss survives fork and execve).

if (only.has('rss')) {
  out.rss = [];
  for (const spec of ['vmx shadow', 'vmx tdp']) {
    const t0 = performance.now();
    const child = spawnSync(process.execPath, [join(here, 'guest-rss.mjs'), spec, RSS_WORKLOAD, String(RSS_MEMORY)], { encoding: 'utf8' });
    const wall = (performance.now() - t0) / 1000;
    if (child.status !== 0) throw new Error(`guest-rss ${spec}: exit ${child.status}: ${child.stderr}`);
    const r = JSON.parse(child.stdout);
    const mb = r.maxRssKiB / 1024;
    const row = {
      spec,
      workload: RSS_WORKLOAD,
      memoryBytes: RSS_MEMORY,
      maxRssMiB: mb,
      vmHwmMiB: r.vmHwmKiB === null ? null : r.vmHwmKiB / 1024,
      wallSeconds: wall,
      runSeconds: r.runSeconds,
      memoryDigest: r.memoryDigest,
      targetRssMiB: RSS_MB_TARGET,
      targetWallSeconds: RSS_WALL_TARGET,
      targetMet: mb < RSS_MB_TARGET && wall < RSS_WALL_TARGET,
    };
    out.rss.push(row);
    say(
      `64 GiB guest, ${RSS_WORKLOAD}, ${spec}: peak RSS ${mb.toFixed(1)} MiB (target < ${RSS_MB_TARGET}: ${mb < RSS_MB_TARGET ? 'met' : 'MISSED'}), ` +
        `wall ${wall.toFixed(2)} s from spawn to exit (target < ${RSS_WALL_TARGET}: ${wall < RSS_WALL_TARGET ? 'met' : 'MISSED'}), run ${r.runSeconds.toFixed(2)} s`,
    );
  }
}

// ---------------------------------------------------------------------------------------------------------
// The plain scan: one pass over the decoded kbuild records (count and page of each), timed before every run.

const trace = decodeVxt(readFileSync(KBUILD_TRACE_PATH), KBUILD_TRACE_PATH);
const scanSeconds = [];
let represented = 0;
function scan() {
  const r = scanRecords(trace);
  represented = r.represented;
  return r.seconds;
}

/** A parsed variant per spec ('native' = backend none). */
const specCache = new Map();
async function variantOf(spec) {
  if (!specCache.has(spec)) specCache.set(spec, spec === 'native' ? null : await parseVariantSpec(spec, {}));
  return specCache.get(spec);
}

/** Composes the variant's VM (null natively), as lab's runOnVariant does. */
async function vmOf(spec) {
  const v = await variantOf(spec);
  return v === null ? null : createVm({ ...v, guest: { ...v.guest, mode: MODE, personality: 'linux' } }, { seed: SEED });
}

/**
 * One run of `workload` on `spec`; `prepare(vm)` may instrument the VM before the run, and `atStart` and `atEnd`
 * are called where the counted window starts (after the guest booted) and ends.
 */
async function runOnce(spec, workload, prepare, atStart, atEnd) {
  const vm = await vmOf(spec);
  if (prepare !== undefined && vm !== null) prepare(vm);
  return runWorkloadOn(vm, { workload, mode: MODE, seed: SEED, trace, atStart, atEnd });
}

/** Round-robin runs of `specs` on `workload`; returns a row per spec (median wall time). */
async function roundRobin(label, specs, workload) {
  const walls = new Map(specs.map((s) => [s, []]));
  const last = new Map();
  for (let i = 0; i < RUNS + 1; i++) {
    for (const spec of specs) {
      collectGarbage(); // the runs before leave their heap: see collectGarbage
      const sc = scan();
      const r = await runOnce(spec, workload);
      const prev = last.get(spec);
      if (prev !== undefined && (r.memoryDigest !== prev.memoryDigest || (r.counters.total.exits ?? 0) !== (prev.counters.total.exits ?? 0))) {
        throw new Error(`${label} ${spec}: run ${i} differs from the run before it (digest, exits): runs must be deterministic`);
      }
      last.set(spec, r);
      if (i === 0) continue; // warm-up
      scanSeconds.push(sc);
      walls.get(spec).push(r.wallSeconds);
    }
  }
  const native = last.get('native');
  const nativeWalls = walls.get('native');
  return specs.map((spec) => {
    const r = last.get(spec);
    if (r.memoryDigest !== native.memoryDigest)
      throw new Error(`${label} ${spec}: memory digest ${r.memoryDigest} differs from the native run's ${native.memoryDigest}`);
    if (r.guest.accesses !== native.guest.accesses) throw new Error(`${label} ${spec}: ${r.guest.accesses} accesses, natively ${native.guest.accesses}`);
    const w = walls.get(spec);
    // Round j's native wall time over the variant's in round j (both arrays hold one entry per round).
    const ratios = w.map((x, j) => nativeWalls[j] / x);
    return {
      spec,
      runs: w.length,
      wallSeconds: median(w),
      spread: spread(w),
      ratioToNative: median(ratios),
      roundWalls: w,
      roundRatios: ratios,
      accesses: r.guest.accesses,
      counters: r.counters.total,
    };
  });
}

// ---------------------------------------------------------------------------------------------------------
// (1) kbuild: native, every variant of `vmexit main`, and TDP.

const M = (x) => `${(x / 1e6).toFixed(1).padStart(7)} M/s`;
if (only.has('kbuild')) {
  const shadow = [...HEADLINE_VARIANTS.vmx, ...HEADLINE_VARIANTS.svm, ...WITH_FLOOD.vmx, ...WITH_FLOOD.svm];
  const tdp = ['vmx tdp', 'svm tdp'];
  const rows = await roundRobin('kbuild', ['native', ...shadow, ...tdp], 'kbuild');
  const scanRate = represented / median(scanSeconds);
  const native = rows[0];
  say(`kbuild (${MODE}, seed ${SEED}): ${trace.accesses.length} records, ${represented} represented accesses; scan ${M(scanRate)}`);
  out.kbuild = {
    records: trace.accesses.length,
    representedAccesses: represented,
    scanAccessesPerSecond: scanRate,
    variants: rows.map((r) => {
      const rate = r.accesses / r.wallSeconds;
      const ratio = r.ratioToNative;
      const target = r.spec === 'native' ? null : tdp.includes(r.spec) ? TDP_TARGET : SHADOW_TARGET;
      const exits = r.counters.exits ?? 0;
      const row = {
        spec: r.spec,
        wallSeconds: r.wallSeconds,
        spread: r.spread,
        // Each measured round's wall time and ratio to native (scripts/bench.mjs pools them over processes).
        roundWalls: r.roundWalls,
        roundRatios: r.roundRatios,
        accessesPerSecond: rate,
        ratioToNative: ratio,
        ratioToScan: rate / scanRate,
        exits,
        nsPerExitOverNative: exits > 0 ? ((r.wallSeconds - native.wallSeconds) / exits) * 1e9 : null,
        target,
        targetMet: target === null ? null : ratio >= target,
      };
      say(
        `  ${r.spec.padEnd(52)} ${M(rate)} ${r.wallSeconds.toFixed(3)} s (spread ${(r.spread * 100).toFixed(0)}%) ${ratio.toFixed(3)}x native ` +
          `${row.ratioToScan.toFixed(4)}x scan  exits ${exits}` +
          (target === null ? '' : `  target >= ${target}x: ${row.targetMet ? 'met' : 'MISSED'}`),
      );
      return row;
    }),
  };
}

// ---------------------------------------------------------------------------------------------------------
// (2) pt-recycle under VMX shadow, no policy: ns per exit over the native run, and by exit kind.

/**
 * Wraps every exit hook of every vCPU (exception, nestedFault, mmio, crWrite, crWriteFault, invlpg) with a
 * timer, and files each call's time under the kind and resolution of the exit it produced (from the VM's
 * merged exit stream). The time is the hypervisor's: from the hook's call (after the hardware walk that
 * faulted) to its answer (resolution carried out, emulation done). A hook call that produced no exit (a CR
 * write or INVLPG that does not exit) is filed under 'no exit'. The timer's own cost, measured on an empty
 * call, is subtracted.
 */
function instrument(vm, buckets) {
  let last = 'no exit';
  vm.exits$.subscribe((e) => {
    last = e.kind === 'exception' && e.vector === PF_VECTOR ? `#PF -> ${e.resolution.kind}` : `${e.kind} -> ${e.resolution.kind}`;
  });
  for (const h of vm.hooks) {
    for (const name of ['exception', 'nestedFault', 'mmio', 'crWrite', 'crWriteFault', 'invlpg']) {
      const orig = h[name].bind(h);
      h[name] = (...args) => {
        last = 'no exit';
        const t0 = performance.now();
        const r = orig(...args);
        const dt = performance.now() - t0;
        let b = buckets.get(last);
        if (b === undefined) buckets.set(last, (b = { calls: 0, ms: 0 }));
        b.calls++;
        b.ms += dt;
        return r;
      };
    }
  }
}

/** ns of one `performance.now()` pair around an empty call (what `instrument` adds to each figure). */
function timerOverheadNs() {
  const n = 200_000;
  let acc = 0;
  const f = (x) => x + 1;
  for (let w = 0; w < 2; w++) {
    acc = 0;
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      f(i);
      acc += performance.now() - t0;
    }
  }
  return (acc / n) * 1e6;
}

/**
 * The heap bytes a run allocates: one run of `workload` on `spec` (null natively; a VM as `vmexit run` makes it,
 * nothing attached that could keep an exit) under V8's sampling heap profiler, over the counted window, objects the
 * garbage collector has collected since included. The profiler takes a sample every `ALLOC_SAMPLING_INTERVAL` bytes
 * on average and scales each to an unbiased estimate of the bytes allocated. Returns the estimate and the run's exits.
 */
async function allocationOf(spec, workload) {
  const session = new Session();
  const post = syncPost(session);
  let profile = null;
  let sampling = false;
  let r;
  collectGarbage();
  session.connect();
  try {
    post('HeapProfiler.enable');
    r = await runOnce(
      spec,
      workload,
      undefined,
      // A workload that marks its own window starts the count again there (the counters' last 'start' counts).
      () => {
        if (sampling) post('HeapProfiler.stopSampling');
        post('HeapProfiler.startSampling', {
          samplingInterval: ALLOC_SAMPLING_INTERVAL,
          includeObjectsCollectedByMajorGC: true,
          includeObjectsCollectedByMinorGC: true,
        });
        sampling = true;
      },
      () => (profile = post('HeapProfiler.stopSampling').profile),
    );
  } finally {
    session.disconnect(); // ends the profiler's sampling with the session
  }
  if (profile === null) throw new Error(`main.bench: the run of ${workload} on ${spec} never reached the end of its counted window`);
  let bytes = 0;
  const visit = (node) => {
    bytes += node.selfSize;
    for (const c of node.children) visit(c);
  };
  visit(profile.head);
  return { bytes, exits: r.counters.total.exits ?? 0 };
}

let exitNs = null;
if (only.has('pt-recycle') || only.has('pipeline')) {
  const rows = await roundRobin('pt-recycle', ['native', 'vmx shadow'], PT_RECYCLE);
  const [native, vmx] = rows;
  const exits = vmx.counters.exits ?? 0;
  exitNs = ((vmx.wallSeconds - native.wallSeconds) / exits) * 1e9;
  const scanNs = (median(scanSeconds) / trace.accesses.length) * 1e9;
  const emulated = vmx.counters.insn_emulation ?? 0;
  // By kind: one instrumented run.
  const buckets = new Map();
  // Only the exits of the counted window (after boot), as the counters.
  await runOnce(
    'vmx shadow',
    PT_RECYCLE,
    (vm) => instrument(vm, buckets),
    () => buckets.clear(),
  );
  const overhead = timerOverheadNs();
  const kinds = [...buckets.entries()]
    .sort((a, b) => b[1].calls - a[1].calls)
    .map(([kind, b]) => ({ kind, calls: b.calls, hypervisorNsPerExit: Math.max(0, (b.ms / b.calls) * 1e6 - overhead) }));
  // What an exit allocates, as its time: (variant - native) / exits, each run's whole window sampled (the guest's own
  // work allocates alike in both). Attributing samples to the hypervisor's functions would miss those V8 inlined
  // into the vCPU's (a sample names only the functions with frames of their own).
  const allocNative = await allocationOf('native', PT_RECYCLE);
  const alloc = await allocationOf('vmx shadow', PT_RECYCLE);
  const allocPerExit = alloc.exits > 0 ? (alloc.bytes - allocNative.bytes) / alloc.exits : null;
  const met = exitNs <= EXIT_NS_TARGET;
  out.ptRecycle = {
    workload: PT_RECYCLE,
    variant: 'vmx shadow',
    nativeWallSeconds: native.wallSeconds,
    variantWallSeconds: vmx.wallSeconds,
    spread: vmx.spread,
    exits,
    emulatedWrites: emulated,
    nsPerExit: exitNs,
    ratioToScan: exitNs / scanNs,
    scanNsPerRecord: scanNs,
    target: EXIT_NS_TARGET,
    targetMet: met,
    timerOverheadNs: overhead,
    byKind: kinds,
    allocation: {
      samplingIntervalBytes: ALLOC_SAMPLING_INTERVAL,
      exits: alloc.exits,
      nativeBytes: allocNative.bytes,
      variantBytes: alloc.bytes,
      bytesPerExit: allocPerExit,
    },
    counters: vmx.counters,
  };
  say(
    `${PT_RECYCLE}, vmx shadow (no policy): ${exits} exits (${emulated} emulated writes), native ${native.wallSeconds.toFixed(3)} s, vmx ${vmx.wallSeconds.toFixed(3)} s`,
  );
  say(
    `  (variant - native) / exits        ${exitNs.toFixed(1).padStart(8)} ns/exit  ${(exitNs / scanNs).toFixed(1)}x scan  target <= ${EXIT_NS_TARGET} ns: ${met ? 'met' : 'MISSED'}`,
  );
  for (const k of kinds)
    say(`  in the hypervisor, ${k.kind.padEnd(14)} ${k.hypervisorNsPerExit.toFixed(1).padStart(8)} ns/exit  (${k.calls} exits, instrumented run)`);
  // No target: an address made by arithmetic where it becomes an exit (a `rep stos` element) is boxed once, new shadow
  // pages and roots are objects, and the rarer exits (CR writes, injected faults) build their own; an emulated write
  // made by a store allocates nothing (packages/cli/test/exit-allocation.int.test.ts pins it). See core's DESIGN.md.
  say(
    `  heap allocated, (variant - native) / exits ${allocPerExit === null ? '     n/a' : allocPerExit.toFixed(2).padStart(7)} B/exit` +
      `  (native ${(allocNative.bytes / 2 ** 20).toFixed(1)} MiB, vmx ${(alloc.bytes / 2 ** 20).toFixed(1)} MiB; V8's heap sampling, every ${ALLOC_SAMPLING_INTERVAL} B, one run each)`,
  );
}

// ---------------------------------------------------------------------------------------------------------
// (3) The RxJS exit pipeline's share: the VM's own channel (its policies, none here, the handler link and the
// counting observer), with the handler answered at once, timed per exit, against the cost of an exit above.

if (only.has('pipeline')) {
  const vm = await vmOf('vmx shadow');
  const h = vm.hooks[0];
  h.handleExit = () => ({ kind: 'resume' }); // the link stays; only the MMU's work behind it is left out
  const hw = h.backend.exceptionExit(h.state, PF_VECTOR, 3, 0x1000);
  const exit = { kind: 'exception', vcpu: 0, seq: 0, hw, vector: PF_VECTOR, errorCode: 3, address: 0x1000, access: 2, resolution: null, resolvedBy: null };
  const N = opts.quick ? 100_000 : 1_000_000;
  const pushAll = () => {
    const t0 = performance.now();
    for (let i = 0; i < N; i++) {
      exit.seq = i;
      exit.resolution = null;
      exit.resolvedBy = null;
      h.channel.push(exit);
    }
    return ((performance.now() - t0) * 1e6) / N;
  };
  pushAll(); // warm-up
  const samples = [];
  for (let r = 0; r < Math.max(3, RUNS); r++) samples.push(pushAll());
  const pipelineNs = median(samples);
  const scanNs = (median(scanSeconds) / trace.accesses.length) * 1e9;
  out.pipeline = { nsPerExit: pipelineNs, ratioToScan: pipelineNs / scanNs, shareOfExit: exitNs === null ? null : pipelineNs / exitNs };
  say(
    `exit pipeline (RxJS, vmx shadow's channel, handler answered at once): ${pipelineNs.toFixed(1)} ns/exit  ${(pipelineNs / scanNs).toFixed(1)}x scan` +
      (exitNs === null ? '' : `  share of an exit on pt-recycle: ${((pipelineNs / exitNs) * 100).toFixed(1)}%`),
  );
}

out.scan = { nsPerRecord: scanSeconds.length > 0 ? (median(scanSeconds) / trace.accesses.length) * 1e9 : null, runs: scanSeconds.length };
if (opts.json !== null) writeFileSync(opts.json, JSON.stringify(out, null, 2) + '\n');
