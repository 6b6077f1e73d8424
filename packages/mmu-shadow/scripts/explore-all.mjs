// Every race scenario of the shadow MMU (src/race.ts) explored with core's explorer up to K preemptions, on
// the MMU as it is, with the fast page fault off (the policy not composed), and on the deliberately broken MMUs (a fast path without the compare-and-swap, a
// KVM_GET_DIRTY_LOG that re-protects without flushing, a KVM_RESET_DIRTY_RINGS that does not re-protect, one that
// re-protects without flushing). The test suite runs the small scenarios at K = 2
// (test/race.test.ts); this runs them all, at the bound given, and prints one line per (scenario, MMU):
// interleavings, violations, steps, lock acquisitions and contentions, fast fixes, cmpxchg failures, time.
// It exits 1 when the MMU as it is violates an invariant or a broken MMU is not caught by some scenario,
// 2 on bad arguments.
//
// Usage (from the repository root, after `npx tsc -b packages/mmu-shadow`):
//   node packages/mmu-shadow/scripts/explore-all.mjs [--preemptions K] [--json]
import { explore } from '@vmexit/core';
import { RACE_SCENARIOS, shadowRaceScenario } from '@vmexit/mmu-shadow';

const args = process.argv.slice(2);
let bound = 2;
let json = false;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--preemptions') {
    bound = Number(args[++i]);
    if (!Number.isInteger(bound) || bound < 0) {
      console.error(`explore-all: --preemptions needs a non-negative integer, not '${args[i]}'`);
      process.exit(2);
    }
  } else if (args[i] === '--json') json = true;
  else {
    console.error(`explore-all: unknown argument '${args[i]}' (usage: explore-all.mjs [--preemptions K] [--json])`);
    process.exit(2);
  }
}

const MMUS = [
  ['as-is', {}],
  ['no-fast-path', { fastPageFault: false }],
  ['no-cmpxchg', { plainStore: true }],
  ['no-flush', { harvestWithoutFlush: true }],
  ['ring-no-wp', { resetWithoutProtect: true }],
  ['ring-no-flush', { resetWithoutFlush: true }],
  ['no-gpte-check', { noGpteChangedCheck: true }],
];
const rows = [];
let bad = false;
for (const [mmu, mutation] of MMUS) {
  let caught = false;
  for (const name of RACE_SCENARIOS) {
    const t0 = process.hrtime.bigint();
    const r = explore(shadowRaceScenario(name, mutation), { preemptions: bound });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    rows.push({
      scenario: name,
      mmu,
      interleavings: r.interleavings,
      violations: r.violations,
      steps: r.steps,
      stats: r.stats,
      ms: Math.round(ms),
      example: r.examples[0] ?? null,
    });
    if ((mmu === 'as-is' || mmu === 'no-fast-path') && r.violations > 0) bad = true;
    if (r.violations > 0) caught = true;
  }
  if (mmu.startsWith('no-') && mmu !== 'no-fast-path' && !caught) bad = true;
}
if (json) console.log(JSON.stringify({ schema: 'vmexit.explore-all/1', preemptions: bound, rows }, null, 2));
else {
  console.log(`preemption bound ${bound}`);
  console.log('scenario                      mmu         interleavings violations     steps  lock acq/cont  pf_fast cmpxchg-fail  ms');
  for (const r of rows) {
    const s = r.stats;
    console.log(
      `${r.scenario.padEnd(29)} ${r.mmu.padEnd(11)} ${String(r.interleavings).padStart(13)} ${String(r.violations).padStart(10)} ${String(r.steps).padStart(9)}` +
        `  ${`${s['mmu_lock.acquired'] ?? 0}/${s['mmu_lock.contended'] ?? 0}`.padStart(13)} ${String(s['pf_fast'] ?? 0).padStart(8)} ${String(s['pf_fast_cmpxchg_fail'] ?? 0).padStart(12)} ${String(r.ms).padStart(7)}`,
    );
    if (r.example !== null) console.log(`    e.g. ${r.example.problems[0]}  (schedule ${r.example.schedule.join('')})`);
  }
}
process.exit(bad ? 1 : 0);
