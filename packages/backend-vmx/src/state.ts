import {
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_LA57,
  CR4_PAE,
  CR4_PCIDE,
  CR4_PGE,
  CR4_PKE,
  CR4_PSE,
  CR4_SMAP,
  CR4_SMEP,
  PF_VECTOR,
  type MmuMode,
  type PmlLog,
} from '@vmexit/core';
import {
  CPU_BASED_ACTIVATE_SECONDARY_CONTROLS,
  CPU_BASED_CR3_LOAD_EXITING,
  CPU_BASED_CR3_STORE_EXITING,
  CPU_BASED_INVLPG_EXITING,
  CPU_BASED_USE_MSR_BITMAPS,
  CR3_TARGET_VALUES,
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
 *   exiting with no CR3-target values, INVLPG exiting, the paging bits of CR0 and CR4 host-owned, EPT off;
 * - TDP (EPT): #PF not intercepted ("eb &= ~(1u << PF_VECTOR)" with enable_ept), no CR3 or INVLPG exiting,
 *   CR4.PGE guest-owned, EPT enabled (the pointer is set when the MMU has a root).
 * Both intercept writes to IA32_EFER (KVM keeps EFER out of the pass-through MSR list).
 */
export function createVmcs(mmu: MmuMode): Vmcs {
  const v = new Vmcs();
  const paging4 = CR4_PAE | CR4_PSE | CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_LA57 | CR4_PCIDE;
  v.cpuBasedVmExecControl = CPU_BASED_USE_MSR_BITMAPS | CPU_BASED_ACTIVATE_SECONDARY_CONTROLS;
  v.msrWriteIntercepts.add(MSR_EFER);
  if (mmu === 'shadow') {
    v.exceptionBitmap = 1 << PF_VECTOR;
    v.cpuBasedVmExecControl |= CPU_BASED_INVLPG_EXITING | CPU_BASED_CR3_LOAD_EXITING | CPU_BASED_CR3_STORE_EXITING;
    v.cr0GuestHostMask = (CR0_PG | CR0_WP | CR0_PE) >>> 0;
    v.cr4GuestHostMask = paging4 | CR4_PGE;
  } else {
    v.secondaryVmExecControl = SECONDARY_EXEC_ENABLE_EPT;
    v.cr0GuestHostMask = (CR0_PG | CR0_PE) >>> 0;
    v.cr4GuestHostMask = paging4;
  }
  return v;
}
