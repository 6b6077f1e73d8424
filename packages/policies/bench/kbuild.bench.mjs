// Runs the bundled kbuild trace natively and under shadow paging on VMX, in one process, and reports
// represented guest accesses/s for each, the ratio of each variant to the native run, and a plain scan of
// the decoded trace's records (the scan baseline), all measured in the same run (the target: the
// write-flood variant at >= 0.6 of native).
//
// Variants: native (backend none); VMX shadow with no policy (the 2007 baseline: every store to a recycled
// page-table page exits and is emulated); + write-flood (today's KVM always has flood detection); + the
// headline policy sets. The benchmark itself is scripts/kbuild-bench.mjs, shared with packages/mmu-tdp/bench.
//
// Usage: npm run bench -w @vmexit/policies   (after `npx tsc -b`)
//   RUNS=n        measured runs per variant (median reported; default 3), after one warm-up run each
//   VARIANTS=a,b  only these variants (names below)
//   JSON=1        also print one JSON document with every figure
import process from 'node:process';
import { tuneV8 } from '@vmexit/core';
import { runKbuildBench, runsFromEnv } from '../../../scripts/kbuild-bench.mjs';

// The V8 flags the CLI runs with (core's tuneV8), set before anything is measured: the figures are the CLI's.
tuneV8();

/** The target for shadow paging on VMX: represented accesses/s at least this share of the native run's. */
const TARGET = 0.6;

/** name -> the variant's policies (null = native). */
const ALL = [
  ['native', null],
  ['vmx', []],
  ['vmx+write-flood', ['write-flood']],
  ['vmx+pte-update', ['pte-update']],
  ['vmx+unsync', ['unsync']],
  ['vmx+headline', ['bypass-guest-pf', 'pte-update', 'write-flood', 'unsync']],
];
const wanted = process.env.VARIANTS?.split(',').map((s) => s.trim());
if (wanted !== undefined) {
  const unknown = wanted.filter((w) => !ALL.some(([n]) => n === w));
  if (unknown.length > 0) throw new Error(`VARIANTS: unknown variant(s) ${unknown.join(', ')} (expected ${ALL.map(([n]) => n).join(', ')})`);
}
const VARIANTS = ALL.filter(([n]) => n === 'native' || wanted === undefined || wanted.includes(n)).map(([name, policies]) => [
  name,
  policies === null ? null : { backend: 'vmx', mmu: 'shadow', policies: policies.map((use) => ({ use, options: {} })) },
]);

await runKbuildBench({ variants: VARIANTS, runs: runsFromEnv(), target: TARGET, extra: { field: 'emulated', counter: 'insn_emulation', column: null } });
