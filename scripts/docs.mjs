#!/usr/bin/env node
// `npm run docs`: the API reference (TypeDoc, typedoc.json) in docs/api/, with TypeDoc's validation on:
// broken links, exported types that are not exported, and exports without a doc comment (notDocumented).
// Any warning fails it (exit 1), with the list; .ci/run runs it.
import { spawnSync } from 'node:child_process';

const root = new URL('..', import.meta.url).pathname;
const r = spawnSync('npx', ['typedoc', '--treatValidationWarningsAsErrors', 'false'], {
  cwd: root,
  encoding: 'utf8',
  env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' },
});
const out = `${r.stdout}\n${r.stderr}`.replace(/\x1b\[[0-9;]*m/g, '');
const problems = out
  .split('\n')
  .filter((l) => /^\[(warning|error)\]/.test(l) && !/^\[warning\] Found \d+ errors and \d+ warnings/.test(l))
  .map((l) => {
    const m = /^\[warning\] (.+), defined in (\S+), does not have any documentation$/.exec(l);
    return m === null ? l : `undocumented export: ${m[1]} in ${m[2]} (add a doc comment)`;
  });
if (r.status !== 0 && problems.length === 0) problems.push(`typedoc failed (exit ${r.status}):\n${out}`);
if (problems.length > 0) {
  console.error(`docs: ${problems.length} problem(s)`);
  for (const p of problems) console.error(`  ${p}`);
  process.exit(1);
}
console.log('docs: API reference in docs/api/ (every export documented)');
