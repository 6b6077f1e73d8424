import { describe, expect, it } from 'vitest';
import {
  ArrayRecorder,
  CR0_PE,
  CR0_PG,
  CR4_PAE,
  EFER_LME,
  GP_VECTOR,
  MSR_EFER,
  NoopTracer,
  Vm,
  type ExitResolution,
  type Mmu,
  type Vcpu,
} from '../../src/index.js';
import { variantSchema } from '../../src/vm/variant.js';
import { FakeBackend } from './fake-backend.js';

/** An MMU that records the control-register writes it is told of. */
class CrMmu implements Mmu {
  readonly name = 'shadow' as const;
  readonly log: string[] = [];
  init(): void {}
  attachVcpu(): void {}
  handlePageFault(): ExitResolution {
    return { kind: 'resume' };
  }
  trackWrite(): void {}
  crWritten(_v: Vcpu, cr: number, _old: number, exited: boolean): void {
    this.log.push(`cr${cr} ${exited ? 'exited' : 'no exit'}`);
  }
  invlpg(): void {}
  emulationFailed(): boolean {
    return false;
  }
}

function vmWith() {
  const backend = new FakeBackend();
  const mmu = new CrMmu();
  const rec = new ArrayRecorder();
  const variant = variantSchema.parse({ backend: 'vmx', mmu: 'shadow', memory: '4M', vcpus: 1 });
  const vm = new Vm(variant, backend, mmu, [], () => null, new NoopTracer(), rec, 1);
  const v = vm.vcpus[0]!;
  const gp: number[] = [];
  v.setExceptionHandler(GP_VECTOR, (_v, _vec, ec) => gp.push(ec));
  const exits = () => rec.exits.map((e) => `${e.hw.name} -> ${e.resolution?.kind ?? 'none'}${e.kind === 'cr-write' && e.faulted ? ' (faulted)' : ''}`);
  return { vm, v, backend, mmu, rec, gp, exits };
}

/**
 * Three writes that are #GP(0) with paging off: MOV CR0 with PG and not PE; MOV CR4 with reserved bit 15; WRMSR
 * EFER with reserved bit 1. Each leaves its register as it was.
 */
const BAD_WRITES = [
  ['MOV CR0 (PG without PE)', 0, (v: Vcpu) => v.movToCr0(CR0_PG)],
  ['MOV CR4 (reserved bit 15)', 4, (v: Vcpu) => v.movToCr4(CR4_PAE | (1 << 15))],
  ['WRMSR EFER (reserved bit 1)', MSR_EFER, (v: Vcpu) => v.writeEfer(EFER_LME | (1 << 1))],
] as const;

describe('VmHooks: a control-register write that is #GP(0) reaches the guest as #GP(0) whether it exits or not', () => {
  for (const [name, cr, write] of BAD_WRITES) {
    it(`${name}: intercepted, it exits first and the handler injects the #GP; the MMU hears nothing`, () => {
      const r = vmWith();
      r.backend.intercepted.add(cr);
      write(r.v);
      // Exit 1: the write itself (SDM Vol. 3C §26.1.1: the exit has priority over an operand-dependent #GP; APM
      // Vol. 2 §15.7), resolved by injecting #GP(0) (KVM kvm_set_cr0 / kvm_set_cr4 / set_efer fail ->
      // kvm_complete_insn_gp); VM entry delivers it to the guest's handler. #GP is not intercepted: no second exit.
      expect(r.exits()).toEqual([`${cr === MSR_EFER ? 'MSR_WRITE' : `CR${cr}_WRITE`} -> inject (faulted)`]);
      expect(r.gp).toEqual([0]);
      expect([r.v.cr0, r.v.cr4, r.v.efer]).toEqual([0, 0, 0]);
      expect(r.mmu.log).toEqual([]);
    });

    it(`${name}: not intercepted, the processor's #GP goes to the guest (exiting only by the #GP intercept)`, () => {
      const r = vmWith();
      write(r.v);
      expect(r.exits()).toEqual([]);
      r.backend.interceptGp = true;
      write(r.v);
      // Exit 1: the #GP (exception bitmap bit 13), reflected to the guest (KVM handle_exception_nmi).
      expect(r.exits()).toEqual(['EXCEPTION_13 -> inject']);
      expect(r.gp).toEqual([0, 0]);
      expect([r.v.cr0, r.v.cr4, r.v.efer]).toEqual([0, 0, 0]);
      expect(r.mmu.log).toEqual([]);
    });
  }

  it('a valid write that exits is carried out and reaches the MMU (the same CR0 with PE set)', () => {
    const r = vmWith();
    r.backend.intercepted.add(0);
    r.v.movToCr4(CR4_PAE);
    r.v.movToCr0(CR0_PG | CR0_PE);
    expect(r.exits()).toEqual(['CR0_WRITE -> resume']);
    expect([r.gp, r.v.cr0, r.mmu.log]).toEqual([[], (CR0_PG | CR0_PE) >>> 0, ['cr4 no exit', 'cr0 exited']]);
  });
});
