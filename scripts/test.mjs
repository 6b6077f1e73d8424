#!/usr/bin/env node
// Runs every package's tests through nx, then sums the vitest JSON reports into one closing line:
// "tests: N passed, M failed". Exits non-zero when nx fails, a test fails, or no test ran at all, or when the
// shape check (scripts/check-shape.mjs: import cycles, oversized source files) finds a problem; that check
// runs first and its report is repeated at the end.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const dirs = ['packages', 'examples'].filter((d) => existsSync(join(root, d))).flatMap((d) => readdirSync(join(root, d)).map((p) => join(root, d, p)));
const reports = dirs.map((d) => join(d, '.test-report.json'));
for (const r of reports) rmSync(r, { force: true });

const shape = spawnSync(process.execPath, [join(root, 'scripts/check-shape.mjs')], { cwd: root, encoding: 'utf8' });
process.stdout.write(shape.stdout);
process.stderr.write(shape.stderr);

const env = { ...process.env, NX_DAEMON: 'false', NX_NO_CLOUD: 'true' };
// In CI every test runs for real: nx's cache lives in ~/.nx and would replay an earlier result.
const extra = process.env.CI ? ['--skip-nx-cache'] : [];
const nx = spawnSync('npx', ['nx', 'run-many', '-t', 'test', '--output-style=stream', ...extra, ...process.argv.slice(2)], {
  cwd: root,
  stdio: 'inherit',
  env,
});

let passed = 0;
let failed = 0;
let skipped = 0;
const missing = [];
for (const [i, r] of reports.entries()) {
  if (!existsSync(join(dirs[i], 'package.json'))) continue;
  const pkg = JSON.parse(readFileSync(join(dirs[i], 'package.json'), 'utf8'));
  if (!pkg.scripts?.test) continue;
  if (!existsSync(r)) {
    missing.push(pkg.name);
    continue;
  }
  const j = JSON.parse(readFileSync(r, 'utf8'));
  passed += j.numPassedTests;
  failed += j.numFailedTests;
  skipped += j.numPendingTests + (j.numTodoTests ?? 0);
}
if (missing.length > 0 && nx.status === 0) {
  // nx replayed a cached result: the report of that run is gone, so say so instead of counting zero.
  console.log(`(cached by nx, not re-run: ${missing.join(', ')}; CI=1 or --skip-nx-cache runs them)`);
}
console.log(`tests: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
if (shape.status !== 0) process.stderr.write(shape.stderr || `shape check failed (exit ${shape.status})\n`);
if (nx.status !== 0 || failed > 0 || shape.status !== 0) process.exit(1);
if (passed === 0 && missing.length === 0) {
  console.error('no test ran');
  process.exit(1);
}
