// Runs the bundled kbuild trace natively and under two-dimensional paging (the TDP MMU on VMX EPT and on SVM
// NPT), in one process, and reports represented guest accesses/s for each, the ratio to the native run, and
// a plain scan of the decoded trace's records, all measured in the same run (issue 12's target: TDP at
// >= 0.8 of native: the TLB-hit path is the same, only misses cost more, a two-dimensional walk).
//
// Each variant is composed by `createVm` with the built-in module sources, as `vmexit run` does, and run by
// `runWorkload` on the VM's machine.
//
// Usage: npm run bench -w @vmexit/mmu-tdp   (after `npx tsc -b`)
//   RUNS=n        measured runs per variant (median reported; default 3), after one warm-up run each
//   JSON=1        also print one JSON document with every figure
import { performance } from 'node:perf_hooks';
import { readFileSync } from 'node:fs';
import { createVm } from '@vmexit/core';
import { KBUILD_TRACE_PATH, decodeVxt, runWorkload } from '@vmexit/guest';

const RUNS = Number(process.env.RUNS ?? 3);
/** Issue 12's target for TDP: represented accesses/s at least this share of the native run's. */
const TARGET = 0.8;
const SEED = 1;
const MODE = 'long4';

/** name -> the variant's backend (null = native). */
const VARIANTS = [
  ['native', null],
  ['vmx tdp', 'vmx'],
  ['svm tdp', 'svm'],
];
if (!Number.isInteger(RUNS) || RUNS < 1) throw new Error(`RUNS: expected a positive integer, got '${process.env.RUNS}'`);

const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
const spread = (a) => (a.length < 2 ? 0 : (Math.max(...a) - Math.min(...a)) / median(a));

const bytes = readFileSync(KBUILD_TRACE_PATH);
const trace = decodeVxt(bytes, KBUILD_TRACE_PATH);

/** The scan baseline: one pass over the decoded records (count and page of each). */
function scan() {
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

async function runOnce(backend) {
  const vm = backend === null ? null : await createVm({ backend, mmu: 'tdp', guest: { mode: MODE, personality: 'linux' } }, { seed: SEED });
  const { result } = runWorkload({
    workload: 'kbuild',
    mode: MODE,
    seed: SEED,
    loadTrace: () => trace,
    machine: vm === null ? undefined : vm.machine,
    counters:
      vm === null
        ? undefined
        : () => {
            const c = vm.counters();
            return { total: c.total, vcpus: c.perVcpu.map((x) => ({ ...x })) };
          },
  });
  return result;
}

// Round-robin: every round runs each variant once, so that the load of a shared machine falls on all of
// them alike; round 0 is the warm-up.
const walls = new Map(VARIANTS.map(([name]) => [name, []]));
const last = new Map();
const scans = [];
let represented = 0;
for (let i = 0; i < RUNS + 1; i++) {
  for (const [name, backend] of VARIANTS) {
    const sc = scan();
    represented = sc.represented;
    const r = await runOnce(backend);
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
const rows = VARIANTS.map(([name]) => {
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
    walkRefs: r.counters.total.walk_refs ?? 0,
    memoryDigest: r.memoryDigest,
  };
});

const native = rows.find((r) => r.name === 'native');
for (const r of rows) {
  if (r.memoryDigest !== native.memoryDigest)
    throw new Error(`${r.name}: memory digest ${r.memoryDigest} differs from the native run's ${native.memoryDigest}`);
  if (r.accesses !== native.accesses) throw new Error(`${r.name}: ${r.accesses} represented accesses, natively ${native.accesses}`);
}
const scanSeconds = median(scans);
const scanRate = represented / scanSeconds;

const M = (x) => `${(x / 1e6).toFixed(1).padStart(6)} M/s`;
console.log(
  `kbuild (${MODE}, seed ${SEED}): ${trace.accesses.length} records, ${represented} represented accesses; median of ${RUNS} round-robin runs after a warm-up round; spread = (max - min) / median`,
);
console.log(`  ${'scan of records'.padEnd(17)} ${M(scanRate)}`);
for (const r of rows) {
  const ratio = r.accessesPerSecond / native.accessesPerSecond;
  const perExit = r.exits > 0 ? `${(((r.wallSeconds - native.wallSeconds) / r.exits) * 1e6).toFixed(2)} us/exit over native` : '';
  console.log(
    `  ${r.name.padEnd(17)} ${M(r.accessesPerSecond)}  ${r.wallSeconds.toFixed(3)} s (spread ${(r.spread * 100).toFixed(0)}%)  ` +
      `${ratio.toFixed(3)}x native  ${(r.accessesPerSecond / scanRate).toFixed(4)}x scan  exits ${r.exits}  walk_refs ${r.walkRefs}  ${perExit}` +
      (r.name === 'native' ? '' : `  target >= ${TARGET}x native: ${ratio >= TARGET ? 'met' : 'MISSED'}`),
  );
}
if (process.env.JSON === '1') {
  console.log(
    JSON.stringify({
      trace: KBUILD_TRACE_PATH,
      mode: MODE,
      seed: SEED,
      runs: RUNS,
      representedAccesses: represented,
      scanAccessesPerSecond: scanRate,
      variants: rows.map((r) => ({ ...r, ratioToNative: r.accessesPerSecond / native.accessesPerSecond, ratioToScan: r.accessesPerSecond / scanRate })),
    }),
  );
}
