#!/usr/bin/env node
/* global process */
// `npm init vmexit-policy NAME` (= `npx create-vmexit-policy NAME`): a standalone vmexit policy package in ./NAME
// (for a scoped name @scope/NAME, in ./NAME). Exit 2 on bad usage, with nothing written.
import { resolve } from 'node:path';
import { invalidPackageName, scaffold, vmexitRange } from '../lib/scaffold.js';

const USAGE = 'usage: npm init vmexit-policy <package-name> [-- --dir <directory>]';
const args = process.argv.slice(2);
if (args.includes('--help') || args.includes('-h')) {
  process.stdout.write(`${USAGE}\nScaffolds a vmexit fault-policy package (tsconfig, vitest, a test on a real VM, README).\n`);
  process.exit(0);
}
let dirArg;
const names = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--dir') dirArg = args[++i];
  else if (args[i].startsWith('-')) fail(`unknown option '${args[i]}'`);
  else names.push(args[i]);
}
if (names.length !== 1) fail(names.length === 0 ? 'the package name is missing' : `one package name expected, got ${names.join(' ')}`);
const name = names[0];
const bad = invalidPackageName(name);
if (bad !== null) fail(`invalid package name '${name}': ${bad}`);
if (dirArg === undefined && args.includes('--dir')) fail('--dir needs a directory');
const dir = resolve(dirArg ?? name.replace(/^@[^/]+\//, ''));
try {
  const files = scaffold(dir, { name });
  process.stdout.write(
    `created ${name} in ${dir} (${files.length} files; @vmexit/* ${vmexitRange()})\n\nnext:\n  cd ${dir}\n  npm install\n  npm test\n  npm run build && npx vmexit run --policy ${name} --workload demand-fault:pages=64\n`,
  );
} catch (e) {
  fail(e instanceof Error ? e.message : String(e));
}

function fail(message) {
  process.stderr.write(`create-vmexit-policy: ${message}\n${USAGE}\n`);
  process.exit(2);
}
