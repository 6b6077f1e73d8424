// Runs the bundled kbuild trace natively and under two-dimensional paging (the TDP MMU on VMX EPT and on SVM
// NPT), in one process, and reports represented guest accesses/s for each, the ratio to the native run, and
// a plain scan of the decoded trace's records, all measured in the same run (the target: TDP at >= 0.8 of
// native: the TLB-hit path is the same, only misses cost more, a two-dimensional walk).
//
// The benchmark itself is scripts/kbuild-bench.mjs, shared with packages/policies/bench.
//
// Usage: npm run bench -w @vmexit/mmu-tdp   (after `npx tsc -b`)
//   RUNS=n        measured runs per variant (median reported; default 3), after one warm-up run each
//   JSON=1        also print one JSON document with every figure
import { tuneV8 } from '@vmexit/core';
import { runKbuildBench, runsFromEnv } from '../../../scripts/kbuild-bench.mjs';

// The V8 flags the CLI runs with (core's tuneV8), set before anything is measured: the figures are the CLI's.
tuneV8();

/** The target for TDP: represented accesses/s at least this share of the native run's. */
const TARGET = 0.8;

/** name -> the variant (null = native). */
const VARIANTS = [
  ['native', null],
  ['vmx tdp', { backend: 'vmx', mmu: 'tdp' }],
  ['svm tdp', { backend: 'svm', mmu: 'tdp' }],
];

await runKbuildBench({ variants: VARIANTS, runs: runsFromEnv(), target: TARGET, extra: { field: 'walkRefs', counter: 'walk_refs', column: 'walk_refs' } });
