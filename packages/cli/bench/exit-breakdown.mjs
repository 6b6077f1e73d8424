#!/usr/bin/env node
/**
 * Where the time of one emulated page-table write goes. `pt-recycle` runs under a shadow-paging variant (no
 * write-flood: every 8-byte store to a recycled guest page table exits and is emulated); at the Nth such exit
 * whose page table is write-tracked by an upper-level shadow page (KVM `page_fault_handle_page_track`), and at
 * the Nth whose page table is only a level-1 table (the fetch path: `FNAME(fetch)` -> `mmu_set_spte`, which
 * finds it write-protected), the benchmark repeats that very store K times, then its parts one by one:
 *
 * - the whole store: `Vcpu.write` -> TLB miss -> the hardware walk of the shadow tables -> #PF -> the exit
 *   (backend, RxJS pipeline, the MMU's fault handler, the emulator and the MMU's write hook) -> back;
 * - the vCPU's side alone: the store with the exit answered at once (`VmHooks.exception` returning "done"):
 *   the TLB miss and the hardware walk of the shadow tables; and that walk alone;
 * - the exit alone: `VmHooks.exception` called directly (backend, pipeline, MMU, emulator);
 * - the MMU's fault handler alone (`Mmu.handlePageFault`: the guest walk and the MMU's checks), and the guest
 *   walk alone;
 * - the MMU's write hook alone (`Mmu.trackWrite`: the written gfn's shadow pages, the decisions, the zaps);
 * - what the parts cost more together than alone: the whole store minus the vCPU's side and the exit, and
 *   the exit minus the fault handler and the write hook (the backend, the pipeline, the emulator's store,
 *   and the composition: each part runs with the others' code and data around it, not in a loop of its own).
 *
 * The exit is found by wrapping `VmHooks.prototype.exception`, which is restored before anything is timed (an
 * own-property wrapper on the instance would change its hidden class and slow every exit it measures).
 *
 * Repeating one store is idempotent for the guest (it writes the value that is there) and for the MMU (the
 * written spte is already cleared after the first), so every repetition does the same work. Each figure is the
 * best of `runs` timed loops (ns per repetition), with its ratio to a plain Uint32Array scan's ns per element
 * timed in the same run. Counters and digests are not reported: the repetitions are extra exits.
 *
 * Then the same parts in situ: the bench's own pt-recycle (`main.bench.mjs`: dirs=64, rounds=4; dirs=16,
 * rounds=2 with --quick), or the workload `--in-situ` names (`kbuild`, a `.vxt` trace, a synthetic spec), is run
 * once per part, after a warm-up run, with that part timed on every call of an
 * emulated write: `VmHooks.exception` and `Mmu.handlePageFault` on a present, write #PF (P|W), `Mmu.trackWrite`
 * on every call, each wrapped on its prototype in a run of its own, so that no timer sits inside another. The
 * mean is reported with the timer's own cost subtracted (an empty timed region in the same wrapper, measured
 * on every call). In one more run the fault handler is timed by path (write-tracked page table or fetch path),
 * each emulated write's call and then the same call again at once (`faultByPath`). A last, untimed run counts
 * what its emulated writes meet: the
 * indirect shadow pages of the written gfn that the write hook visits (KVM `for_each_gfn_valid_sp_with_gptes`),
 * how many of them were present sptes it zapped, and how many writes took the fetch path (no upper-level page
 * write-tracks the gfn). In a long run a recycled frame is shadowed at several levels at once (it was a page
 * table of one level in one round, of another in the next), which the one repeated exit of the loop does not
 * show.
 *
 *   node bench/exit-breakdown.mjs [--variant "vmx shadow"] [--in-situ WORKLOAD] [--json FILE] [--runs N] [--quick]
 */
import { writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { createVm, FAULT_DONE, hexU64, tuneV8, walk, WalkResult, PF_VECTOR } from '@vmexit/core';
import { createTraceLoader, parseWorkloadRef, WorkloadError } from '@vmexit/guest';
import { parseVariantSpec } from '@vmexit/lab';
import { parseBenchArgs } from '../../../scripts/bench-args.mjs';
import { runWorkloadOn } from '../../../scripts/kbuild-bench.mjs';

// The V8 flags the CLI runs with (core's tuneV8), set before anything is measured: the figures are the CLI's.
tuneV8();

let spec = 'vmx shadow';
let inSituWorkload = null;
const opts = parseBenchArgs({
  name: 'exit-breakdown',
  synopsis: 'node bench/exit-breakdown.mjs [--variant SPEC] [--in-situ WORKLOAD] [--json FILE] [--runs N] [--quick]',
  runs: 7,
  maxRuns: 51,
  options: {
    '--variant': (next, usage) => {
      const v = next();
      if (v === undefined || v.startsWith('--')) usage('--variant needs a variant spec, e.g. "vmx shadow"');
      spec = v;
    },
    '--in-situ': (next, usage) => {
      const w = next();
      if (w === undefined || w.startsWith('--')) usage('--in-situ needs a workload, e.g. kbuild or pt-recycle:dirs=64,rounds=4');
      try {
        parseWorkloadRef(w);
      } catch (e) {
        usage(`--in-situ '${w}': ${e.message}`);
      }
      inSituWorkload = w;
    },
  },
});
const K = opts.quick ? 50_000 : 200_000;
const RUNS = opts.quick ? 3 : opts.runs;
const AT = 20_000; // the emulated write to start looking from (past the boot and the first rounds' warm-up)
const WORKLOAD = 'pt-recycle:dirs=16,rounds=1';

let variant;
try {
  variant = await parseVariantSpec(spec, {});
} catch (e) {
  process.stderr.write(`exit-breakdown: --variant '${spec}': ${e.message}\n`);
  process.exit(2);
}
const vm = await createVm({ ...variant, guest: { ...variant.guest, mode: 'long4', personality: 'linux' } }, { seed: 1 });
const mmu = vm.mmu;
if (mmu === null || mmu.name !== 'shadow') {
  process.stderr.write(`exit-breakdown: --variant '${spec}': the breakdown is of the shadow MMU's emulated page-table write; use a shadow variant\n`);
  process.exit(2);
}

/** ns per element of a plain scan of a Uint32Array of 2^22 words (the best of RUNS, after a warm-up), the ratio's baseline. */
function scanSum(a) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s = (s + a[i]) | 0;
  return s;
}
function scanNs() {
  const a = new Uint32Array(1 << 22).map((_, i) => i * 2654435761);
  let sink = scanSum(a);
  let best = Infinity;
  for (let r = 0; r < RUNS; r++) {
    const t = performance.now();
    sink ^= scanSum(a);
    best = Math.min(best, performance.now() - t);
  }
  if (sink === 0.5) process.stdout.write('');
  return (best * 1e6) / a.length;
}

/** The best of RUNS timed loops of K calls of `f`, in ns per call. */
function time(f) {
  let best = Infinity;
  for (let r = 0; r < RUNS; r++) {
    const t = performance.now();
    for (let i = 0; i < K; i++) f();
    best = Math.min(best, performance.now() - t);
  }
  return (best * 1e6) / K;
}

/** Whether some shadow page above level 1 shadows `gfn`, its write-track count (the fault handler then emulates without the fetch). */
const writeTracked = (gfn) => mmu.upperTrack.has(gfn);

const results = {};
const hooks = vm.hooks[0];
const proto = Object.getPrototypeOf(hooks);
const exception = proto.exception;
let seen = 0;
proto.exception = function (vcpu, vector, errorCode, va, access) {
  // An emulated write: a present, write #PF (P|W) into a write-protected guest page table.
  if (this === hooks && vector === PF_VECTOR && (errorCode & 3) === 3 && ++seen >= AT) {
    const r = new WalkResult();
    walk(vcpu.ctx, vcpu.memory, va, access, 0, r);
    const gpa = r.pa;
    const gfn = Math.floor(gpa / 4096);
    const path = writeTracked(gfn) ? 'tracked' : 'fetch';
    if (results[path] === undefined && mmu.isWriteProtected(gfn)) {
      const done = Object.keys(results).length === 1;
      if (done) proto.exception = exception; // the second path: nothing is wrapped from here on
      const { pendingSize: size, pendingLo: lo, pendingHi: hi } = vcpu;
      const wrapper = proto.exception;
      proto.exception = exception;
      const hw = new WalkResult();
      const g = new WalkResult();
      const store = time(() => vcpu.write(va, size, lo, hi));
      const exit = time(() => exception.call(hooks, vcpu, vector, errorCode, va, access));
      const fault = time(() => mmu.handlePageFault(vcpu, va, errorCode));
      const guestWalk = time(() => walk(vcpu.ctx, vcpu.memory, va, access, 1, g));
      const writeHook = time(() => mmu.trackWrite(vcpu, gpa, size, lo, hi, lo, hi));
      const hwWalk = time(() => walk(vcpu.activeCtx, vcpu.activeMem, va, access, 1, hw));
      proto.exception = () => FAULT_DONE;
      const vcpuSide = time(() => vcpu.write(va, size, lo, hi));
      proto.exception = wrapper;
      results[path] = {
        va,
        gpa,
        store,
        vcpuSide,
        hwWalk,
        exit,
        fault,
        guestWalk,
        writeHook,
        together: store - vcpuSide - exit,
        exitRest: exit - fault - writeHook,
      };
    }
  }
  return exception.call(this, vcpu, vector, errorCode, va, access);
};
runWorkloadOn(vm, { workload: WORKLOAD, mode: 'long4', seed: 1, trace: null });
proto.exception = exception;
const scan = scanNs();

const rows = [
  ['the whole store (write, exit, emulation)', 'store'],
  ["  the vCPU's side (TLB miss, hardware walk, the exit answered at once)", 'vcpuSide'],
  ['    of which the hardware walk of the shadow tables', 'hwWalk'],
  ['  the exit (VmHooks.exception: backend, pipeline, MMU, emulator)', 'exit'],
  ["    the MMU's fault handler (Mmu.handlePageFault)", 'fault'],
  ['      of which the guest walk', 'guestWalk'],
  ["    the MMU's write hook (Mmu.trackWrite)", 'writeHook'],
  ['    the rest of the exit (backend, pipeline, emulator)', 'exitRest'],
  ["  what the vCPU's side and the exit cost more together", 'together'],
];
const hex = (x) => hexU64(x);
process.stdout.write(
  `exit breakdown: ${WORKLOAD} under ${spec}, long4, seed 1; one emulated page-table write repeated ${K} times per loop, best of ${RUNS} loops (node ${process.version})\n`,
);
for (const path of ['tracked', 'fetch']) {
  const x = results[path];
  if (x === undefined) {
    process.stdout.write(`${path}: no such exit in the run\n`);
    continue;
  }
  process.stdout.write(
    `\n${path === 'tracked' ? 'write-tracked page table (emulated from the fault handler)' : 'level-1 page table (the fetch path, then emulated)'}: va ${hex(x.va)}, gpa ${hex(x.gpa)}\n`,
  );
  for (const [label, key] of rows)
    process.stdout.write(`  ${label.padEnd(72)} ${x[key].toFixed(1).padStart(7)} ns  ${(x[key] / scan).toFixed(1).padStart(6)}x scan\n`);
}
process.stdout.write(`\nscan: ${scan.toFixed(3)} ns per element (a plain Uint32Array sum, best of ${RUNS})\n`);

// ---------------------------------------------------------------------------------------------------------
// In situ: each part timed per call over a whole run of the bench's pt-recycle.

const IN_SITU = inSituWorkload ?? (opts.quick ? 'pt-recycle:dirs=16,rounds=2' : 'pt-recycle:dirs=64,rounds=4');
const loadTrace = createTraceLoader(); // a trace workload's (kbuild, a .vxt), decoded once for all the runs
const newVm = () => createVm({ ...variant, guest: { ...variant.guest, mode: 'long4', personality: 'linux' } }, { seed: 1 });
function runInSitu(v) {
  try {
    return runWorkloadOn(v, { workload: IN_SITU, mode: 'long4', seed: 1, loadTrace });
  } catch (e) {
    if (!(e instanceof WorkloadError)) throw e;
    process.stderr.write(`exit-breakdown: --in-situ '${IN_SITU}': ${e.message}\n`); // the first run: nothing written yet
    process.exit(2);
  }
}

/**
 * Runs IN_SITU on a new VM with `proto[name]` timed on every call that `emulatedWrite(first three arguments)` picks: the mean ns
 * per call, the timer's cost subtracted. A first run on another VM, with the same wrapper, warms the code up
 * and is not counted.
 */
async function timedInSitu(protoOf, name, emulatedWrite) {
  let calls = 0;
  let inside = 0;
  let empty = 0;
  for (const counted of [false, true]) {
    const v = await newVm();
    const p = protoOf(v);
    const orig = p[name];
    calls = inside = empty = 0;
    // Fixed arity (the most any of the three takes): no rest array, no apply, inside the timed region.
    p[name] = function (a, b, c, d, e, f, g) {
      if (!emulatedWrite(a, b, c)) return orig.call(this, a, b, c, d, e, f, g);
      const t0 = performance.now();
      const r = orig.call(this, a, b, c, d, e, f, g);
      const t1 = performance.now();
      const t2 = performance.now();
      inside += t1 - t0;
      empty += t2 - t1;
      calls++;
      return r;
    };
    try {
      runInSitu(v);
    } finally {
      p[name] = orig;
    }
    if (counted) break;
  }
  return { calls, ns: ((inside - empty) * 1e6) / calls, timerNs: (empty * 1e6) / calls };
}

// The exits of emulated writes: a present, write #PF (P|W), as the loop above picks them (nearly all such
// exits of pt-recycle are emulated writes; the write hook is called for emulated writes only).
const inSitu = {
  exit: await timedInSitu(
    (v) => Object.getPrototypeOf(v.hooks[0]),
    'exception',
    (_vcpu, vector, errorCode) => vector === PF_VECTOR && (errorCode & 3) === 3,
  ),
  fault: await timedInSitu(
    (v) => Object.getPrototypeOf(v.mmu),
    'handlePageFault',
    (_vcpu, _address, errorCode) => (errorCode & 3) === 3,
  ),
  writeHook: await timedInSitu(
    (v) => Object.getPrototypeOf(v.mmu),
    'trackWrite',
    () => true,
  ),
};

/**
 * The MMU's fault handler on every emulated write of a run of IN_SITU (after a warm-up run on another VM), by path:
 * a write-tracked page table (the handler emulates at once) or one that no upper-level page write-tracks (the
 * fetch path: the shadow tables walked down to the leaf, which `mmu_set_spte` finds write-protected). Each call
 * that emulates is timed, then the same call is made again at once and timed: the second finds warm what the
 * first found cold (caches, branch predictors, one-time work such as pending root reloads), so the difference is
 * what the run's surroundings cost the first. The second call is idempotent for an emulated write (same result,
 * same sptes; only counters move, in a run whose counters are not reported). The path is read before the call (a
 * guest walk without side effects, outside the timed regions).
 */
async function faultByPath() {
  const paths = { tracked: { calls: 0, ns: 0, againNs: 0 }, fetch: { calls: 0, ns: 0, againNs: 0 } };
  for (const counted of [false, true]) {
    const v = await newVm();
    const m = v.mmu;
    const p = Object.getPrototypeOf(m);
    const orig = p.handlePageFault;
    const r = new WalkResult();
    const first = { tracked: 0, fetch: 0 };
    const again = { tracked: 0, fetch: 0 };
    const calls = { tracked: 0, fetch: 0 };
    let empty = 0;
    p.handlePageFault = function (vcpu, address, errorCode) {
      if (this !== m || (errorCode & 3) !== 3) return orig.call(this, vcpu, address, errorCode);
      const path = walk(vcpu.ctx, vcpu.memory, address, errorCode & 0x16, 0, r) === 0 && m.upperTrack.has(Math.floor(r.pa / 4096)) ? 'tracked' : 'fetch';
      const t0 = performance.now();
      const res = orig.call(this, vcpu, address, errorCode);
      const t1 = performance.now();
      if (res.kind !== 'emulate') return res; // not an emulated write: not repeated, not counted
      const t2 = performance.now();
      orig.call(this, vcpu, address, errorCode);
      const t3 = performance.now();
      const t4 = performance.now();
      first[path] += t1 - t0;
      again[path] += t3 - t2;
      empty += t4 - t3;
      calls[path]++;
      return res;
    };
    try {
      runInSitu(v);
    } finally {
      p.handlePageFault = orig;
    }
    if (!counted) continue;
    const timer = empty / (calls.tracked + calls.fetch);
    for (const k of ['tracked', 'fetch']) {
      const n = calls[k];
      paths[k] = { calls: n, ns: n === 0 ? 0 : ((first[k] - timer * n) * 1e6) / n, againNs: n === 0 ? 0 : ((again[k] - timer * n) * 1e6) / n };
    }
  }
  return paths;
}
const byPath = await faultByPath();

// What the run's emulated writes meet (untimed).
const mix = { writes: 0, fetchPath: 0, pagesVisited: 0, presentZapped: 0, byPages: {} };
{
  const v = await newVm();
  const m = v.mmu;
  const p = Object.getPrototypeOf(m);
  const orig = p.trackWrite;
  p.trackWrite = function (vcpu, gpa, ...rest) {
    if (this === m) {
      const gfn = Math.floor(gpa / 4096);
      const pages = m.indirectPagesOf(gfn);
      mix.writes++;
      if (!m.upperTrack.has(gfn)) mix.fetchPath++;
      mix.pagesVisited += pages.length;
      mix.byPages[pages.length] = (mix.byPages[pages.length] ?? 0) + 1;
      for (const sp of pages) {
        const loc = sp.base + ((gpa & 0xfff) >>> 3); // 8-byte gptes (the long4 guest)
        if (m.isPresent(m.pool.lo(loc), m.pool.hi(loc))) mix.presentZapped++;
      }
    }
    return orig.call(this, vcpu, gpa, ...rest);
  };
  try {
    runInSitu(v);
  } finally {
    p.trackWrite = orig;
  }
}

const loopTracked = results.tracked;
const pct = (n) => `${((100 * n) / mix.writes).toFixed(1)}%`;
process.stdout.write(
  `\nin situ: ${IN_SITU} under ${spec}, long4, seed 1; each part timed on every P|W #PF (or write hook) in a run of its own after a warm-up run, the timer's cost (${inSitu.exit.timerNs.toFixed(1)} ns) subtracted\n`,
);
for (const [label, key, loopKey] of [
  ['the exit (VmHooks.exception: backend, pipeline, MMU, emulator)', 'exit', 'exit'],
  ["  the MMU's fault handler (Mmu.handlePageFault)", 'fault', 'fault'],
  ["  the MMU's write hook (Mmu.trackWrite)", 'writeHook', 'writeHook'],
]) {
  const x = inSitu[key];
  const loop = loopTracked === undefined ? '' : `  (the write-tracked loop above: ${loopTracked[loopKey].toFixed(1)} ns)`;
  process.stdout.write(`  ${label.padEnd(72)} ${x.ns.toFixed(1).padStart(7)} ns  ${(x.ns / scan).toFixed(1).padStart(6)}x scan, ${x.calls} calls${loop}\n`);
}
process.stdout.write(`    the fault handler by path, each call timed and then the same call again at once (warm: caches, predictors):\n`);
for (const [label, key] of [
  ['a write-tracked page table (emulated at once)', 'tracked'],
  ['a page table no upper-level page write-tracks (the fetch path)', 'fetch'],
]) {
  const x = byPath[key];
  const cell = (ns) => `${ns.toFixed(1).padStart(7)} ns ${(ns / scan).toFixed(1).padStart(6)}x scan`;
  process.stdout.write(
    x.calls === 0 ? `      ${label.padEnd(70)} none\n` : `      ${label.padEnd(70)} ${cell(x.ns)}, again ${cell(x.againNs)}, ${x.calls} calls\n`,
  );
}
const byPages = Object.entries(mix.byPages)
  .sort((a, b) => Number(a[0]) - Number(b[0]))
  .map(([n, c]) => `${n}: ${pct(c)}`)
  .join(', ');
process.stdout.write(
  `  the ${mix.writes} emulated writes: ${(mix.pagesVisited / mix.writes).toFixed(2)} shadow pages of the written gfn each (${byPages}); ` +
    `${(mix.presentZapped / mix.writes).toFixed(3)} present sptes zapped each; ${pct(mix.fetchPath)} took the fetch path\n`,
);

if (opts.json !== null)
  writeFileSync(
    opts.json,
    JSON.stringify(
      {
        schema: 'vmexit-exit-breakdown/3',
        workload: WORKLOAD,
        variant: spec,
        repetitions: K,
        runs: RUNS,
        scanNs: scan,
        results,
        inSitu: { workload: IN_SITU, ...inSitu, faultByPath: byPath, mix },
      },
      null,
      2,
    ) + '\n',
  );
