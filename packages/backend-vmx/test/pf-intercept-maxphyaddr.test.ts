import { CR0_PE, CR0_PG, CR0_WP, CR4_PAE, EFER_LME, GuestAbort, PF_VECTOR, PFERR_PRESENT, PFERR_RSVD, PFERR_WRITE, type Vm } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { VmxBackend } from '../src/backend.js';
import { createVmcs } from '../src/state.js';
import { exitsByReason, vmxVm } from './vm-harness.js';

const vmx = new VmxBackend();

describe('VMX with EPT and a guest MAXPHYADDR below the host one (KVM vmx_need_pf_intercept, allow_smaller_maxphyaddr)', () => {
  it('intercepts #PF with PFEC_MASK = P|RSVD and PFEC_MATCH = P: only present, non-reserved faults exit', () => {
    const v = createVmcs('tdp', { maxPhyAddr: 36, hostMaxPhyAddr: 46 });
    expect([v.exceptionBitmap & (1 << PF_VECTOR), v.pageFaultErrorCodeMask, v.pageFaultErrorCodeMatch]).toEqual([1 << PF_VECTOR, 9, 1]);
    expect(vmx.exceptionExits(v, PF_VECTOR, PFERR_PRESENT | PFERR_WRITE)).toBe(true);
    expect(vmx.exceptionExits(v, PF_VECTOR, PFERR_WRITE)).toBe(false); // not present: to the guest
    expect(vmx.exceptionExits(v, PF_VECTOR, PFERR_PRESENT | PFERR_RSVD)).toBe(false); // the processor saw the reserved bit
    // The same MAXPHYADDR (vmx_need_pf_intercept false), or no widths given: #PF is not intercepted under EPT.
    for (const t of [createVmcs('tdp', { maxPhyAddr: 46, hostMaxPhyAddr: 46 }), createVmcs('tdp')]) {
      expect([t.exceptionBitmap, t.pageFaultErrorCodeMask, t.pageFaultErrorCodeMatch]).toEqual([0, 0, 0]);
    }
    // Shadow paging intercepts every #PF whatever the widths.
    const s = createVmcs('shadow', { maxPhyAddr: 36, hostMaxPhyAddr: 46 });
    expect([s.exceptionBitmap, s.pageFaultErrorCodeMask, s.pageFaultErrorCodeMatch]).toEqual([1 << PF_VECTOR, 0, 0]);
  });

  /** A 4-level guest (PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000) whose #PF handler records and abandons. */
  async function guest(maxPhyAddr: number): Promise<{ vm: Vm; write(va: number): void; read(va: number): void; codes: number[] }> {
    const vm = await vmxVm('tdp', { maxPhyAddr, hostMaxPhyAddr: 46 });
    const mem = vm.machine.memory;
    const v = vm.vcpus[0]!;
    mem.write32(0x1000, 0x2003);
    mem.write32(0x2000, 0x3003);
    mem.write32(0x3000, 0x4003);
    // va 0x1000 -> gpa 2^40 + 0x5000 and va 0x2000 -> gpa 0x5000, both present, read-only, supervisor.
    mem.write32(0x4000 + 8, 0x5001);
    mem.write32(0x4000 + 12, 2 ** 8);
    mem.write32(0x4000 + 16, 0x5001);
    const codes: number[] = [];
    v.setExceptionHandler(PF_VECTOR, (_v, _n, errorCode) => {
      codes.push(errorCode);
      throw new GuestAbort('abandon the access');
    });
    v.writeEfer(EFER_LME);
    v.movToCr4(CR4_PAE);
    v.movToCr3(0x1000);
    v.movToCr0((CR0_PG | CR0_WP | CR0_PE) >>> 0);
    const run = (f: () => void) => {
      try {
        f();
      } catch (e) {
        if (!(e instanceof GuestAbort)) throw e;
      }
    };
    return { vm, codes, write: (va) => run(() => v.write(va, 4, 1)), read: (va) => run(() => v.read(va, 4)) };
  }

  it('guest MAXPHYADDR 36, host 46: a protection fault exits and is injected with RSVD where the guest walk finds a reserved bit', async () => {
    const g = await guest(36);
    g.write(0x1000); // #PF P|W from the processor (bit 40 is legal to it): exit 1, injected as P|W|RSVD (0xb)
    g.write(0x2000); // #PF P|W: exit 2; the guest's own walk finds no reserved bit: injected as P|W (0x3)
    g.read(0x3000); // #PF 0 (not present): PFEC & P|RSVD != P, not intercepted, straight to the guest
    expect(g.codes).toEqual([0xb, 0x3, 0x0]);
    // Boot: WRMSR EFER, CR4, CR0 (CR3 is not intercepted under EPT); then the two present faults. kvm_inject_page_fault
    // counts pf_guest for the two injections; the not-present fault never reached KVM.
    expect(exitsByReason(g.vm)).toEqual({ MSR_WRITE: 1, CR_ACCESS: 2, EXCEPTION_NMI: 2 });
    expect(g.vm.counters().total['pf_guest']).toBe(2);
  });

  it('guest and host MAXPHYADDR 46: no #PF intercept, every fault goes straight to the guest as the processor found it', async () => {
    const g = await guest(46);
    g.write(0x1000);
    g.write(0x2000);
    g.read(0x3000);
    expect(g.codes).toEqual([0x3, 0x3, 0x0]);
    expect(exitsByReason(g.vm)).toEqual({ MSR_WRITE: 1, CR_ACCESS: 2 });
  });
});
