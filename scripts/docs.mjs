#!/usr/bin/env node
// `npm run docs`: the API reference (TypeDoc, typedoc.json) in docs/api/, with TypeDoc's validation on
// (broken links, exported types that are not exported, exports without a doc comment). Every warning fails
// it except an undocumented export named in docs/undocumented.txt: the exports that had no doc comment when
// the check came in, to be documented and removed from the list; a new undocumented export fails.
// `--update` rewrites that list (only ever shorter: it drops the names that are documented now).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const listFile = join(root, 'docs', 'undocumented.txt');
const r = spawnSync('npx', ['typedoc', '--treatValidationWarningsAsErrors', 'false'], {
  cwd: root,
  encoding: 'utf8',
  env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' },
});
const out = `${r.stdout}\n${r.stderr}`.replace(/\x1b\[[0-9;]*m/g, '');
const warnings = out.split('\n').filter((l) => /^\[(warning|error)\]/.test(l) && !/^\[warning\] Found \d+ errors and \d+ warnings/.test(l));
const undocumented = new Set();
const other = [];
for (const w of warnings) {
  const m = /^\[warning\] (.+), defined in (\S+), does not have any documentation$/.exec(w);
  if (m === null) other.push(w);
  else undocumented.add(`${m[2]} ${m[1]}`);
}
const known = existsSync(listFile)
  ? new Set(
      readFileSync(listFile, 'utf8')
        .split('\n')
        .filter((l) => l.length > 0 && !l.startsWith('#')),
    )
  : new Set();
if (process.argv.includes('--update')) {
  const kept = [...known].filter((n) => undocumented.has(n));
  writeFileSync(
    listFile,
    `# Exports without a doc comment (scripts/docs.mjs): document one, then run node scripts/docs.mjs --update\n${kept.sort().join('\n')}\n`,
  );
  console.log(`docs/undocumented.txt: ${kept.length} names (${known.size - kept.length} documented since)`);
}
const fresh = [...undocumented].filter((n) => !known.has(n));
if (r.status !== 0 && other.length === 0 && warnings.length === 0) other.push(`typedoc failed (exit ${r.status}):\n${out}`);
if (other.length > 0 || fresh.length > 0) {
  console.error(`docs: ${other.length + fresh.length} problem(s)`);
  for (const o of other) console.error(`  ${o}`);
  for (const f of fresh) console.error(`  undocumented export: ${f} (add a doc comment)`);
  process.exit(1);
}
console.log(`docs: API reference in docs/api/ (${undocumented.size} exports still without a doc comment, listed in docs/undocumented.txt)`);
