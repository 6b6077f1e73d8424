import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { invalidPackageName, renderPolicyPackage, scaffold, vmexitRange } from '../lib/scaffold.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..', '..');
const bin = join(here, '..', 'bin', 'create-vmexit-policy.js');
const own = JSON.parse(readFileSync(join(here, '..', 'package.json'), 'utf8')) as { version: string };

function filesUnder(dir: string, skip: ReadonlySet<string>): string[] {
  return readdirSync(dir)
    .filter((f) => !skip.has(f))
    .flatMap((f) => (statSync(join(dir, f)).isDirectory() ? filesUnder(join(dir, f), skip) : [join(dir, f)]));
}

describe('renderPolicyPackage', () => {
  it('is what examples/policy-template holds, file for file (the example is generated: node scripts/gen-policy-template.mjs)', () => {
    const files = renderPolicyPackage({ name: 'vmexit-policy-template', private: true });
    const example = join(root, 'examples', 'policy-template');
    const present = filesUnder(example, new Set(['node_modules', 'dist', '.test-report.json', '.nx'])).map((f) => relative(example, f).split(sep).join('/'));
    expect(present.sort()).toEqual([...files.keys()].sort());
    for (const [f, text] of files) expect(readFileSync(join(example, f), 'utf8'), f).toBe(text);
  });

  it('fills in the name and the @vmexit range, and refers to nothing outside the package', () => {
    const files = renderPolicyPackage({ name: '@acme/vmexit-policy-x' });
    const pkg = JSON.parse(files.get('package.json')!) as Record<string, Record<string, string> | string | boolean | undefined>;
    expect(pkg.name).toBe('@acme/vmexit-policy-x');
    expect(pkg.private).toBeUndefined();
    expect(vmexitRange()).toBe(`^${own.version}`);
    expect(pkg.peerDependencies).toEqual({ '@vmexit/core': `^${own.version}` });
    expect((pkg.dependencies as Record<string, string>)['@vmexit/core']).toBeUndefined();
    expect(Object.entries(pkg.devDependencies as Record<string, string>).filter(([k]) => k.startsWith('@vmexit/'))).toEqual(
      ['backend-vmx', 'cli', 'core', 'guest', 'mmu-shadow'].map((p) => [`@vmexit/${p}`, `^${own.version}`]),
    );
    for (const [f, text] of files) {
      expect(text, f).not.toMatch(/__NAME__|__VMEXIT_RANGE__/);
      expect(text, f).not.toMatch(/\.\.\/\.\.\//); // standalone: no tsconfig.base.json, no vitest.shared
    }
    expect([...files.keys()]).toEqual(
      expect.arrayContaining(['.gitignore', 'LICENSE', 'README.md', 'tsconfig.json', 'test/tsconfig.json', 'vitest.config.ts']),
    );
    expect(files.get('test/index.test.ts')).toContain("from '@vmexit/core/testing'");
    expect(files.get('test/index.test.ts')).not.toMatch(/as unknown as/);
  });
});

describe('invalidPackageName', () => {
  it('accepts npm package names and says what is wrong with others', () => {
    expect(invalidPackageName('my-policy')).toBeNull();
    expect(invalidPackageName('@acme/my.policy_2')).toBeNull();
    expect(invalidPackageName('')).toBe('the name is empty');
    expect(invalidPackageName('My-Policy')).toBe('the name has capital letters');
    expect(invalidPackageName('../x')).toMatch(/lowercase letters/);
    expect(invalidPackageName('@acme/')).toMatch(/lowercase letters/);
  });
});

describe('create-vmexit-policy (the bin)', () => {
  const run = (args: string[], cwd: string) => spawnSync(process.execPath, [bin, ...args], { cwd, encoding: 'utf8' });

  it('scaffolds ./NAME and says what to do next', () => {
    const cwd = mkdtempSync(join(tmpdir(), 'create-vmexit-policy-'));
    const r = run(['@acme/my-policy'], cwd);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('npx vmexit run --policy @acme/my-policy');
    expect(JSON.parse(readFileSync(join(cwd, 'my-policy', 'package.json'), 'utf8')).name).toBe('@acme/my-policy');
  });

  it('exits 2 with nothing written on bad usage: no name, a bad name, a directory that is not empty', () => {
    const cwd = mkdtempSync(join(tmpdir(), 'create-vmexit-policy-'));
    expect(run([], cwd)).toMatchObject({ status: 2, stderr: expect.stringContaining('the package name is missing') });
    expect(run(['Bad Name'], cwd)).toMatchObject({ status: 2, stderr: expect.stringContaining("invalid package name 'Bad Name'") });
    expect(run(['x', '--bogus'], cwd)).toMatchObject({ status: 2, stderr: expect.stringContaining("unknown option '--bogus'") });
    expect(readdirSync(cwd)).toEqual([]);
    scaffold(join(cwd, 'taken'), { name: 'taken' });
    expect(run(['taken'], cwd)).toMatchObject({ status: 2, stderr: expect.stringContaining('already exists and is not empty') });
    expect(existsSync(join(cwd, 'taken', 'package.json'))).toBe(true);
  });
});
