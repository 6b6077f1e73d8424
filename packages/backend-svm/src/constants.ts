/**
 * AMD SVM names and numbers (AMD APM Vol. 2 ch. 15 and Appendix C "SVM Intercept Exit Codes"; Linux
 * arch/x86/include/uapi/asm/svm.h).
 */

import { hexU64 } from '@vmexit/core';
import { BackendError } from './errors.js';

/**
 * Exit codes, APM Vol. 2 Appendix C (Table C-1). VMEXIT_CRn_READ = n and VMEXIT_CRn_WRITE = 10h + n; named
 * here for the control registers that exist (CR0, CR2, CR3, CR4, CR8: a MOV to another is #UD, which comes
 * before any intercept, so its code never occurs), as Linux uapi/asm/svm.h does.
 */
export const VMEXIT_CR0_READ = 0x000;
/** Exit code 2h: a MOV from CR2 intercepted (CR read intercept bit 2). */
export const VMEXIT_CR2_READ = 0x002;
/** Exit code 3h: a MOV from CR3 intercepted (CR read intercept bit 3). */
export const VMEXIT_CR3_READ = 0x003;
/** Exit code 4h: a MOV from CR4 intercepted (CR read intercept bit 4). */
export const VMEXIT_CR4_READ = 0x004;
/** Exit code 8h: a MOV from CR8 intercepted (CR read intercept bit 8). */
export const VMEXIT_CR8_READ = 0x008;
/** Exit code 10h: a write of CR0 intercepted (CR write intercept bit 0); EXITINFO1 bit 63 says whether it was a MOV. */
export const VMEXIT_CR0_WRITE = 0x010;
/** Exit code 12h: a MOV to CR2 intercepted. */
export const VMEXIT_CR2_WRITE = 0x012;
/** Exit code 13h: a MOV to CR3 intercepted (CR write intercept bit 3); KVM sets it when it shadows the guest page tables. */
export const VMEXIT_CR3_WRITE = 0x013;
/** Exit code 14h: a write of CR4 intercepted. */
export const VMEXIT_CR4_WRITE = 0x014;
/** Exit code 18h: a MOV to CR8 intercepted. */
export const VMEXIT_CR8_WRITE = 0x018;
/** VMEXIT_EXCP0..VMEXIT_EXCP31 = 40h + vector (one family in Table C-1); #PF is 4Eh. */
export const VMEXIT_EXCP_BASE = 0x040;
/** Exit code 5fh: the last exception exit code, VMEXIT_EXCP31. */
export const VMEXIT_EXCP_LAST = 0x05f;
/** Exit code 60h: a physical INTR arrived with the INTR intercept set. */
export const VMEXIT_INTR = 0x060;
/** Exit code 61h: a physical NMI arrived with the NMI intercept set. */
export const VMEXIT_NMI = 0x061;
/** Exit code 64h: a virtual interrupt became deliverable (the VINTR intercept). */
export const VMEXIT_VINTR = 0x064;
/** Exit code 65h: a write of CR0 that changes bits other than TS and MP (the selective CR0 write intercept, APM Vol. 2 §15.9.2). */
export const VMEXIT_CR0_SEL_WRITE = 0x065;
/** Exit code 72h: the guest executed CPUID with the CPUID intercept set. */
export const VMEXIT_CPUID = 0x072;
/** Exit code 78h: the guest executed HLT with the HLT intercept set. */
export const VMEXIT_HLT = 0x078;
/** Exit code 79h: the guest executed INVLPG with the INVLPG intercept set; EXITINFO1 is the linear address when decode assists are present. */
export const VMEXIT_INVLPG = 0x079;
/** Exit code 7ah: the guest executed INVLPGA. */
export const VMEXIT_INVLPGA = 0x07a;
/** Exit code 7bh: an I/O instruction that the I/O permission map intercepts. */
export const VMEXIT_IOIO = 0x07b;
/** Exit code 7ch: RDMSR or WRMSR of an MSR that the MSR permission map intercepts (EXITINFO1 0 = read, 1 = write). */
export const VMEXIT_MSR = 0x07c;
/** Exit code 7dh: the guest attempted a task switch. */
export const VMEXIT_TASK_SWITCH = 0x07d;
/** Exit code 7fh: the guest reached a shutdown condition (a triple fault). */
export const VMEXIT_SHUTDOWN = 0x07f;
/** Exit code 80h: the guest executed VMRUN (always intercepted by KVM). */
export const VMEXIT_VMRUN = 0x080;
/** Exit code 81h: the guest executed VMMCALL (a hypercall). */
export const VMEXIT_VMMCALL = 0x081;
/**
 * Exit code 400h: a nested page fault: the nested page tables do not allow a guest-physical access (EXITINFO1 is a #PF-style error code, EXITINFO2 the gpa;
 * APM Vol. 2 §15.25.6).
 */
export const VMEXIT_NPF = 0x400;
/** VMEXIT_INVALID (-1): invalid guest state on VMRUN. */
export const VMEXIT_INVALID = -1;

/**
 * The exit code's name as the APM spells it: a switch over the named codes, as backend-vmx's
 * `exitReasonName`. The exception codes are the one family Table C-1 defines by a range (VMEXIT_EXCPx =
 * 40h + x, x = 0..31). An unknown code is an explicit error.
 */
export function exitCodeName(code: number): string {
  switch (code) {
    case VMEXIT_CR0_READ:
    case VMEXIT_CR2_READ:
    case VMEXIT_CR3_READ:
    case VMEXIT_CR4_READ:
    case VMEXIT_CR8_READ:
      return `VMEXIT_CR${code - VMEXIT_CR0_READ}_READ`;
    case VMEXIT_CR0_WRITE:
    case VMEXIT_CR2_WRITE:
    case VMEXIT_CR3_WRITE:
    case VMEXIT_CR4_WRITE:
    case VMEXIT_CR8_WRITE:
      return `VMEXIT_CR${code - VMEXIT_CR0_WRITE}_WRITE`;
    case VMEXIT_INTR:
      return 'VMEXIT_INTR';
    case VMEXIT_NMI:
      return 'VMEXIT_NMI';
    case VMEXIT_VINTR:
      return 'VMEXIT_VINTR';
    case VMEXIT_CR0_SEL_WRITE:
      return 'VMEXIT_CR0_SEL_WRITE';
    case VMEXIT_CPUID:
      return 'VMEXIT_CPUID';
    case VMEXIT_HLT:
      return 'VMEXIT_HLT';
    case VMEXIT_INVLPG:
      return 'VMEXIT_INVLPG';
    case VMEXIT_INVLPGA:
      return 'VMEXIT_INVLPGA';
    case VMEXIT_IOIO:
      return 'VMEXIT_IOIO';
    case VMEXIT_MSR:
      return 'VMEXIT_MSR';
    case VMEXIT_TASK_SWITCH:
      return 'VMEXIT_TASK_SWITCH';
    case VMEXIT_SHUTDOWN:
      return 'VMEXIT_SHUTDOWN';
    case VMEXIT_VMRUN:
      return 'VMEXIT_VMRUN';
    case VMEXIT_VMMCALL:
      return 'VMEXIT_VMMCALL';
    case VMEXIT_NPF:
      return 'VMEXIT_NPF';
    case VMEXIT_INVALID:
      return 'VMEXIT_INVALID';
    default:
      if (Number.isInteger(code) && code >= VMEXIT_EXCP_BASE && code <= VMEXIT_EXCP_LAST) return `VMEXIT_EXCP${code - VMEXIT_EXCP_BASE}`;
      throw new BackendError('E_BACKEND_UNKNOWN_EXIT', `unknown SVM exit code ${hexU64(code)}`);
  }
}

/** Every exit code that `exitCodeName` names, by its name, in the order of the constants above (what `vmexit run --trace-filter` accepts on SVM). */
export const SVM_EXIT_CODE_NAMES: readonly string[] = [
  VMEXIT_CR0_READ,
  VMEXIT_CR2_READ,
  VMEXIT_CR3_READ,
  VMEXIT_CR4_READ,
  VMEXIT_CR8_READ,
  VMEXIT_CR0_WRITE,
  VMEXIT_CR2_WRITE,
  VMEXIT_CR3_WRITE,
  VMEXIT_CR4_WRITE,
  VMEXIT_CR8_WRITE,
  ...Array.from({ length: VMEXIT_EXCP_LAST - VMEXIT_EXCP_BASE + 1 }, (_, x) => VMEXIT_EXCP_BASE + x),
  VMEXIT_INTR,
  VMEXIT_NMI,
  VMEXIT_VINTR,
  VMEXIT_CR0_SEL_WRITE,
  VMEXIT_CPUID,
  VMEXIT_HLT,
  VMEXIT_INVLPG,
  VMEXIT_INVLPGA,
  VMEXIT_IOIO,
  VMEXIT_MSR,
  VMEXIT_TASK_SWITCH,
  VMEXIT_SHUTDOWN,
  VMEXIT_VMRUN,
  VMEXIT_VMMCALL,
  VMEXIT_NPF,
  VMEXIT_INVALID,
].map(exitCodeName);

/**
 * The CR intercept vector (VMCB offset 000h), APM Vol. 2 §15.9 and Appendix B (Table B-1): bit n intercepts
 * reads of CRn, bit 16 + n writes (KVM INTERCEPT_CRn_READ / INTERCEPT_CRn_WRITE, as masks here).
 */
export const INTERCEPT_CR0_READ = 1 << 0;
export const INTERCEPT_CR3_READ = 1 << 3;
export const INTERCEPT_CR4_READ = 1 << 4;
export const INTERCEPT_CR0_WRITE = 1 << 16;
export const INTERCEPT_CR3_WRITE = 1 << 19;
export const INTERCEPT_CR4_WRITE = 1 << 20;

/**
 * Intercept vector 3 (VMCB offset 0Ch), APM Vol. 2 Appendix B (Table B-1): bit 5 the selective CR0 write
 * intercept (KVM INTERCEPT_SELECTIVE_CR0), bit 25 INVLPG, bit 28 MSR_PROT.
 */
export const INTERCEPT_SELECTIVE_CR0 = 1 << 5;
export const INTERCEPT_INVLPG = 1 << 25;
export const INTERCEPT_MSR_PROT = 1 << 28;

/** CR0.MP (bit 1), CR0.TS (bit 3), CR0.ET (bit 4), CR0.NW (bit 29), CR0.CD (bit 30): APM Vol. 2 §3.1.1. */
export const CR0_MP = 1 << 1;
export const CR0_TS = 1 << 3;
export const CR0_ET = 1 << 4;
export const CR0_NW = 1 << 29;
export const CR0_CD = 1 << 30;
/**
 * The CR0 bits a write may change without the selective CR0 write intercept firing (APM Vol. 2 §15.9.2: it
 * intercepts "a write to CR0 that changes any bit other than CR0.TS or CR0.MP"; KVM SVM_CR0_SELECTIVE_MASK),
 * plus ET, which no write can change (APM Vol. 2 §3.1.1: read-only, forced to 1).
 */
export const CR0_SELECTIVE_IGNORED = CR0_TS | CR0_MP | CR0_ET;
/** CR0 after RESET as KVM sets it (x86.c kvm_vcpu_reset: ET | NW | CD), 6000_0010h. */
export const CR0_RESET = (CR0_CD | CR0_NW | CR0_ET) >>> 0;

/** EVENTINJ (VMCB offset 0A8h), APM Vol. 2 §15.20: bits 7:0 vector, 10:8 type (3 = exception), 11 EV, 31 V, 63:32 error code. */
export const SVM_EVTINJ_VEC_MASK = 0xff;
export const SVM_EVTINJ_TYPE_EXEPT = 3 << 8;
export const SVM_EVTINJ_VALID_ERR = 1 << 11;
export const SVM_EVTINJ_VALID = 1 << 31;

/** EXITINFO1 of a decode-assisted MOV-to-CR intercept (APM Vol. 2 §15.33.1): bit 63 = a MOV (not LMSW/CLTS). */
export const SVM_CR_EXITINFO1_MOV = 2 ** 63;

/** EXITINFO1 of VMEXIT_MSR: 0 = RDMSR, 1 = WRMSR (APM Vol. 2 §15.11). */
export const SVM_MSR_EXITINFO1_WRITE = 1;

/** IA32_EFER. */
export const MSR_EFER = 0xc0000080;

/** 2^32 / 2^33: NPF EXITINFO1 bits 32 (final gpa translation) and 33 (guest page-table access), APM §15.25.6. */
export const NPF_EXITINFO1_FINAL = 2 ** 32;
export const NPF_EXITINFO1_PAGE_TABLE = 2 ** 33;
