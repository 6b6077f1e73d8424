import { createVm, TYPES, type ExitResolution, type Mmu, type MmuHost, type MmuMode, type Vcpu, type Vm } from '@vmexit/core';
import { ContainerModule } from 'inversify';
import { vmxModule } from '../src/module.js';

/**
 * A VM with this package's backend and a stand-in MMU that only hears CR writes and INVLPGs and resolves no
 * page fault, for scenario tests whose every exit can be named. Under `tdp` it points the second stage at an
 * identity EPT (one 1 GiB leaf, gpa 0-1 GiB, RWX, write-back) kept in guest RAM at `EPT_ROOT`, so no access
 * below 1 GiB takes an EPT violation; with shadow paging the hardware walks the guest's own tables.
 */
export const EPT_ROOT = 0xe0_0000;

export async function vmxVm(mmu: MmuMode, options: { maxPhyAddr?: number; hostMaxPhyAddr?: number } = {}): Promise<Vm> {
  let host: MmuHost | null = null;
  const stub: Mmu = {
    name: mmu,
    init(h) {
      host = h;
    },
    attachVcpu(vcpu: Vcpu) {
      if (mmu !== 'tdp') return;
      const mem = vcpu.memory;
      mem.write32(EPT_ROOT, (EPT_ROOT + 0x1000) | 7); // EPT PML4E -> EPT PDPT, RWX
      mem.write32(EPT_ROOT + 0x1000, 0x80 | (6 << 3) | 7); // EPT PDPTE 0: a 1 GiB page at 0, WB, RWX
      const state = host!.backendState!(vcpu.id);
      host!.backend!.setNestedRoot(state, EPT_ROOT);
      vcpu.setSecondStage(host!.backend!.createSecondStage(state, mem, vcpu.hostMaxPhyAddr));
    },
    handlePageFault(): ExitResolution {
      throw new Error('no page fault is expected to reach the MMU');
    },
    trackWrite() {},
    crWritten() {},
    invlpg() {},
    emulationFailed: () => false,
  };
  const mmuModule = new ContainerModule(({ bind }) => {
    bind<Mmu>(TYPES.Mmu).toConstantValue(stub);
  });
  return createVm(
    { backend: 'vmx', mmu, memory: 16 * 1024 * 1024 },
    { sources: { backends: { vmx: vmxModule }, mmus: { [mmu]: mmuModule }, policies: [] }, ...options },
  );
}

/** The VM's exit counters by reason (`exits.<REASON>` without the prefix). */
export function exitsByReason(vm: Vm): Record<string, number> {
  return Object.fromEntries(
    Object.entries(vm.counters().total).flatMap(([k, n]) => (k.startsWith('exits.') && !k.startsWith('exits.kind.') ? [[k.slice('exits.'.length), n]] : [])),
  );
}
