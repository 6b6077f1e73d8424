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
