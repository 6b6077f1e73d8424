#!/usr/bin/env node
// The differential sweep: every case of the flag space of kvm-unit-tests' access.c (core's
// accessCaseSpace: access.c's legal combinations, each named once with the bits the architecture ignores
// for it cleared), crossed with MAXPHYADDR 36/46/52 and the four paging modes, each run natively (the
// reference) and as a guest access under every sweep variant (src/differential.ts SWEEP_VARIANTS: VMX and
// SVM with shadow paging and with TDP, bypass-guest-pf on VMX shadow, pte-update and unsync on shadow).
// Every difference in fault, error code, physical address or A/D bits, and every fault loop, is printed
// with the case's index and id; the exit status is 1 when any case fails.
//
//   node packages/cli/scripts/differential-sweep.mjs [--shard K/N] [--from I] [--count C] [--skip S] [--take T]
//
// Default: the whole space. --shard K/N runs every N-th case from case K-1 (N machines, one shard each,
// together run the whole space); --from/--count a contiguous range. --skip S --take T then run T of the
// selected cases after the first S (to split one selection over processes, or resume it). `npm test` runs a fixed sample
// (test/differential.int.test.ts). Build first (npm run build): the script runs the built dist.
import { parseArgs } from 'node:util';
import vmx from '@vmexit/backend-vmx';
import svm from '@vmexit/backend-svm';
import shadow from '@vmexit/mmu-shadow';
import tdp from '@vmexit/mmu-tdp';
import policies from '@vmexit/policies';
import { runDifferentialSweep, SweepSpace, SWEEP_VARIANTS } from '../dist/differential.js';

const fail = (msg) => {
  process.stderr.write(`differential-sweep: ${msg}\n`);
  process.exit(2);
};
let values;
try {
  ({ values } = parseArgs({
    options: {
      shard: { type: 'string', default: '1/1' },
      from: { type: 'string' },
      count: { type: 'string' },
      skip: { type: 'string', default: '0' },
      take: { type: 'string' },
    },
  }));
} catch (e) {
  fail(e.message);
}
const t0 = performance.now();
const space = new SweepSpace();
let indices;
let what;
const m = /^(\d+)\/(\d+)$/.exec(values.shard);
if (m === null || Number(m[1]) < 1 || Number(m[1]) > Number(m[2])) fail(`--shard ${values.shard}: expected K/N with 1 <= K <= N`);
const [k, n] = [Number(m[1]), Number(m[2])];
if (values.from !== undefined || values.count !== undefined) {
  const from = Number(values.from ?? 0);
  const count = Number(values.count ?? space.size - from);
  for (const [name, v] of [
    ['--from', from],
    ['--count', count],
  ]) {
    if (!Number.isSafeInteger(v) || v < 0) fail(`${name}: expected a non-negative integer`);
  }
  if (n !== 1) fail('--shard and --from/--count cannot be combined');
  const end = Math.min(space.size, from + count);
  indices = Array.from({ length: Math.max(0, end - from) }, (_, i) => from + i);
  what = `cases ${from}..${end - 1}`;
} else {
  indices = [...space.shard(k, n)];
  what = n === 1 ? 'the whole space' : `shard ${k}/${n} (every ${n}th case from case ${k - 1})`;
}
const skip = Number(values.skip);
const take = values.take === undefined ? Infinity : Number(values.take);
if (!Number.isSafeInteger(skip) || skip < 0) fail('--skip: expected a non-negative integer');
if (take !== Infinity && (!Number.isSafeInteger(take) || take < 0)) fail('--take: expected a non-negative integer');
if (skip > 0 || take !== Infinity) {
  const all = indices.length;
  indices = indices.slice(skip, take === Infinity ? undefined : skip + take);
  what += `, its cases ${skip}..${skip + indices.length - 1} of ${all}`;
}
const total = indices.length;
process.stderr.write(
  `space: ${space.size} cases (${space.strata.map((s) => `${s.mode}/m${s.maxPhyAddr} ${s.flags.length}`).join(', ')}); running ${what}: ${total} vectors x ${SWEEP_VARIANTS.length} variants\n`,
);
const sources = { backends: { vmx, svm }, mmus: { shadow, tdp }, policies: [policies] };
let lastReport = t0;
const result = await runDifferentialSweep({
  space,
  indices,
  sources,
  progress(done, cases, failures) {
    const now = performance.now();
    if (now - lastReport < 60_000 && done !== total) return;
    lastReport = now;
    process.stderr.write(`${done}/${total} vectors, ${cases} cases, ${failures} failed, ${((now - t0) / 1000).toFixed(0)} s\n`);
  },
});
const seconds = (performance.now() - t0) / 1000;
for (const f of result.failures) process.stdout.write(`FAIL #${f.index} [${f.variant}] ${f.detail}\n`);
const cpu = process.cpuUsage();
process.stdout.write(
  `differential sweep: ${what} of ${space.size} cases; variants ${SWEEP_VARIANTS.map((v) => v.name).join(' | ')}\n` +
    `${result.vectors} vectors, ${result.cases} cases, ${result.failures.length} failed, ${seconds.toFixed(1)} s wall, ${((cpu.user + cpu.system) / 1e6).toFixed(1)} s CPU (${((seconds * 1000) / Math.max(1, result.cases)).toFixed(2)} ms wall per case)\n`,
);
process.exitCode = result.failures.length > 0 ? 1 : 0;
