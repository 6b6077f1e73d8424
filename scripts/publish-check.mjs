#!/usr/bin/env node
// Checks that every public package would publish cleanly: `npm publish --dry-run` for each (no warning but
// the one about not being logged in), and the metadata a published package needs: LICENSE, README,
// repository/homepage/bugs, the one engines range of the root, the version of the release group, and
// @vmexit ranges (dependencies and peer dependencies) that admit exactly that version's minor.
// Run it after `npm run build`. Exits 1 with every problem listed.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const rootPkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const dirs = readdirSync(join(root, 'packages')).map((d) => join('packages', d));
const pkgs = dirs.map((d) => ({ dir: d, pkg: JSON.parse(readFileSync(join(root, d, 'package.json'), 'utf8')) })).filter((p) => p.pkg.private !== true);
const problems = [];
const version = pkgs.find((p) => p.pkg.name === '@vmexit/core').pkg.version;
const range = `^${version}`;

for (const { dir, pkg } of pkgs) {
  const say = (m) => problems.push(`${pkg.name}: ${m}`);
  for (const f of ['LICENSE', 'README.md']) if (!existsSync(join(root, dir, f))) say(`no ${f}`);
  if (pkg.license !== 'MIT') say(`license is ${pkg.license}, not MIT`);
  if (pkg.repository?.url === undefined || pkg.repository?.directory !== dir) say(`repository.directory is not ${dir}`);
  if (typeof pkg.homepage !== 'string' || pkg.bugs?.url === undefined) say('no homepage or bugs.url');
  if (pkg.engines?.node !== rootPkg.engines.node) say(`engines.node '${pkg.engines?.node}' is not the root's '${rootPkg.engines.node}'`);
  if (pkg.version !== version) say(`version ${pkg.version} is not the release group's ${version} (.changeset/config.json "fixed")`);
  for (const field of ['dependencies', 'peerDependencies', 'devDependencies']) {
    for (const [name, r] of Object.entries(pkg[field] ?? {})) if (name.startsWith('@vmexit/') && r !== range) say(`${field}.${name} is '${r}', not '${range}'`);
  }
  if (pkg.dependencies?.['@vmexit/core'] !== undefined && pkg.name !== '@vmexit/cli')
    say('@vmexit/core is a dependency: a plugin package takes it as a peer dependency');
}

// One npm process for all of them (quicker than one each); each package's output starts at its "+ name@version".
const r = spawnSync('npm', ['publish', '--dry-run', '--ignore-scripts', ...pkgs.flatMap((p) => ['-w', p.dir])], { cwd: root, encoding: 'utf8' });
const out = `${r.stdout}\n${r.stderr}`;
if (r.status !== 0) problems.push(`npm publish --dry-run failed (exit ${r.status}):\n${out}`);
const warnings = out.split('\n').filter((l) => /^npm (warn|error)/.test(l) && !/requires you to be logged in/.test(l));
if (warnings.length > 0) problems.push(`npm publish --dry-run warned:\n  ${warnings.join('\n  ')}`);
for (const { pkg } of pkgs) if (!r.stdout.includes(`+ ${pkg.name}@${pkg.version}`)) problems.push(`${pkg.name}: npm publish --dry-run did not report it`);

if (problems.length > 0) {
  console.error(`publish check: ${problems.length} problem(s)\n- ${problems.join('\n- ')}`);
  process.exit(1);
}
console.log(`publish check: ${pkgs.length} packages would publish (${pkgs.map((p) => p.pkg.name).join(', ')}) at ${version}`);
