import svmModule from '@vmexit/backend-svm';
import vmxModule from '@vmexit/backend-vmx';
import { PFERR_WRITE, PT_WRITABLE, TYPES, type Mmu, type ModuleSources, type PageFaultResolution, type Vcpu } from '@vmexit/core';
import { ShadowMmu } from '@vmexit/mmu-shadow';
import policiesModule from '@vmexit/policies';
import { ContainerModule } from 'inversify';

/**
 * Deliberately broken shadow MMUs, to show that `--check` and conformance under a variant catch what a guest
 * could see. Each is the real ShadowMmu with one rule broken.
 */

/** The write hook drops every guest pte write that takes W away: the spte keeps its old rights. */
export class DropsWriteProtectMmu extends ShadowMmu {
  override trackWrite(vcpu: Vcpu, gpa: number, size: number, oldLo: number, oldHi: number, newLo: number, newHi: number): void {
    if ((oldLo & PT_WRITABLE) !== 0 && (newLo & PT_WRITABLE) === 0) return;
    super.trackWrite(vcpu, gpa, size, oldLo, oldHi, newLo, newHi);
  }
}

/** The guest's #PF of a read is injected with the W bit of the error code set (a write's). */
export class WrongErrorCodeMmu extends ShadowMmu {
  override handlePageFault(vcpu: Vcpu, address: number, errorCode: number): PageFaultResolution {
    const r = super.handlePageFault(vcpu, address, errorCode);
    return r.kind === 'inject' ? { ...r, errorCode: r.errorCode | PFERR_WRITE } : r;
  }
}

/** A guest #PF of a write is never fixed: the MMU says retry, the guest faults again (a fault loop). */
export class LoopsOnWriteFaultMmu extends ShadowMmu {
  override handlePageFault(vcpu: Vcpu, address: number, errorCode: number): PageFaultResolution {
    if ((errorCode & PFERR_WRITE) !== 0) return { kind: 'retry' };
    return super.handlePageFault(vcpu, address, errorCode);
  }
}

/** Module sources of the monorepo's backends and policies with the MMU `make` builds (one per VM). */
export function sourcesWith(make: () => Mmu): ModuleSources {
  const mmu = new ContainerModule(({ bind }) => {
    bind<Mmu>(TYPES.Mmu).toDynamicValue(make).inSingletonScope();
  });
  return { backends: { vmx: vmxModule, svm: svmModule }, mmus: { shadow: mmu }, policies: [policiesModule] };
}
