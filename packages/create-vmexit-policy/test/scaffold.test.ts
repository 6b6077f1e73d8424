import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
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

describe('a scaffolded package', () => {
  // A policy with dependencies is a class whose constructor takes them with an explicit @inject(TOKEN) (inversify
  // 8: parameter decorators, which only TypeScript's experimentalDecorators has; TC39 decorators have none), and
  // no emitDecoratorMetadata (nothing is injected by type). Both tsc (src and test) and vitest (which reads the
  // nearest tsconfig.json: test/tsconfig.json extends the package's) must accept it in src/ and in test/.
  const DECORATED = `import { inject, injectable } from 'inversify';
export const LABEL = Symbol.for('decorated.Label');
@injectable()
export class Labelled {
  constructor(@inject(LABEL) readonly label: string) {}
}
`;
  const DECORATED_TEST = `import { Container, inject, injectable } from 'inversify';
import { describe, expect, it } from 'vitest';
import { LABEL, Labelled } from '../src/decorated.js';
@injectable()
class Probe {
  constructor(@inject(Labelled) readonly labelled: Labelled) {}
}
describe('Labelled', () => {
  it('is built by inversify from its explicit @inject', () => {
    const c = new Container();
    c.bind(LABEL).toConstantValue('mine');
    c.bind(Labelled).toSelf();
    c.bind(Probe).toSelf();
    expect(c.get(Probe).labelled.label).toBe('mine');
  });
});
`;

  it('compiles and tests a class with explicit @inject in src/ and test/ (experimentalDecorators, no emitDecoratorMetadata)', () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'create-vmexit-policy-')), 'decorated');
    scaffold(dir, { name: 'decorated' });
    // This repository's packages and tools stand in for what `npm install` brings (the template's devDependencies).
    symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'), 'dir');
    writeFileSync(join(dir, 'src', 'decorated.ts'), DECORATED);
    writeFileSync(join(dir, 'test', 'decorated.test.ts'), DECORATED_TEST);
    const tsconfig = JSON.parse(readFileSync(join(dir, 'tsconfig.json'), 'utf8')) as { compilerOptions: Record<string, unknown> };
    expect(tsconfig.compilerOptions['emitDecoratorMetadata']).toBeUndefined();
    const tsc = spawnSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'test'], { cwd: dir, encoding: 'utf8' });
    expect(tsc.stdout + tsc.stderr).toBe('');
    expect(tsc.status).toBe(0);
    // vitest in the scaffolded package, on the decorated test only (the template's own tests run in
    // examples/policy-template, which is the same files); without the VITEST_* variables of this run.
    const env = { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('VITEST') && k !== 'FORCE_COLOR')), NO_COLOR: '1' };
    const vitest = spawnSync(process.execPath, [join(root, 'node_modules', 'vitest', 'vitest.mjs'), 'run', 'test/decorated.test.ts'], {
      cwd: dir,
      encoding: 'utf8',
      env,
    });
    expect(vitest.stdout + vitest.stderr).toMatch(/Tests\s+1 passed/);
    expect(vitest.status).toBe(0);
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

  it('refuses what npm refuses for a new package: node_modules, favicon.ico, a Node core module, ~ in the name', () => {
    // npm's own rules (validate-npm-package-name, validForNewPackages): an excluded name is an error, a core
    // module name or one of ~'!()* after the scope a warning that new packages may not have.
    expect(invalidPackageName('node_modules')).toBe("'node_modules' is not a valid package name");
    expect(invalidPackageName('favicon.ico')).toBe("'favicon.ico' is not a valid package name");
    expect(invalidPackageName('fs')).toBe("'fs' is the name of a Node.js core module");
    expect(invalidPackageName('http')).toBe("'http' is the name of a Node.js core module");
    expect(invalidPackageName('my~policy')).toMatch(/lowercase letters/);
    expect(invalidPackageName('@acme/fs')).toBeNull(); // scoped: not a core module's name
    expect(invalidPackageName('@ac~me/policy')).toBeNull(); // npm allows ~ in the scope
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
    expect(run(['node_modules'], cwd)).toMatchObject({ status: 2, stderr: expect.stringContaining("'node_modules' is not a valid package name") });
    writeFileSync(join(cwd, 'a-file'), '');
    expect(run(['x', '--dir', 'a-file'], cwd)).toMatchObject({ status: 2, stderr: expect.stringContaining(`${join(cwd, 'a-file')} is not a directory`) });
    expect(readdirSync(cwd)).toEqual(['a-file']);
    scaffold(join(cwd, 'taken'), { name: 'taken' });
    expect(run(['taken'], cwd)).toMatchObject({ status: 2, stderr: expect.stringContaining('already exists and is not empty') });
    expect(existsSync(join(cwd, 'taken', 'package.json'))).toBe(true);
  });
});
