import { ContainerModule } from 'inversify';
import { describe, expect, it } from 'vitest';
import { composeVariant } from '../../src/vm/compose.js';
import type { ModuleSources } from '../../src/vm/modules.js';
import { createVm } from '../../src/vm/vm.js';

/** Built-in policies from a package that is not installed: as a user who installed no @vmexit/policies. */
const NO_POLICIES: ModuleSources = { backends: {}, mmus: {}, policies: ['@vmexit/no-such-policies-package'] };

describe('composeVariant', () => {
  it('does not need the built-in policy package for a variant without policies', async () => {
    const c = await composeVariant({ backend: 'none' }, NO_POLICIES);
    expect(c.problems).toEqual([]);
  });

  it('says that the built-in policy package is not installed when a variant names a policy', async () => {
    const c = await composeVariant({ backend: 'none', policies: [{ use: 'pte-update' }] }, NO_POLICIES);
    expect(c.problems.map((p) => p.path)).toEqual(['policies.0.use']);
    expect(c.problems[0]!.message).toContain('built-in policies: none, as @vmexit/no-such-policies-package is not installed');
  });

  it('loads no built-in policy module when no policy is named', async () => {
    let loaded = 0;
    const counting = new ContainerModule(() => {
      loaded++;
    });
    await composeVariant({ backend: 'none' }, { backends: {}, mmus: {}, policies: [counting] });
    expect(loaded).toBe(0);
  });
});

describe('createVm', () => {
  it('takes a VariantInput: a misspelt field or value does not compile', () => {
    // Type-level only (checked by `npm run typecheck`); never called.
    const typeChecks = () => {
      // @ts-expect-error no backend 'kvm'
      void createVm({ backend: 'kvm' });
      // @ts-expect-error vcpus is a number
      void createVm({ vcpus: '2' });
      // @ts-expect-error unknown key
      void createVm({ backnd: 'vmx' });
      void createVm({ backend: 'svm', mmu: 'shadow', memory: '64M', policies: [{ use: 'pte-update', options: { x: 1 } }] });
    };
    expect(typeof typeChecks).toBe('function');
  });
});

describe('composeVariant: a policy from a file that is not right', () => {
  /** A scratch directory with `files`, and this repository's node_modules (for inversify), as a plugin project has. */
  async function plugin(files: Record<string, string>): Promise<string> {
    const { mkdtempSync, symlinkSync, writeFileSync } = await import('node:fs');
    const { join, resolve } = await import('node:path');
    const { tmpdir } = await import('node:os');
    const dir = mkdtempSync(join(tmpdir(), 'vmexit-compose-'));
    symlinkSync(resolve(import.meta.dirname, '../../../../node_modules'), join(dir, 'node_modules'), 'dir');
    for (const [f, text] of Object.entries(files)) writeFileSync(join(dir, f), text);
    return dir;
  }
  const BUILT_IN = new ContainerModule(({ bind }) => {
    bind(Symbol.for('vmexit.FaultPolicy')).toConstantValue({ name: 'pte-update', description: 'built in', needs: [] });
  });
  const SOURCES: ModuleSources = { backends: {}, mmus: {}, policies: [BUILT_IN] };
  const module = (body: string): string => `import { ContainerModule } from 'inversify';\nconst T = Symbol.for('vmexit.FaultPolicy');\n${body}\n`;

  it("refuses a plugin policy with a built-in policy's name, naming the file", async () => {
    const dir = await plugin({
      'clash.mjs': module(
        "export default new ContainerModule(({ bind }) => { bind(T).toConstantValue({ name: 'pte-update', description: 'x', needs: [] }); });",
      ),
    });
    const c = await composeVariant({ backend: 'vmx', policies: [{ use: './clash.mjs' }], resolveFrom: dir }, SOURCES);
    expect(c.problems.filter((p) => p.path.startsWith('policies'))).toEqual([
      { path: 'policies.0.use', message: "'./clash.mjs' binds a policy named 'pte-update', the name of a built-in policy: give it a name of its own" },
    ]);
  });

  it('refuses a value bound to the FaultPolicy token that is not a policy (no needs), with a problem rather than a TypeError', async () => {
    const dir = await plugin({ 'odd.mjs': module("export default new ContainerModule(({ bind }) => { bind(T).toConstantValue({ name: 'odd' }); });") });
    const c = await composeVariant({ backend: 'vmx', policies: [{ use: './odd.mjs' }], resolveFrom: dir }, SOURCES);
    expect(c.problems.filter((p) => p.path.startsWith('policies'))).toEqual([
      {
        path: 'policies.0.use',
        message:
          "'./odd.mjs' binds a value to Symbol.for('vmexit.FaultPolicy') that is not a FaultPolicy: 'needs' of 'odd' is not an array of capability names",
      },
    ]);
  });

  it('says what a class bound without @inject on its constructor arguments needs, in one line', async () => {
    const dir = await plugin({
      'nodeco.mjs': module(
        "class P { constructor(dep) { this.name = 'p'; this.description = 'x'; this.needs = []; } }\nexport default new ContainerModule(({ bind }) => { bind(T).to(P); });",
      ),
    });
    const c = await composeVariant({ backend: 'vmx', policies: [{ use: './nodeco.mjs' }], resolveFrom: dir }, SOURCES);
    const [p] = c.problems.filter((q) => q.path.startsWith('policies'));
    expect(p!.message).toMatch(
      /^cannot load policy from '\.\/nodeco\.mjs': Found unexpected missing metadata on type "P"\. .* \(a class bound to a token is @injectable\(\) and takes each constructor argument with an explicit @inject\(TOKEN\); TypeScript needs "experimentalDecorators" for that\)$/,
    );
    expect(p!.message).not.toContain('\n');
  });
});
