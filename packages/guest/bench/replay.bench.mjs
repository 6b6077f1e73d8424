// Replays the bundled kbuild trace natively and reports represented guest accesses/s, next to decoding the
// same trace without simulating it (and a plain scan of its records), measured in the same run.
// Usage: npm run bench -w @vmexit/guest   (after a build)
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { KBUILD_TRACE_PATH, decodeVxt, runWorkload } from '../dist/index.js';
import { tuneV8 } from '@vmexit/core';
import { median, scanRecords } from '../../../scripts/kbuild-bench.mjs';

// The V8 flags the CLI runs with (core's tuneV8), set before anything is measured: the figures are the CLI's.
tuneV8();

const RUNS = Number(process.env.RUNS ?? 5);
const bytes = readFileSync(KBUILD_TRACE_PATH);

let trace;
const decode = [];
const scan = [];
const replay = [];
let represented = 0;
let result;
for (let i = 0; i < RUNS + 1; i++) {
  const t = performance.now();
  trace = decodeVxt(bytes, KBUILD_TRACE_PATH);
  const d = (performance.now() - t) / 1000;
  const sc = scanRecords(trace);
  represented = sc.represented;
  result = runWorkload({ workload: 'kbuild', seed: 7, loadTrace: () => trace }).result;
  if (i === 0) continue; // warm-up
  decode.push(d);
  scan.push(sc.seconds);
  replay.push(result.wallSeconds);
}
const rate = (s) => represented / s;
const out = {
  trace: KBUILD_TRACE_PATH,
  records: trace.accesses.length,
  representedAccesses: represented,
  runs: RUNS,
  decodeAccessesPerSecond: rate(median(decode)),
  scanAccessesPerSecond: rate(median(scan)),
  replayAccessesPerSecond: rate(median(replay)),
  replayToDecodeRatio: median(decode) / median(replay),
  replayToScanRatio: median(scan) / median(replay),
  memoryDigest: result.memoryDigest,
};
const M = (x) => `${(x / 1e6).toFixed(1)} M/s`;
console.log(`kbuild: ${out.records} records, ${out.representedAccesses} represented accesses (median of ${RUNS})`);
console.log(`  decode only      ${M(out.decodeAccessesPerSecond)}`);
console.log(`  scan of records  ${M(out.scanAccessesPerSecond)}`);
console.log(`  native replay    ${M(out.replayAccessesPerSecond)}  (${out.replayToDecodeRatio.toFixed(2)}x decode, ${out.replayToScanRatio.toFixed(3)}x scan)`);
console.log(JSON.stringify(out));
