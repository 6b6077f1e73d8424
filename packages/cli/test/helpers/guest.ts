import { CR0_PE, CR0_PG, CR4_PAE, EFER_LME, PT_PRESENT, PT_WRITABLE, type Vcpu, type Vm } from '@vmexit/core';

export const PML4 = 0x1000;
export const PT = 0x4000;
export const VA = 0x40_0000; // PML4[0] PDPT[0] PD[2] PT[0]
export const DATA = 0x10_0000;

/**
 * Boots vCPU 0 of `vm` into 4-level paging with VA's page table present and VA's pte empty; its #PF handler
 * records the fault and maps VA writable. Boot writes EFER, CR4, CR3, CR0 (4 events that may exit).
 */
export function bootGuest(vm: Vm, faults: [number, number][]): Vcpu {
  const v = vm.vcpus[0]!;
  const m = v.memory;
  const link = (at: number, to: number) => m.write32(at, to | PT_PRESENT | PT_WRITABLE);
  link(PML4, 0x2000);
  link(0x2000, 0x3000);
  link(0x3000 + 2 * 8, PT);
  v.setExceptionHandler(14, (_vcpu, _vector, errorCode, cr2) => {
    faults.push([errorCode, cr2]);
    m.write32(PT, DATA | PT_PRESENT | PT_WRITABLE);
  });
  v.writeEfer(EFER_LME);
  v.movToCr4(CR4_PAE);
  v.movToCr3(PML4);
  v.movToCr0((CR0_PG | CR0_PE) >>> 0);
  return v;
}
