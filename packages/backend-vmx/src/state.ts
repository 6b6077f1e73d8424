import { CR0_WP, CR4_PGE, PF_VECTOR, PFERR_PRESENT, PFERR_RSVD, type MmuMode, type PmlLog } from '@vmexit/core';
import {
  CPU_BASED_ACTIVATE_SECONDARY_CONTROLS,
  CPU_BASED_CR3_LOAD_EXITING,
  CPU_BASED_CR3_STORE_EXITING,
  CPU_BASED_INVLPG_EXITING,
  CPU_BASED_USE_MSR_BITMAPS,
  CR0_RESET,
  CR0_TS,
  CR3_TARGET_VALUES,
  KVM_POSSIBLE_CR4_GUEST_BITS,
  MSR_EFER,
  SECONDARY_EXEC_ENABLE_EPT,
} from './constants.js';

/**
 * The VMCS fields that decide MMU-related exits, and the exit-information fields the processor writes
 * (SDM Vol. 3C ch. 25 "Virtual-Machine Control Structures"). Field names follow the SDM (and KVM's
 * `enum vmcs_field`). One per vCPU.
 */
export class Vmcs {
  // VM-execution control fields (§25.6)
  /** Exception bitmap: bit n set = exception n exits (§25.6.3). */
  exceptionBitmap = 0;
  /** PFEC_MASK / PFEC_MATCH: the #PF error-code filter (§25.6.3). */
  pageFaultErrorCodeMask = 0;
  pageFaultErrorCodeMatch = 0;
  /** Primary and secondary processor-based controls (§25.6.2). */
  cpuBasedVmExecControl = 0;
  secondaryVmExecControl = 0;
  /** CR0/CR4 guest/host masks and read shadows (§25.6.6). */
  cr0GuestHostMask = 0;
  cr0ReadShadow = 0;
  cr4GuestHostMask = 0;
  cr4ReadShadow = 0;
  /** CR3-target count and values (§25.6.7). */
  cr3TargetCount = 0;
  readonly cr3TargetValues = new Float64Array(CR3_TARGET_VALUES);
  /** MSRs whose WRMSR exits: the write bitmaps of the MSR bitmaps (§25.6.9), as a set of MSR numbers. */
  readonly msrWriteIntercepts = new Set<number>();
  /** The EPT pointer (§25.6.11). */
  eptPointer = 0;
  /**
   * The PML address (§25.6.18) and the guest PML index (§25.4.2), as the processor's log (core's `PmlLog`: its
   * entries and index) when "enable PML" is on, else null.
   */
  pml: PmlLog | null = null;

  // VM-entry control fields (§25.8.3)
  vmEntryIntrInfoField = 0;
  vmEntryExceptionErrorCode = 0;

  // VM-exit information fields (§25.9), written on each VM exit
  vmExitReason = 0;
  exitQualification = 0;
  guestLinearAddress = 0;
  guestPhysicalAddress = 0;
  vmExitIntrInfo = 0;
  vmExitIntrErrorCode = 0;
}

/**
 * A VMCS set up as KVM sets it up (arch/x86/kvm/vmx/vmx.c `init_vmcs`, `vmx_update_exception_bitmap`,
 * `exec_controls_set`):
 * - shadow paging: #PF intercepted with PFEC_MASK = PFEC_MATCH = 0 (every #PF exits), CR3-load and CR3-store
 *   exiting with no CR3-target values, INVLPG exiting, EPT off;
 * - TDP (EPT): #PF not intercepted, no CR3 or INVLPG exiting, EPT enabled (the pointer is set when the MMU has
 *   a root). Except when the guest is told a smaller MAXPHYADDR than the processor has (`cpu`): then KVM
 *   intercepts #PF (vmx_need_pf_intercept, allow_smaller_maxphyaddr, on by default on VMX) with PFEC_MASK = P|RSVD
 *   and PFEC_MATCH = P (vmx_update_exception_bitmap: "we only care about present, non-reserved faults"), so that
 *   it can add the RSVD the processor, walking with its own MAXPHYADDR, did not see (SDM Vol. 3C §25.6.3 rule).
 * The CR0/CR4 guest/host masks are the complement of what the guest owns (init_vmcs: CR0_GUEST_HOST_MASK =
 * ~cr0_guest_owned_bits, set_cr4_guest_host_mask): of CR0 only TS, and WP under EPT (vmx.h
 * vmx_l1_guest_owned_cr0_bits, KVM_POSSIBLE_CR0_GUEST_BITS); of CR4 KVM_POSSIBLE_CR4_GUEST_BITS, less PGE
 * without EPT (X86_CR4_TLBFLUSH_BITS / X86_CR4_PDPTR_BITS). Every other bit (PG, PE, CD, NW, AM, NE, MP, ...,
 * PAE, PSE, SMEP, OSXSAVE, ...) is host-owned, so a MOV that changes it exits (SDM Vol. 3C §26.1.3). The read
 * shadows start at the RESET values KVM writes (kvm_vcpu_reset -> vmx_set_cr0(6000_0010h), vmx_set_cr4(0)).
 * Both intercept writes to IA32_EFER (KVM keeps EFER out of the pass-through MSR list).
 */
export function createVmcs(mmu: MmuMode, cpu?: { readonly maxPhyAddr: number; readonly hostMaxPhyAddr: number }): Vmcs {
  const v = new Vmcs();
  v.cr0ReadShadow = CR0_RESET;
  v.cr4ReadShadow = 0;
  v.cpuBasedVmExecControl = CPU_BASED_USE_MSR_BITMAPS | CPU_BASED_ACTIVATE_SECONDARY_CONTROLS;
  v.msrWriteIntercepts.add(MSR_EFER);
  if (mmu === 'shadow') {
    v.exceptionBitmap = 1 << PF_VECTOR;
    v.cpuBasedVmExecControl |= CPU_BASED_INVLPG_EXITING | CPU_BASED_CR3_LOAD_EXITING | CPU_BASED_CR3_STORE_EXITING;
    v.cr0GuestHostMask = ~CR0_TS >>> 0;
    v.cr4GuestHostMask = ~(KVM_POSSIBLE_CR4_GUEST_BITS & ~CR4_PGE) >>> 0;
  } else {
    v.secondaryVmExecControl = SECONDARY_EXEC_ENABLE_EPT;
    v.cr0GuestHostMask = ~(CR0_TS | CR0_WP) >>> 0;
    v.cr4GuestHostMask = ~KVM_POSSIBLE_CR4_GUEST_BITS >>> 0;
    if (cpu !== undefined && cpu.maxPhyAddr < cpu.hostMaxPhyAddr) {
      v.exceptionBitmap |= 1 << PF_VECTOR;
      v.pageFaultErrorCodeMask = PFERR_PRESENT | PFERR_RSVD;
      v.pageFaultErrorCodeMatch = PFERR_PRESENT;
    }
  }
  return v;
}
