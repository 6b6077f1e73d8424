import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ACC_WRITE, createVm, type ModuleSources } from '@vmexit/core';
import { svmModule } from '@vmexit/backend-svm';
import { vmxModule } from '@vmexit/backend-vmx';
import { policiesModule } from '@vmexit/policies';
import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { parseVariantSpec } from '@vmexit/lab';
import { InputError } from '../src/errors.js';
import { addVariantOptions, variantFromOptions, type VariantOptions } from '../src/variant-options.js';
import { fakeMmuModule } from './helpers/fake-mmu.js';
import { bootGuest, VA } from './helpers/guest.js';

const FIXTURE = resolve(import.meta.dirname, 'fixtures/third-party-policy');
/** The shadow MMU's built entry: a stand-in for a package named @vmexit/mmu-tdp. */
const SHADOW_ENTRY = resolve(import.meta.dirname, '../../mmu-shadow/dist/index.js');

function fakeSources(): ModuleSources {
  return { backends: { vmx: vmxModule, svm: svmModule }, mmus: { shadow: fakeMmuModule().module }, policies: [] };
}

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'vmexit-variant-'));
}

function parse(argv: string[]): VariantOptions {
  const cmd = addVariantOptions(new Command('x').exitOverride());
  cmd.parse(argv, { from: 'user' });
  return cmd.opts<VariantOptions>();
}

async function problemsOf(p: Promise<unknown>): Promise<string> {
  const e = await p.catch((x: unknown) => x);
  expect(e).toBeInstanceOf(InputError);
  return (e as InputError).message;
}

describe('variantFromOptions', () => {
  it('builds a variant from flags, with the schema defaults for the rest', async () => {
    const dir = tmp();
    const v = await variantFromOptions(parse(['--backend', 'svm', '--vcpus', '2', '--memory', '64M', '--cost-model', 'core2-2007']), {
      cwd: dir,
      sources: fakeSources(),
    });
    expect(v).toEqual({
      backend: 'svm',
      mmu: 'shadow',
      policies: [],
      guest: { mode: 'long4', personality: 'linux' },
      vcpus: 2,
      memory: 64 * 1024 * 1024,
      costModel: 'core2-2007',
      resolveFrom: dir,
    });
  });

  it('reads vmexit.config.json, and flags override its fields', async () => {
    const dir = tmp();
    const file = join(dir, 'vmexit.config.json');
    writeFileSync(file, JSON.stringify({ backend: 'svm', vcpus: 4, guest: { mode: 'pae' } }));
    const v = await variantFromOptions(parse(['--config', file, '--backend', 'vmx']), { cwd: '/', sources: fakeSources() });
    expect(v).toMatchObject({ backend: 'vmx', vcpus: 4, guest: { mode: 'pae', personality: 'linux' }, resolveFrom: dir });
  });

  it('reads a vmexit.config.mjs default export, resolving policy paths from its directory', async () => {
    const dir = tmp();
    symlinkSync(FIXTURE, join(dir, 'my-policy'));
    writeFileSync(join(dir, 'vmexit.config.mjs'), "export default { backend: 'vmx', policies: [{ use: './my-policy' }] };\n");
    const v = await variantFromOptions({ config: join(dir, 'vmexit.config.mjs') }, { cwd: '/', sources: fakeSources() });
    expect(v.policies).toEqual([{ use: './my-policy', options: {} }]);
  });

  it('reports every problem in one run, each with its path: the schema, unknown packages, options and capabilities', async () => {
    const dir = tmp();
    const file = join(dir, 'vmexit.config.json');
    writeFileSync(
      file,
      JSON.stringify({
        backend: 'svm',
        vcpus: 'two',
        colour: 'red',
        guest: { mode: 'real' },
        policies: [
          { use: 'no-such-policy-xyz' },
          { use: FIXTURE, options: { x: 1 } },
          { use: 7 },
          { use: 'bypass-guest-pf' },
          { use: FIXTURE, options: { prefix: 'ok' } },
        ],
      }),
    );
    const msg = await problemsOf(variantFromOptions({ config: file }, { cwd: dir, sources: { ...fakeSources(), policies: [policiesModule] } }));
    const lines = msg
      .split('\n')
      .slice(1)
      .map((l) => l.trim());
    // The schema's problems (an unknown key, wrong types) do not stop the checks of the fields that parsed:
    // the backend (svm) and the valid policy entries are still loaded and checked against it.
    // bypass-guest-pf (policies.3) needs two capabilities, and neither svm nor the test's fake MMU has its own.
    expect(lines.map((l) => l.split(':')[0]).sort()).toEqual([
      'colour',
      'guest.mode',
      'policies.0.use',
      'policies.1.options.x',
      'policies.2.use',
      'policies.3.use',
      'policies.3.use',
      'vcpus',
    ]);
    expect(lines).toContain('colour: unknown key');
    expect(msg).toContain("policies.0.use: unknown policy or package 'no-such-policy-xyz'");
    expect(lines).toContain('policies.1.options.x: unknown key');
    expect(msg).toContain(
      "policies.3.use: policy 'bypass-guest-pf' needs PageFaultFilter (error-code filtering of #PF exits (VMX PFEC_MASK/PFEC_MATCH)), which backend 'svm' does not provide",
    );
  });

  it('with an invalid backend, still checks the policies (but not their needs against it)', async () => {
    const msg = await problemsOf(
      variantFromOptions(parse(['--backend', 'kvm', '--policy', 'no-such-policy-xyz,bypass-guest-pf']), {
        sources: { ...fakeSources(), policies: [policiesModule] },
      }),
    );
    const lines = msg
      .split('\n')
      .slice(1)
      .map((l) => l.trim());
    // The unknown policy, and bypass-guest-pf's need of the MMU (the fake MMU has no NonPresentSpteEncoding);
    // its need of the backend is not checked against a backend that does not exist.
    expect(lines.map((l) => l.split(':')[0])).toEqual(['backend', 'policies.0.use', 'policies.1.use']);
    expect(lines[2]).toContain("needs NonPresentSpteEncoding (trap / notrap encodings of non-present shadow ptes), which mmu 'shadow' does not provide");
  });

  it('rejects a config that is not JSON, or does not exist', async () => {
    const dir = tmp();
    writeFileSync(join(dir, 'bad.json'), '{ backend: vmx');
    expect(await problemsOf(variantFromOptions({ config: 'bad.json' }, { cwd: dir }))).toMatch(/bad\.json: not valid JSON/);
    expect(await problemsOf(variantFromOptions({ config: 'none.json' }, { cwd: dir }))).toMatch(/none\.json: no such file/);
  });

  it('refuses a policy whose capability the backend lacks, naming the policy, the capability and the backend', async () => {
    const msg = await problemsOf(
      variantFromOptions(parse(['--backend', 'svm', '--policy', 'bypass-guest-pf']), { sources: { ...fakeSources(), policies: [policiesModule] } }),
    );
    expect(msg).toContain(
      "policies.0.use: policy 'bypass-guest-pf' needs PageFaultFilter (error-code filtering of #PF exits (VMX PFEC_MASK/PFEC_MATCH)), which backend 'svm' does not provide",
    );
  });

  it('says that mmu tdp is not available when the package its source names is not installed, naming the mmus that are', async () => {
    const dir = tmp();
    const sources = { ...fakeSources(), mmus: { shadow: fakeMmuModule().module, tdp: '@vmexit/mmu-tdp-not-installed' } };
    const msg = await problemsOf(variantFromOptions(parse(['--mmu', 'tdp']), { cwd: dir, sources }));
    expect(msg).toContain(
      "mmu: two-dimensional paging (mmu 'tdp') is not available in this release: no @vmexit/mmu-tdp-not-installed package is installed (installed mmus: shadow)",
    );
  });

  it('loads mmu tdp from a package named @vmexit/mmu-tdp where one resolves', async () => {
    // A stand-in package of that name in the working directory's node_modules (it re-exports the shadow MMU's
    // module): the name resolves, so it is loaded like any other package.
    const dir = tmp();
    const pkg = join(dir, 'node_modules', '@vmexit', 'mmu-tdp');
    mkdirSync(pkg, { recursive: true });
    writeFileSync(join(pkg, 'package.json'), JSON.stringify({ name: '@vmexit/mmu-tdp', type: 'module', exports: './index.mjs' }));
    writeFileSync(join(pkg, 'index.mjs'), `export { default } from ${JSON.stringify(pathToFileURL(SHADOW_ENTRY).href)};\n`);
    const sources = { ...fakeSources(), mmus: { shadow: fakeMmuModule().module, tdp: '@vmexit/mmu-tdp' } };
    const v = await variantFromOptions(parse(['--mmu', 'tdp']), { cwd: dir, sources });
    expect(v.mmu).toBe('tdp');
  });

  describe('--host-pages', () => {
    const tdpSources = async (): Promise<ModuleSources> => ({
      ...fakeSources(),
      mmus: { shadow: fakeMmuModule().module, tdp: (await import('@vmexit/mmu-tdp')).default },
    });

    it('sets hostPages under --mmu tdp (absent: no field, 4 KiB), from a flag or a config file, the flag winning', async () => {
      const sources = await tdpSources();
      expect((await variantFromOptions(parse(['--mmu', 'tdp', '--host-pages', '2m']), { sources })).hostPages).toBe('2m');
      expect((await variantFromOptions(parse(['--mmu', 'tdp', '--host-pages', '1G']), { sources })).hostPages).toBe('1g');
      expect((await variantFromOptions(parse(['--mmu', 'tdp']), { sources })).hostPages).toBeUndefined();
      const dir = tmp();
      writeFileSync(join(dir, 'v.json'), JSON.stringify({ backend: 'svm', mmu: 'tdp', hostPages: '1g' }));
      expect((await variantFromOptions(parse(['--config', 'v.json']), { cwd: dir, sources })).hostPages).toBe('1g');
      expect((await variantFromOptions(parse(['--config', 'v.json', '--host-pages', '4k']), { cwd: dir, sources })).hostPages).toBe('4k');
    });

    it("takes the spec word host-pages=SIZE in a --variant, over an override's hostPages", async () => {
      const context = { sources: await tdpSources() };
      expect((await parseVariantSpec('vmx tdp host-pages=2m', {}, context)).hostPages).toBe('2m');
      expect((await parseVariantSpec('svm host-pages=1g tdp', { hostPages: '2m' }, context)).hostPages).toBe('1g');
      expect((await parseVariantSpec('svm tdp', { hostPages: '2m' }, context)).hostPages).toBe('2m');
      expect(await problemsOf(parseVariantSpec('vmx tdp host-pages=2m host-pages=1g', {}, context))).toContain('names 2 host page sizes (2m, 1g)');
      expect(await problemsOf(parseVariantSpec('vmx tdp host-pages=8k', {}, context))).toContain('host-pages: expected 4k, 2m, 1g');
      expect(await problemsOf(parseVariantSpec('vmx shadow host-pages=2m', {}, context))).toContain("mmu 'shadow' maps guest RAM with 4 KiB pages");
    });

    it('refuses a bad size, and host pages under shadow paging or natively, naming the field', async () => {
      const sources = await tdpSources();
      expect(await problemsOf(variantFromOptions(parse(['--mmu', 'tdp', '--host-pages', '3m']), { sources }))).toBe(
        "--host-pages: expected 4k, 2m, 1g (the host page size backing guest RAM, for --mmu tdp), got '3m'",
      );
      expect(await problemsOf(variantFromOptions(parse(['--mmu', 'shadow', '--host-pages', '2m']), { sources }))).toContain(
        "hostPages: host pages (--host-pages) apply to two-dimensional paging (mmu 'tdp') only; mmu 'shadow' maps guest RAM with 4 KiB pages",
      );
      // The default MMU is shadow: --host-pages alone is refused too.
      expect(await problemsOf(variantFromOptions(parse(['--host-pages', '2m']), { sources }))).toContain("mmu 'shadow' maps guest RAM with 4 KiB pages");
      expect(await problemsOf(variantFromOptions(parse(['--backend', 'none', '--host-pages', '2m']), { sources }))).toContain(
        "hostPages: host pages (--host-pages) apply to two-dimensional paging (mmu 'tdp'), and backend is 'none' (native)",
      );
      const dir = tmp();
      writeFileSync(join(dir, 'v.json'), JSON.stringify({ mmu: 'tdp', hostPages: '4m' }));
      expect(await problemsOf(variantFromOptions(parse(['--config', 'v.json']), { cwd: dir, sources }))).toContain(
        "hostPages: expected '4k', '2m' or '1g' (the host page size backing guest RAM)",
      );
    });
  });

  it('refuses an MMU with backend none: there is no hypervisor for it', async () => {
    const msg = await problemsOf(variantFromOptions(parse(['--backend', 'none', '--mmu', 'shadow']), { sources: fakeSources() }));
    expect(msg).toContain("mmu: mmu 'shadow' needs a hypervisor below it, and backend is 'none' (native)");
    // Native without an MMU is fine.
    expect((await variantFromOptions(parse(['--backend', 'none']), { sources: fakeSources() })).backend).toBe('none');
  });

  it('loads a policy published outside the monorepo by package name, and it runs', async () => {
    const dir = tmp();
    mkdirSync(join(dir, 'node_modules'));
    symlinkSync(FIXTURE, join(dir, 'node_modules', 'vmexit-policy-fixture'));
    const sources = fakeSources();
    const variant = await variantFromOptions(parse(['--backend', 'vmx', '--policy', 'vmexit-policy-fixture', '--memory', '4M']), { cwd: dir, sources });
    expect(variant.policies).toEqual([{ use: 'vmexit-policy-fixture', options: {} }]);
    const vm = await createVm(variant, { sources });
    const faults: [number, number][] = [];
    const v = bootGuest(vm, faults);
    v.write(VA, 4, 7);
    // Exits: the 4 of boot (WRMSR EFER, MOV CR4, CR3, CR0), then the P=0 write's #PF (EXCEPTION_NMI), which
    // the fixture passes on and the MMU reflects into the guest: 5. The fixture counted each by reason.
    expect(faults).toEqual([[ACC_WRITE, VA]]);
    expect(vm.counters().total).toMatchObject({
      exits: 5,
      'exits.MSR_WRITE': 1,
      'exits.CR_ACCESS': 3,
      'exits.EXCEPTION_NMI': 1,
      'census.MSR_WRITE': 1,
      'census.CR_ACCESS': 3,
      'census.EXCEPTION_NMI': 1,
    });
  });

  it('loads the same policy by path', async () => {
    const variant = await variantFromOptions(parse(['--policy', FIXTURE]), { sources: fakeSources() });
    expect(variant.policies[0]!.use).toBe(FIXTURE);
  });
});
