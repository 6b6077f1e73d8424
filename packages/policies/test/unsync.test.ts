import { createVm } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { unsync } from '../src/index.js';
import { base, decide, pteWrite } from './helpers.js';
import { SOURCES } from './vm.js';

describe('unsync', () => {
  describe('.mmuEvents', () => {
    it('lets level-1 pages go unsync', async () => {
      expect(await decide(unsync, { ...base, kind: 'unsync', gfn: 5 }, {})).toBe(true);
      expect(await decide(unsync, pteWrite(1, false), {})).toBeNull();
    });
  });
  describe('.setup', () => {
    it('refuses a backend state that does not intercept INVLPG', () => {
      const backend = { name: 'vmx', invlpgExits: () => false, crWriteExits: () => true };
      expect(() => unsync.setup!({ options: {}, mmu: { name: 'shadow' }, backend, backendStates: [{}] } as never)).toThrow(
        /needs INVLPG and CR3 loads to exit.*vCPU 0 does not intercept INVLPG/,
      );
    });
    it('refuses a backend state that does not intercept CR3 loads', () => {
      const backend = { name: 'svm', invlpgExits: () => true, crWriteExits: (_s: unknown, cr: number) => cr !== 3 };
      expect(() => unsync.setup!({ options: {}, mmu: { name: 'shadow' }, backend, backendStates: [{}, {}] } as never)).toThrow(
        /svm vCPU 0 does not intercept CR3 loads/,
      );
    });
    it('accepts the bundled backends: their shadow-paging state intercepts INVLPG and CR3 loads on every vCPU', async () => {
      // backend-vmx createVmcs (KVM init_vmcs without EPT) and backend-svm createVmcb (init_vmcb without NPT)
      // turn both on for shadow paging, so there is nothing for the policy to enable.
      for (const backend of ['vmx', 'svm'] as const) {
        const vm = await createVm({ backend, mmu: 'shadow', vcpus: 2, memory: 4 * 1024 * 1024, policies: [{ use: 'unsync' }] }, { sources: SOURCES });
        expect(vm.vcpus).toHaveLength(2);
      }
    });
  });
});
