#!/usr/bin/env node
// Writes examples/policy-template from the initializer's template (packages/create-vmexit-policy/template),
// so that the example and what `npm init vmexit-policy` scaffolds are one source. With --check, writes nothing
// and exits 1 if the example differs (create-vmexit-policy's test checks the same).
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { renderPolicyPackage } from '../packages/create-vmexit-policy/lib/scaffold.js';

const root = new URL('..', import.meta.url).pathname;
const out = join(root, 'examples', 'policy-template');
/** What the example holds besides the generated files: build and install output. */
const LOCAL = new Set(['node_modules', 'dist', '.test-report.json', '.nx']);
const files = renderPolicyPackage({ name: 'vmexit-policy-template', private: true });

function listed(dir) {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => !LOCAL.has(f))
    .flatMap((f) => (statSync(join(dir, f)).isDirectory() ? listed(join(dir, f)) : [relative(out, join(dir, f)).split(sep).join('/')]));
}

const stale = listed(out).filter((f) => !files.has(f));
const differ = [...files].filter(([f, text]) => !existsSync(join(out, f)) || readFileSync(join(out, f), 'utf8') !== text).map(([f]) => f);
if (process.argv.includes('--check')) {
  if (stale.length + differ.length > 0) {
    console.error(`examples/policy-template is not what the initializer writes: differs ${differ.join(', ') || '-'}; extra ${stale.join(', ') || '-'}`);
    console.error('run: node scripts/gen-policy-template.mjs');
    process.exit(1);
  }
  process.exit(0);
}
for (const f of stale) rmSync(join(out, f));
for (const [f, text] of files) {
  mkdirSync(dirname(join(out, f)), { recursive: true });
  writeFileSync(join(out, f), text);
}
console.log(`examples/policy-template: ${files.size} files written, ${stale.length} removed`);
