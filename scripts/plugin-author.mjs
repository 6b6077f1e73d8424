#!/usr/bin/env node
// What a plugin author does, outside this repository: `npm pack` every public package, scaffold a policy
// package with the initializer (`npm init vmexit-policy`, from its tarball), install the tarballs into it,
// run its tests, build it, and run `npx vmexit run --policy <its name>` and `npx vmexit compare` with it.
// Also checks that the tarballs' source maps resolve (every `sources` entry is in the tarball). Run it after
// `npm run build`; it uses npm's cache (--prefer-offline). Exits 1 on the first failure, with its output.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), 'vmexit-plugin-author-'));
const tarballs = join(work, 'tarballs');
mkdirSync(tarballs);
const NAME = '@acme/vmexit-policy-demo';
const started = Date.now();

function sh(cmd, args, cwd, what) {
  const t = Date.now();
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, npm_config_update_notifier: 'false' } });
  if (r.status !== 0) {
    console.error(`plugin-author: ${what} failed (exit ${r.status}): ${cmd} ${args.join(' ')} in ${cwd}\n${r.stdout}\n${r.stderr}`);
    console.error(`(left ${work} for a look)`);
    process.exit(1);
  }
  console.log(`plugin-author: ${what} (${((Date.now() - t) / 1000).toFixed(1)} s)`);
  return r.stdout;
}

// 1. Pack every public package.
const pkgDirs = readdirSync(join(root, 'packages'))
  .map((d) => join('packages', d))
  .filter((d) => JSON.parse(readFileSync(join(root, d, 'package.json'), 'utf8')).private !== true);
const packed = JSON.parse(
  sh('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', tarballs, ...pkgDirs.flatMap((d) => ['-w', d])], root, 'npm pack'),
);
const files = new Map(packed.map((p) => [p.name, new Set(p.files.map((f) => f.path))]));
const problems = [];
for (const p of packed) {
  const have = files.get(p.name);
  for (const f of ['LICENSE', 'README.md', 'package.json']) if (!have.has(f)) problems.push(`${p.name}: ${f} is not in the tarball`);
  for (const f of have) {
    if (!f.endsWith('.map')) continue;
    const dir = join(root, 'packages', p.name.replace(/^@vmexit\//, ''));
    const map = JSON.parse(readFileSync(join(dir, f), 'utf8'));
    for (const s of map.sources) {
      const target = relative(dir, resolve(dir, dirname(f), map.sourceRoot ?? '', s))
        .split('\\')
        .join('/');
      if (!have.has(target)) problems.push(`${p.name}: ${f} maps to ${target}, which is not in the tarball`);
    }
  }
}
if (problems.length > 0) {
  console.error(
    `plugin-author: the tarballs are not complete:\n- ${problems.slice(0, 20).join('\n- ')}${problems.length > 20 ? `\n(${problems.length - 20} more)` : ''}`,
  );
  process.exit(1);
}
const tgz = readdirSync(tarballs).map((f) => join(tarballs, f));
const initializer = tgz.find((f) => /create-vmexit-policy-/.test(f));

// 2. Scaffold, as `npm init vmexit-policy NAME` does, with the initializer from its tarball (not the registry).
sh('npm', ['exec', '--yes', `--package=${initializer}`, '--', 'create-vmexit-policy', NAME], work, `npm init vmexit-policy ${NAME}`);
const pol = join(work, 'vmexit-policy-demo');
const scaffolded = JSON.parse(readFileSync(join(pol, 'package.json'), 'utf8'));
if (scaffolded.name !== NAME || scaffolded.peerDependencies?.['@vmexit/core'] === undefined) {
  console.error(`plugin-author: the scaffolded package.json is not right: ${JSON.stringify(scaffolded)}`);
  process.exit(1);
}

// 3. Install: its dependencies from npm's cache, the @vmexit packages from the tarballs (not on the registry).
sh('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--no-save', ...tgz.filter((f) => f !== initializer)], pol, 'npm install (tarballs)');

// 4. What its README says to do.
sh('npm', ['test', '--silent'], pol, 'npm test');
sh('npm', ['run', 'build', '--silent'], pol, 'npm run build');
const run = JSON.parse(sh('npx', ['vmexit', 'run', '--policy', NAME, '--workload', 'demand-fault:pages=16', '--json'], pol, `npx vmexit run --policy ${NAME}`));
// demand-fault:pages=16: 16 first touches, each a not-present #PF in the guest's own tables, which the
// policy (default range: all of user space) injects itself. See the scaffolded test for the walk-through.
const injected = run.counters.total['reflect_range.injected'];
if (injected !== 16) {
  console.error(`plugin-author: vmexit run counted reflect_range.injected = ${injected}, expected 16`);
  process.exit(1);
}
// By name and by path (the README's `--variant "vmx shadow ./dist/index.js"`), with its counter shown: 0 on the
// built-in variant, 16 with the policy.
for (const use of [NAME, './dist/index.js']) {
  const cmp = sh(
    'npx',
    ['vmexit', 'compare', '--workload', 'demand-fault:pages=16', '--variant', 'vmx shadow', '--variant', `vmx shadow ${use}`, '--counter', 'reflect_range.*'],
    pol,
    `npx vmexit compare ... --variant "vmx shadow ${use}"`,
  );
  if (!/^\s*reflect_range\.injected\s+0\s+16\s*$/m.test(cmp)) {
    console.error(`plugin-author: vmexit compare does not show the policy's 16 injections:\n${cmp}`);
    process.exit(1);
  }
}
rmSync(work, { recursive: true, force: true });
console.log(`plugin-author: ok, ${tgz.length} tarballs, ${NAME} scaffolded, tested, run and compared (${((Date.now() - started) / 1000).toFixed(1)} s)`);
