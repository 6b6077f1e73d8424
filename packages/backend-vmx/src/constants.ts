/**
 * Intel VMX names and numbers (Intel SDM Vol. 3C; Linux arch/x86/include/uapi/asm/vmx.h and asm/vmx.h).
 */

import { BackendError } from './errors.js';

/** Basic exit reasons, SDM Vol. 3C Appendix C (Table C-1). */
export const EXIT_REASON_EXCEPTION_NMI = 0;
/** Basic exit reason 1: an external interrupt arrived while "external-interrupt exiting" was set. */
export const EXIT_REASON_EXTERNAL_INTERRUPT = 1;
/** Basic exit reason 2: the guest triple-faulted (a fault while delivering a double fault). */
export const EXIT_REASON_TRIPLE_FAULT = 2;
/** Basic exit reason 7: the guest became able to take an interrupt ("interrupt-window exiting"). */
export const EXIT_REASON_INTERRUPT_WINDOW = 7;
/** Basic exit reason 8: the guest became able to take an NMI ("NMI-window exiting"). */
export const EXIT_REASON_NMI_WINDOW = 8;
/** Basic exit reason 9: the guest attempted a task switch. */
export const EXIT_REASON_TASK_SWITCH = 9;
/** Basic exit reason 10: the guest executed CPUID (always exits). */
export const EXIT_REASON_CPUID = 10;
/** Basic exit reason 12: the guest executed HLT with "HLT exiting" set. */
export const EXIT_REASON_HLT = 12;
/** Basic exit reason 13: the guest executed INVD (always exits). */
export const EXIT_REASON_INVD = 13;
/** Basic exit reason 14: the guest executed INVLPG with "INVLPG exiting" set; the qualification is the linear address. */
export const EXIT_REASON_INVLPG = 14;
/** Basic exit reason 18: the guest executed VMCALL (a hypercall). */
export const EXIT_REASON_VMCALL = 18;
/**
 * Basic exit reason 28: a MOV to or from a control register that the CR0/CR4 masks, CR3-target values or CR3-load/store exiting make exit (qualification:
 * SDM Vol. 3C Table 28-3).
 */
export const EXIT_REASON_CR_ACCESS = 28;
/** Basic exit reason 29: a MOV to or from a debug register with "MOV-DR exiting" set. */
export const EXIT_REASON_DR_ACCESS = 29;
/** Basic exit reason 30: an I/O instruction that the I/O bitmaps or "unconditional I/O exiting" make exit. */
export const EXIT_REASON_IO_INSTRUCTION = 30;
/** Basic exit reason 31: RDMSR of an MSR that the MSR bitmap makes exit. */
export const EXIT_REASON_MSR_READ = 31;
/** Basic exit reason 32: WRMSR of an MSR that the MSR bitmap makes exit. */
export const EXIT_REASON_MSR_WRITE = 32;
/** Basic exit reason 33: VM entry failed its guest-state checks (SDM Vol. 3C §27.3.1). */
export const EXIT_REASON_INVALID_STATE = 33;
/** Basic exit reason 44: an access to the APIC-access page with "virtualize APIC accesses" set. */
export const EXIT_REASON_APIC_ACCESS = 44;
/** Basic exit reason 48: a guest-physical access that the EPT entries do not allow (qualification: SDM Vol. 3C Table 28-7). */
export const EXIT_REASON_EPT_VIOLATION = 48;
/** Basic exit reason 49: an EPT entry with an invalid combination of bits (SDM Vol. 3C §29.3.3.1). */
export const EXIT_REASON_EPT_MISCONFIG = 49;
/** Basic exit reason 50: the guest executed INVEPT. */
export const EXIT_REASON_INVEPT = 50;
/** Basic exit reason 53: the guest executed INVVPID. */
export const EXIT_REASON_INVVPID = 53;
/** Basic exit reason 55: the guest executed XSETBV (always exits). */
export const EXIT_REASON_XSETBV = 55;
/** Basic exit reason 58: the guest executed INVPCID with "INVLPG exiting" and "enable INVPCID" set. */
export const EXIT_REASON_INVPCID = 58;
/** Basic exit reason 62: the page-modification log filled up (SDM Vol. 3C §29.3.6). */
export const EXIT_REASON_PML_FULL = 62;

/** The exit reason's name as the SDM / vmx.h spells it. An unknown reason is an explicit error. */
export function exitReasonName(reason: number): string {
  switch (reason) {
    case EXIT_REASON_EXCEPTION_NMI:
      return 'EXCEPTION_NMI';
    case EXIT_REASON_EXTERNAL_INTERRUPT:
      return 'EXTERNAL_INTERRUPT';
    case EXIT_REASON_TRIPLE_FAULT:
      return 'TRIPLE_FAULT';
    case EXIT_REASON_INTERRUPT_WINDOW:
      return 'INTERRUPT_WINDOW';
    case EXIT_REASON_NMI_WINDOW:
      return 'NMI_WINDOW';
    case EXIT_REASON_TASK_SWITCH:
      return 'TASK_SWITCH';
    case EXIT_REASON_CPUID:
      return 'CPUID';
    case EXIT_REASON_HLT:
      return 'HLT';
    case EXIT_REASON_INVD:
      return 'INVD';
    case EXIT_REASON_INVLPG:
      return 'INVLPG';
    case EXIT_REASON_VMCALL:
      return 'VMCALL';
    case EXIT_REASON_CR_ACCESS:
      return 'CR_ACCESS';
    case EXIT_REASON_DR_ACCESS:
      return 'DR_ACCESS';
    case EXIT_REASON_IO_INSTRUCTION:
      return 'IO_INSTRUCTION';
    case EXIT_REASON_MSR_READ:
      return 'MSR_READ';
    case EXIT_REASON_MSR_WRITE:
      return 'MSR_WRITE';
    case EXIT_REASON_INVALID_STATE:
      return 'INVALID_STATE';
    case EXIT_REASON_APIC_ACCESS:
      return 'APIC_ACCESS';
    case EXIT_REASON_EPT_VIOLATION:
      return 'EPT_VIOLATION';
    case EXIT_REASON_EPT_MISCONFIG:
      return 'EPT_MISCONFIG';
    case EXIT_REASON_INVEPT:
      return 'INVEPT';
    case EXIT_REASON_INVVPID:
      return 'INVVPID';
    case EXIT_REASON_XSETBV:
      return 'XSETBV';
    case EXIT_REASON_INVPCID:
      return 'INVPCID';
    case EXIT_REASON_PML_FULL:
      return 'PML_FULL';
    default:
      throw new BackendError('E_BACKEND_UNKNOWN_EXIT', `unknown VMX exit reason ${reason}`);
  }
}

/** Every exit reason that `exitReasonName` names, by its name, in the order of the constants above (what `vmexit run --trace-filter` accepts on VMX). */
export const VMX_EXIT_REASON_NAMES: readonly string[] = [
  EXIT_REASON_EXCEPTION_NMI,
  EXIT_REASON_EXTERNAL_INTERRUPT,
  EXIT_REASON_TRIPLE_FAULT,
  EXIT_REASON_INTERRUPT_WINDOW,
  EXIT_REASON_NMI_WINDOW,
  EXIT_REASON_TASK_SWITCH,
  EXIT_REASON_CPUID,
  EXIT_REASON_HLT,
  EXIT_REASON_INVD,
  EXIT_REASON_INVLPG,
  EXIT_REASON_VMCALL,
  EXIT_REASON_CR_ACCESS,
  EXIT_REASON_DR_ACCESS,
  EXIT_REASON_IO_INSTRUCTION,
  EXIT_REASON_MSR_READ,
  EXIT_REASON_MSR_WRITE,
  EXIT_REASON_INVALID_STATE,
  EXIT_REASON_APIC_ACCESS,
  EXIT_REASON_EPT_VIOLATION,
  EXIT_REASON_EPT_MISCONFIG,
  EXIT_REASON_INVEPT,
  EXIT_REASON_INVVPID,
  EXIT_REASON_XSETBV,
  EXIT_REASON_INVPCID,
  EXIT_REASON_PML_FULL,
].map(exitReasonName);

/** Primary processor-based VM-execution controls, SDM Vol. 3C §25.6.2 (Table 25-6). */
export const CPU_BASED_INVLPG_EXITING = 1 << 9;
export const CPU_BASED_CR3_LOAD_EXITING = 1 << 15;
export const CPU_BASED_CR3_STORE_EXITING = 1 << 16;
export const CPU_BASED_USE_MSR_BITMAPS = 1 << 28;
export const CPU_BASED_ACTIVATE_SECONDARY_CONTROLS = 1 << 31;

/** Secondary processor-based VM-execution controls, SDM Vol. 3C §25.6.2 (Table 25-7). */
export const SECONDARY_EXEC_ENABLE_EPT = 1 << 1;
/** "Enable PML" (bit 17): page-modification logging, §29.3.6. */
export const SECONDARY_EXEC_ENABLE_PML = 1 << 17;

/** Number of CR3-target values a processor supports (SDM Vol. 3C §25.6.7; IA32_VMX_MISC[24:16], 4 on all Intel CPUs so far). */
export const CR3_TARGET_VALUES = 4;

/**
 * Interruption-information fields (VM-exit interruption information, VM-entry interruption information),
 * SDM Vol. 3C §25.8.3 (Table 25-17) and §28.2.2 (Table 28-19): bits 7:0 vector, 10:8 type, 11 error code
 * valid / deliver error code, 31 valid.
 */
export const INTR_INFO_VECTOR_MASK = 0xff;
export const INTR_TYPE_HARD_EXCEPTION = 3 << 8;
export const INTR_INFO_DELIVER_CODE = 1 << 11;
export const INTR_INFO_VALID = 1 << 31;

/** Exit qualification for control-register accesses, SDM Vol. 3C §28.2.1 (Table 28-3). */
export const CR_ACCESS_TYPE_MOV_TO_CR = 0 << 4;
export const CR_ACCESS_TYPE_MOV_FROM_CR = 1 << 4;

/** Exit qualification for EPT violations, SDM Vol. 3C §28.2.1 (Table 28-7). */
export const EPT_VIOLATION_ACC_READ = 1 << 0;
export const EPT_VIOLATION_ACC_WRITE = 1 << 1;
export const EPT_VIOLATION_ACC_INSTR = 1 << 2;
/** Bits 5:3: the AND of bits 0 (R), 1 (W), 2 (X) of the EPT entries used to translate the gpa (0 when one was not present). */
export const EPT_VIOLATION_READABLE = 1 << 3;
export const EPT_VIOLATION_WRITABLE = 1 << 4;
export const EPT_VIOLATION_EXECUTABLE = 1 << 5;
export const EPT_VIOLATION_RWX_SHIFT = 3;
export const EPT_VIOLATION_RWX_MASK = 7 << 3;
/** Bit 7: the guest linear-address field is valid (every EPT violation but a PDPTE load by MOV to CR). */
export const EPT_VIOLATION_GVA_IS_VALID = 1 << 7;
/** Bit 8 (with bit 7): the access was to the translation of the linear address; clear for a guest paging-structure access. */
export const EPT_VIOLATION_GVA_TRANSLATED = 1 << 8;
/**
 * Bits 11:9 (with bits 7 and 8, where the processor reports advanced VM-exit information for EPT violations,
 * IA32_VMX_EPT_VPID_CAP bit 22): the linear address is a user-mode address, is writable, is execute-disable.
 */
export const EPT_VIOLATION_LINEAR_USER = 1 << 9;
export const EPT_VIOLATION_LINEAR_WRITABLE = 1 << 10;
export const EPT_VIOLATION_LINEAR_XD = 1 << 11;

/** EPT pointer, SDM Vol. 3C §25.6.11 (Table 25-9): bits 2:0 memory type (6 = WB), 5:3 walk length - 1, 6 A/D. */
export const VMX_EPTP_MT_WB = 6;
export const VMX_EPTP_PWL_4 = 3 << 3;
export const VMX_EPTP_PWL_5 = 4 << 3;
export const VMX_EPTP_AD_ENABLE = 1 << 6;

/** CR0.TS (bit 3), CR0.ET (bit 4), CR0.NW (bit 29), CR0.CD (bit 30): SDM Vol. 3A §2.5. */
export const CR0_TS = 1 << 3;
export const CR0_ET = 1 << 4;
export const CR0_NW = 1 << 29;
export const CR0_CD = 1 << 30;
/** CR0 after RESET as KVM sets it (x86.c kvm_vcpu_reset: ET | NW | CD, 6000_0010h), and so the CR0 read shadow. */
export const CR0_RESET = (CR0_CD | CR0_NW | CR0_ET) >>> 0;
/**
 * The CR4 bits KVM may let the guest own (kvm_cache_regs.h KVM_POSSIBLE_CR4_GUEST_BITS: PVI 1, TSD 2, DE 3,
 * PGE 7, PCE 8, OSFXSR 9, OSXMMEXCPT 10, FSGSBASE 16); every other bit is host-owned.
 */
export const KVM_POSSIBLE_CR4_GUEST_BITS = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 16);

/** IA32_EFER, the one MSR whose writes the simulator models. */
export const MSR_EFER = 0xc0000080;
