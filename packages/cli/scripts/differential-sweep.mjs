#!/usr/bin/env node
// The differential sweep: generated paging vectors, built as kvm-unit-tests' access.c builds its
// matrix and crossed with MAXPHYADDR 36/46/52 and the four paging modes, each run natively (the reference)
// and as a guest access under every sweep variant (src/differential.ts SWEEP_VARIANTS). Every difference in
// fault, error code, physical address or A/D bits, and every fault loop, is printed with the case's index
// and id; the exit status is 1 when any case fails.
//
//   node packages/cli/scripts/differential-sweep.mjs [--vectors N] [--seed S] [--from I]
//
// Defaults: 40,000 vectors x 5 variants = 200,000 cases, seed 14. `npm test` runs a fixed sample of the
// same sweep (test/differential.test.ts). Build first (npm run build): the script runs the built dist.
import { parseArgs } from 'node:util';
import vmx from '@vmexit/backend-vmx';
import svm from '@vmexit/backend-svm';
import shadow from '@vmexit/mmu-shadow';
import policies from '@vmexit/policies';
import { runDifferentialSweep, SWEEP_VARIANTS } from '../dist/differential.js';

const { values } = parseArgs({
  options: { vectors: { type: 'string', default: '40000' }, seed: { type: 'string', default: '14' }, from: { type: 'string', default: '0' } },
});
const count = Number(values.vectors);
const seed = Number(values.seed);
const from = Number(values.from);
for (const [name, v] of [
  ['--vectors', count],
  ['--seed', seed],
  ['--from', from],
]) {
  if (!Number.isSafeInteger(v) || v < 0) {
    process.stderr.write(`${name}: expected a non-negative integer\n`);
    process.exit(2);
  }
}
const sources = { backends: { vmx, svm }, mmus: { shadow }, policies: [policies] };
const t0 = performance.now();
let lastReport = t0;
const result = await runDifferentialSweep({
  seed,
  from,
  count,
  sources,
  progress(done, cases, failures) {
    const now = performance.now();
    if (now - lastReport < 30_000 && done !== count) return;
    lastReport = now;
    process.stderr.write(`${done}/${count} vectors, ${cases} cases, ${failures} failed, ${((now - t0) / 1000).toFixed(0)} s\n`);
  },
});
const seconds = (performance.now() - t0) / 1000;
for (const f of result.failures) process.stdout.write(`FAIL #${f.index} [${f.variant}] ${f.detail}\n`);
process.stdout.write(
  `differential sweep: seed ${seed}, vectors ${from}..${from + count - 1}, variants ${SWEEP_VARIANTS.map((v) => v.name).join(' | ')}\n` +
    `${result.cases} cases, ${result.failures.length} failed, ${seconds.toFixed(1)} s (${((seconds * 1000) / Math.max(1, result.cases)).toFixed(2)} ms per case)\n`,
);
process.exitCode = result.failures.length > 0 ? 1 : 0;
