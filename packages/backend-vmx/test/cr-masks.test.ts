import { CR0_PE, CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PCIDE, CR4_PGE, CR4_PKE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LME, type Vm } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { VmxBackend } from '../src/backend.js';
import { CR0_CD, CR0_ET, CR0_NW, CR0_TS } from '../src/constants.js';
import { createVmcs } from '../src/state.js';
import { vmxVm } from './vm-harness.js';

const vmx = new VmxBackend();
/** CR0.MP (bit 1), CR0.NE (bit 5), CR0.AM (bit 18); CR4.OSFXSR (bit 9), CR4.OSXSAVE (bit 18). */
const CR0_MP = 1 << 1;
const CR0_NE = 1 << 5;
const CR0_AM = 1 << 18;
const CR4_OSFXSR = 1 << 9;
const CR4_OSXSAVE = 1 << 18;
/** What a guest OS runs with: PG, WP, ET, PE (ET reads as 1, so a read-modify-write keeps it). */
const GUEST_CR0 = (CR0_PG | CR0_WP | CR0_ET | CR0_PE) >>> 0;

function crExits(vm: Vm): number {
  return vm.counters().total['exits.CR_ACCESS'] ?? 0;
}

describe('VMX CR0/CR4 guest/host masks and read shadows as KVM programs them (vmx.c init_vmcs, set_cr4_guest_host_mask)', () => {
  it('owns every CR0 bit but TS (and WP under EPT), every CR4 bit but KVM_POSSIBLE_CR4_GUEST_BITS (less PGE without EPT)', () => {
    const s = createVmcs('shadow');
    const t = createVmcs('tdp');
    expect(s.cr0GuestHostMask).toBe(0xfffffff7); // ~X86_CR0_TS: vmx_l1_guest_owned_cr0_bits without enable_ept
    expect(t.cr0GuestHostMask).toBe(0xfffefff7); // ~(TS | WP): WP is guest-owned with EPT
    // Guest-owned: PVI 1, TSD 2, DE 3, PGE 7 (EPT only), PCE 8, OSFXSR 9, OSXMMEXCPT 10, FSGSBASE 16.
    expect(t.cr4GuestHostMask).toBe(~0x1078e >>> 0);
    expect(s.cr4GuestHostMask).toBe(~0x1070e >>> 0);
    for (const v of [s, t]) {
      for (const bit of [CR4_PAE, CR4_PSE, CR4_SMEP, CR4_SMAP, CR4_PKE, CR4_LA57, CR4_PCIDE, CR4_OSXSAVE]) expect(v.cr4GuestHostMask & bit).toBe(bit);
      for (const bit of [CR0_PG, CR0_PE, CR0_CD, CR0_NW, CR0_AM, CR0_NE, CR0_MP]) expect(v.cr0GuestHostMask & bit).not.toBe(0);
      // RESET (kvm_vcpu_reset): vmx_set_cr0(ET | NW | CD) writes the CR0 read shadow, vmx_set_cr4(0) the CR4 one.
      expect([v.cr0ReadShadow, v.cr4ReadShadow]).toEqual([0x60000010, 0]);
    }
  });

  it('exits on MOV to CR0 changing MP, AM, NE or CD (host-owned), not TS; the shadow takes ET as kvm_set_cr0 forces it', () => {
    const v = createVmcs('tdp');
    expect(vmx.crWriteExits(v, 0, GUEST_CR0)).toBe(true);
    vmx.crWriteHandled(v, 0, (CR0_PG | CR0_WP | CR0_PE) >>> 0); // written without ET: KVM's shadow has it
    expect(v.cr0ReadShadow).toBe(GUEST_CR0);
    expect(vmx.crWriteExits(v, 0, GUEST_CR0 | CR0_TS)).toBe(false);
    expect(vmx.crWriteExits(v, 0, GUEST_CR0 & ~CR0_WP)).toBe(false); // WP is guest-owned under EPT
    for (const bit of [CR0_MP, CR0_AM, CR0_NE, CR0_CD]) expect(vmx.crWriteExits(v, 0, GUEST_CR0 | bit)).toBe(true);
  });

  it('exits on MOV to CR0/CR4 of an operand with a bit of 63:32 set: the masks own bits 63:32 (SDM Vol. 3C §26.1.3)', () => {
    // KVM's guest/host masks are natural-width complements of the guest-owned bits, so bits 63:32 are host-owned
    // and the read shadows have them 0: a 64-bit operand with bit 32 set differs in a host-owned bit and exits,
    // after which KVM finds it reserved and injects #GP. Compared in 32 bits, bit 32 was lost and nothing exited.
    const v = createVmcs('tdp');
    vmx.crWriteHandled(v, 0, GUEST_CR0);
    expect(vmx.crWriteExits(v, 0, GUEST_CR0)).toBe(false);
    expect(vmx.crWriteExits(v, 0, GUEST_CR0 + 2 ** 32)).toBe(true);
    expect(vmx.crWriteExits(v, 4, 2 ** 32)).toBe(true);
    expect(vmx.crWriteExits(v, 4, CR4_PGE)).toBe(false); // guest-owned under EPT, bits 63:32 clear
  });

  for (const mmu of ['shadow', 'tdp'] as const) {
    it(`${mmu}: a guest that boots and then rewrites CR0 and CR4 takes exactly the CR_ACCESS exits KVM's VMCS gives`, async () => {
      const vm = await vmxVm(mmu);
      const v = vm.vcpus[0]!;
      v.writeEfer(EFER_LME);
      v.movToCr4(CR4_PAE | CR4_PGE | CR4_OSFXSR);
      v.movToCr3(0x10000);
      v.movToCr0(GUEST_CR0);
      // Boot: CR4 (PAE differs from the read shadow 0), CR3 (CR3-load exiting with shadow paging only), CR0 (PG
      // differs from the RESET shadow): 3 CR_ACCESS exits under shadow paging, 2 under EPT.
      const boot = mmu === 'shadow' ? 3 : 2;
      expect(crExits(vm)).toBe(boot);
      v.movToCr0(GUEST_CR0 | CR0_TS); // TS is guest-owned: no exit
      v.movToCr0(GUEST_CR0 | CR0_TS | CR0_MP); // MP is host-owned: exit 1
      v.movToCr0(GUEST_CR0 | CR0_AM); // TS back (guest-owned), MP back and AM set (host-owned): exit 2
      v.movToCr0((GUEST_CR0 | CR0_AM) & ~CR0_WP); // WP: host-owned with shadow paging (exit 3), guest-owned under EPT
      v.movToCr4(CR4_PAE | CR4_PGE); // OSFXSR is guest-owned: no exit
      v.movToCr4(CR4_PAE); // PGE: host-owned with shadow paging (exit 4), guest-owned under EPT
      v.movToCr4(CR4_PAE | CR4_OSXSAVE); // OSXSAVE is host-owned: exit 4 (EPT) / 5 (shadow)
      expect(crExits(vm)).toBe(boot + (mmu === 'shadow' ? 5 : 3));
      // A reserved CR0 bit (6): the load ignores it (SDM Vol. 3A §2.5), but the exit is decided on the source operand
      // (Vol. 3C §26.1.3), and the mask owns bit 6: one exit, and CR0 reads back without it. Decided on the loaded
      // value, equal to the read shadow, it did not exit.
      const before = crExits(vm);
      const cr0 = v.cr0;
      v.movToCr0(cr0 | 0x40);
      expect([crExits(vm) - before, v.cr0]).toEqual([1, cr0]);
    });
  }
});
