// Every policy combination on every bundled workload and paging mode, with `vmexit run --check --audit`
// semantics: every subset of the seven built-in policies on VMX (128) and every subset without bypass-guest-pf
// on SVM (64; SVM refuses it, it has no error-code filtering of #PF), shadow paging, one vCPU, on each bundled
// synthetic workload at its default parameters and on the bundled kbuild trace (4- and 5-level paging only:
// the trace's addresses do not fit in a 32-bit guest), in every paging mode. Each run audits the shadow MMU
// after every exit (`mmu.audit()`, as --audit does) and at the end, and must show the guest what a native run
// of the same workload and seed shows it (--check, packages/cli/src/run-variant.ts compareGuestViews): the
// same #PFs in the same order (address, error code, vCPU, pid), the same SIGSEGVs, the same final memory.
//
// The test suite runs a part of this product on small workloads (test/combinations.ts); this runs all of it.
// It prints one line per failure and closes with 'N passed, M failed'; it exits 1 on any failure, 2 on bad
// arguments.
//
// Usage (from the repository root, after `npx tsc -b packages/policies`):
//   node packages/policies/scripts/every-combination.mjs [--jobs N] [--mode M ...] [--workload W ...] [--memory MiB] [--small]
//     --jobs N       worker threads (default: the machine's available parallelism)
//     --mode M       only these paging modes (repeatable; default legacy32, pae, long4, long5)
//     --workload W   only these workloads (repeatable; a spec as `vmexit run --workload` takes it)
//     --memory MiB   guest RAM (default 256, the variant default)
//     --small        the test suite's small workloads (test/combinations.ts) in 4 MiB, instead of the defaults
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { setImmediate } from 'node:timers';
import { URL } from 'node:url';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { createVm } from '@vmexit/core';
import vmxModule from '@vmexit/backend-vmx';
import svmModule from '@vmexit/backend-svm';
import { runWorkload, WorkloadError } from '@vmexit/guest';
import { shadowMmuModule } from '@vmexit/mmu-shadow';
import policiesModule from '@vmexit/policies';

const POLICIES = ['pte-update', 'bypass-guest-pf', 'unsync', 'write-flood', 'misaligned-write', 'prefetch', 'user-write-hint'];
const MODES = ['legacy32', 'pae', 'long4', 'long5'];
const DEFAULT_WORKLOADS = ['demand-fault', 'fork-cow', 'exec-storm', 'mprotect-storm', 'pt-recycle', 'scan', 'random-ws', 'zipf', 'kbuild'];
// Keep in step with HEAVY and LIGHT in test/combinations.ts.
const SMALL_WORKLOADS = [
  'exec-storm:execs=1,text=4,data=2',
  'pt-recycle:dirs=1',
  'fork-cow:pages=24,forks=2',
  'mprotect-storm:pages=24,rounds=4,writes=6',
  'demand-fault:pages=96',
  'scan:pages=64,passes=2',
  'random-ws:pages=64,accesses=400',
  'zipf:pages=64,accesses=400',
];
const SEED = 1;

/** Every subset of POLICIES on VMX, then every subset without bypass-guest-pf on SVM: 192 variants. */
function everyCombination() {
  const out = [];
  for (const backend of ['vmx', 'svm']) {
    for (let m = 0; m < 1 << POLICIES.length; m++) {
      const policies = POLICIES.filter((_, i) => (m & (1 << i)) !== 0);
      if (backend === 'svm' && policies.includes('bypass-guest-pf')) continue;
      out.push({ backend, policies });
    }
  }
  return out;
}

if (isMainThread) await main();
else worker();

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`every-combination: ${e.message}\n`);
    process.exit(2);
  }
  const combos = everyCombination();
  const started = performance.now();
  // Native runs first (one per mode and workload, in parallel), then the variants, longest groups first.
  const groups = [];
  for (const mode of args.modes) for (const workload of args.workloads) groups.push({ mode, workload });
  const pool = startPool(args.jobs, { memory: args.memory });
  const natives = await Promise.all(groups.map((g) => pool.run({ type: 'native', ...g })));
  const tasks = [];
  let skipped = 0;
  for (const [i, g] of groups.entries()) {
    const n = natives[i];
    if (n.skip !== undefined) {
      process.stdout.write(`skip ${g.workload} in ${g.mode}: ${n.skip}\n`);
      skipped += combos.length;
      continue;
    }
    for (const c of combos) tasks.push({ type: 'variant', ...g, ...c, native: n.native });
  }
  process.stderr.write(`${tasks.length} runs on ${args.jobs} worker${args.jobs === 1 ? '' : 's'}\n`);
  let passed = 0;
  let failed = 0;
  let done = 0;
  const perGroup = new Map();
  await Promise.all(
    tasks.map(async (t) => {
      const r = await pool.run(t);
      const key = `${t.mode} ${t.workload}`;
      perGroup.set(key, (perGroup.get(key) ?? 0) + r.ms);
      if (r.error === undefined) passed++;
      else {
        failed++;
        process.stdout.write(`FAIL ${t.mode} ${t.workload} ${t.backend} [${t.policies.join(',') || 'no policy'}]: ${r.error}\n`);
      }
      if (++done % 96 === 0) process.stderr.write(`${done}/${tasks.length} (${((performance.now() - started) / 1000).toFixed(0)} s)\n`);
    }),
  );
  await pool.close();
  for (const [k, ms] of perGroup) process.stderr.write(`  ${k}: ${(ms / 1000).toFixed(1)} s of worker time for ${combos.length} variants\n`);
  process.stderr.write(`wall time ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
  process.stdout.write(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ''}\n`);
  process.exitCode = failed > 0 ? 1 : 0;
}

function parseArgs(argv) {
  const out = { jobs: availableParallelism(), modes: [], workloads: [], memory: undefined, small: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--jobs') {
      out.jobs = Number(value());
      if (!Number.isInteger(out.jobs) || out.jobs < 1) throw new Error(`--jobs: expected a positive integer, got '${argv[i]}'`);
    } else if (a === '--mode') {
      const m = value();
      if (!MODES.includes(m)) throw new Error(`--mode: unknown paging mode '${m}' (expected ${MODES.join(', ')})`);
      out.modes.push(m);
    } else if (a === '--workload') out.workloads.push(value());
    else if (a === '--memory') {
      const m = Number(value());
      if (!Number.isInteger(m) || m < 1) throw new Error(`--memory: expected MiB as a positive integer, got '${argv[i]}'`);
      out.memory = m * 1024 * 1024;
    } else if (a === '--small') out.small = true;
    else throw new Error(`unknown argument '${a}' (expected --jobs, --mode, --workload, --memory, --small)`);
  }
  if (out.modes.length === 0) out.modes = MODES;
  if (out.workloads.length === 0) out.workloads = out.small ? SMALL_WORKLOADS : DEFAULT_WORKLOADS;
  out.memory ??= out.small ? 4 * 1024 * 1024 : 256 * 1024 * 1024;
  return out;
}

/** A pool of worker threads; `run(task)` resolves with the worker's answer. */
function startPool(n, data) {
  const queue = [];
  const idle = [];
  const workers = [];
  const dispatch = () => {
    while (idle.length > 0 && queue.length > 0) {
      const w = idle.pop();
      const job = queue.shift();
      w.job = job;
      w.postMessage(job.task);
    }
  };
  for (let i = 0; i < n; i++) {
    const w = new Worker(new URL(import.meta.url), { workerData: data });
    w.on('message', (answer) => {
      const job = w.job;
      w.job = null;
      idle.push(w);
      job.resolve(answer);
      dispatch();
    });
    w.on('error', (e) => {
      process.stderr.write(`every-combination: a worker died: ${e.stack ?? e}\n`);
      process.exit(1);
    });
    idle.push(w);
    workers.push(w);
  }
  return {
    run: (task) =>
      new Promise((resolve) => {
        queue.push({ task, resolve });
        dispatch();
      }),
    close: () => Promise.all(workers.map((w) => w.terminate())),
  };
}

function worker() {
  const SOURCES = { backends: { vmx: vmxModule, svm: svmModule }, mmus: { shadow: shadowMmuModule() }, policies: [policiesModule] };
  const { memory } = workerData;
  parentPort.on('message', async (t) => {
    // Yield to the event loop between runs: a VM is only released once the task that made it has ended.
    await new Promise((r) => setImmediate(r));
    const t0 = performance.now();
    if (t.type === 'native') {
      try {
        const n = runWorkload({ workload: t.workload, mode: t.mode, memory, seed: SEED });
        const e = n.events;
        const native = { length: e.length, vcpu: [], pid: [], address: [], errorCode: [], sigsegv: n.result.guest.sigsegv, digest: n.result.memoryDigest };
        for (let i = 0; i < e.length; i++) {
          const x = e.at(i);
          native.vcpu.push(x.vcpu);
          native.pid.push(x.pid);
          native.address.push(x.address);
          native.errorCode.push(x.errorCode);
        }
        parentPort.postMessage({ native, ms: performance.now() - t0 });
      } catch (e) {
        if (e instanceof WorkloadError) parentPort.postMessage({ skip: e.message, ms: 0 });
        else parentPort.postMessage({ skip: `the native run failed: ${e.stack ?? e}`, ms: 0 });
      }
      return;
    }
    let error;
    try {
      error = await runVariant(SOURCES, memory, t);
    } catch (e) {
      error = String(e?.stack ?? e)
        .split('\n')
        .slice(0, 4)
        .join(' | ');
    }
    parentPort.postMessage({ error, ms: performance.now() - t0 });
  });
}

/** One audited, checked run; returns undefined or what went wrong. */
async function runVariant(sources, memory, t) {
  const vm = await createVm(
    { backend: t.backend, mmu: 'shadow', memory, guest: { mode: t.mode, personality: 'linux' }, policies: t.policies.map((use) => ({ use })) },
    { sources, seed: SEED },
  );
  for (const h of vm.hooks) h.afterExit = () => vm.mmu.audit();
  const out = runWorkload({ workload: t.workload, mode: t.mode, memory, machine: vm.machine, vcpus: 1, seed: SEED });
  vm.mmu.audit();
  const n = t.native;
  const e = out.events;
  for (let i = 0; i < Math.min(e.length, n.length); i++) {
    const x = e.at(i);
    if (x.address !== n.address[i] || x.errorCode !== n.errorCode[i] || x.vcpu !== n.vcpu[i] || x.pid !== n.pid[i]) {
      return `guest fault #${i}: natively #PF at 0x${n.address[i].toString(16)} error code ${n.errorCode[i]}, under the variant at 0x${x.address.toString(16)} error code ${x.errorCode}`;
    }
  }
  if (e.length !== n.length) return `the guest received ${n.length} faults natively and ${e.length} under the variant`;
  if (out.result.guest.sigsegv !== n.sigsegv) return `SIGSEGVs: ${n.sigsegv} natively, ${out.result.guest.sigsegv} under the variant`;
  if (out.result.memoryDigest !== n.digest) return `final guest memory differs (digest ${n.digest} natively, ${out.result.memoryDigest} under the variant)`;
  return undefined;
}
