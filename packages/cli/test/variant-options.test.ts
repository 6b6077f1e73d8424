import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ACC_WRITE, createVm, type ModuleSources } from '@vmexit/core';
import { svmModule } from '@vmexit/backend-svm';
import { vmxModule } from '@vmexit/backend-vmx';
import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { InputError } from '../src/errors.js';
import { addVariantOptions, variantFromOptions, type VariantOptions } from '../src/variant-options.js';
import { fakeMmuModule } from './helpers/fake-mmu.js';
import { bootGuest, VA } from './helpers/guest.js';

const FIXTURE = resolve(import.meta.dirname, 'fixtures/third-party-policy');

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
    const v = await variantFromOptions(parse(['--backend', 'svm', '--vcpus', '2', '--memory', '64M', '--cost-model', 'core2-2007']), { cwd: dir, sources: fakeSources() });
    expect(v).toEqual({ backend: 'svm', mmu: 'shadow', policies: [], guest: { mode: 'long4', personality: 'linux' }, vcpus: 2, memory: 64 * 1024 * 1024, costModel: 'core2-2007', resolveFrom: dir });
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

  it('reports one problem per bad field, with its path, and runs nothing', async () => {
    const dir = tmp();
    const file = join(dir, 'vmexit.config.json');
    writeFileSync(file, JSON.stringify({ backend: 'vmx', vcpus: 'two', colour: 'red', guest: { mode: 'real' }, policies: [{ use: 'no-such-policy-xyz' }, { use: FIXTURE, options: { x: 1 } }] }));
    const msg = await problemsOf(variantFromOptions({ config: file }, { cwd: dir, sources: fakeSources() }));
    const lines = msg.split('\n').slice(1).map((l) => l.trim().split(':')[0]);
    expect(lines.sort()).toEqual(['colour', 'guest.mode', 'vcpus']);
    // with the schema satisfied, the policies are checked: each problem on its own line
    writeFileSync(file, JSON.stringify({ backend: 'vmx', policies: [{ use: 'no-such-policy-xyz' }, { use: FIXTURE, options: { x: 1 } }] }));
    const msg2 = await problemsOf(variantFromOptions({ config: file }, { cwd: dir, sources: fakeSources() }));
    expect(msg2).toContain("policies.0.use: unknown policy or package 'no-such-policy-xyz'");
    expect(msg2).toContain("policies.1.options: policy 'fixture-bypass' takes no options");
  });

  it('rejects a config that is not JSON, or does not exist', async () => {
    const dir = tmp();
    writeFileSync(join(dir, 'bad.json'), '{ backend: vmx');
    expect(await problemsOf(variantFromOptions({ config: 'bad.json' }, { cwd: dir }))).toMatch(/bad\.json: not valid JSON/);
    expect(await problemsOf(variantFromOptions({ config: 'none.json' }, { cwd: dir }))).toMatch(/none\.json: no such file/);
  });

  it('refuses a policy whose capability the backend lacks, naming the policy, the capability and the backend', async () => {
    const msg = await problemsOf(variantFromOptions(parse(['--backend', 'svm', '--policy', FIXTURE]), { sources: fakeSources() }));
    expect(msg).toContain("policies.0.use: policy 'fixture-bypass' needs PageFaultFilter (error-code filtering of #PF exits (VMX PFEC_MASK/PFEC_MATCH)), which backend 'svm' does not provide");
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
    // The fixture set PFEC_MASK = PFEC_MATCH = 1: the P=0 write fault went straight to the guest (no
    // EXCEPTION_NMI exit). Its exit operator saw the 4 boot exits (EFER, CR4, CR3, CR0).
    expect(faults).toEqual([[ACC_WRITE, VA]]);
    expect(vm.counters().total).toMatchObject({ exits: 4, 'fixture.exits_seen': 4, 'guest.page_faults': 1 });
    expect(vm.counters().total['exits.EXCEPTION_NMI']).toBeUndefined();
  });

  it('loads the same policy by path', async () => {
    const variant = await variantFromOptions(parse(['--policy', FIXTURE]), { sources: fakeSources() });
    expect(variant.policies[0]!.use).toBe(FIXTURE);
  });
});
