import { composeVariant, createVm } from '@vmexit/core';
import policiesModule from '@vmexit/policies';
import { describe, expect, it } from 'vitest';
import { sources } from './vm.js';

// Policies declare what they need; under TDP the shadow-paging ideas have nothing to act on (no guest pte
// write ever reaches the hypervisor, no shadow page exists), so composition refuses them by name.
const withPolicies = () => ({ ...sources(), policies: [policiesModule] });

describe('composing a TDP variant', () => {
  for (const use of ['pte-update', 'unsync', 'write-flood', 'misaligned-write', 'prefetch', 'user-write-hint']) {
    it(`refuses '${use}': it needs ShadowPageTables, which mmu 'tdp' does not provide`, async () => {
      const c = await composeVariant({ backend: 'vmx', mmu: 'tdp', policies: [{ use }] }, withPolicies());
      expect(c.problems.map((p) => `${p.path}: ${p.message}`)).toEqual([
        `policies.0.use: policy '${use}' needs ShadowPageTables (shadow page tables built from the guest's, with its page-table writes trapped and emulated: a shadow-paging idea), which mmu 'tdp' does not provide`,
      ]);
    });
  }

  it("refuses 'bypass-guest-pf' on VMX: it needs NonPresentSpteEncoding from the MMU", async () => {
    await expect(createVm({ backend: 'vmx', mmu: 'tdp', policies: [{ use: 'bypass-guest-pf' }] }, { sources: withPolicies() })).rejects.toThrow(
      /policies\.0\.use: policy 'bypass-guest-pf' needs NonPresentSpteEncoding .*which mmu 'tdp' does not provide/,
    );
  });

  it('accepts the same policies on shadow paging', async () => {
    const c = await composeVariant({ backend: 'vmx', mmu: 'shadow', policies: [{ use: 'pte-update' }, { use: 'unsync' }] }, withPolicies());
    expect(c.problems).toEqual([]);
  });

  it('builds a VM whose vCPUs walk the TDP root through the backend (VMX EPTP with A/D, SVM nCR3)', async () => {
    const vmx = await createVm({ backend: 'vmx', mmu: 'tdp', memory: 4 * 1024 * 1024 }, { sources: sources() });
    const vmcs = vmx.backendStates[0] as { eptPointer: number };
    const root = (vmx.mmu as unknown as { root: { hpa: number } }).root.hpa;
    expect(vmcs.eptPointer).toBe(root + (3 << 3) + (1 << 6) + 6); // 4-level walk, A/D on, WB (SDM Table 25-9)
    const svm = await createVm({ backend: 'svm', mmu: 'tdp', memory: 4 * 1024 * 1024 }, { sources: sources() });
    expect((svm.backendStates[0] as { nCr3: number }).nCr3).toBe((svm.mmu as unknown as { root: { hpa: number } }).root.hpa);
  });
});
