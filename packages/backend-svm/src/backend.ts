import * as core from '@vmexit/core';
import {
  type Backend,
  type HardwareExit,
  type HardwareExitBuffer,
  type MmuMode,
  type NestedRootOptions,
  type PhysicalMemory,
  type SecondStage,
  type WalkResult,
  NptStage,
} from '@vmexit/core';
import * as svmConstants from './constants.js';
import { createVmcb, hostCr0, Vmcb } from './state.js';
import { BackendError } from './errors.js';

// Module-local copies of the imported constants and helpers the exit path uses. V8 folds a module's own constants into
// its compiled code, but reads an imported binding through its module cell, with a check, on every use (core
// DESIGN.md, "Speed").
const {
  CR0_ET,
  CR0_SELECTIVE_IGNORED,
  exitCodeName,
  INTERCEPT_CR0_READ,
  INTERCEPT_CR0_WRITE,
  INTERCEPT_CR3_WRITE,
  INTERCEPT_CR4_WRITE,
  INTERCEPT_INVLPG,
  INTERCEPT_MSR_PROT,
  INTERCEPT_SELECTIVE_CR0,
  MSR_EFER,
  NPF_EXITINFO1_FINAL,
  NPF_EXITINFO1_PAGE_TABLE,
  SVM_CR_EXITINFO1_MOV,
  SVM_EVTINJ_TYPE_EXEPT,
  SVM_EVTINJ_VALID,
  SVM_EVTINJ_VALID_ERR,
  SVM_EVTINJ_VEC_MASK,
  SVM_MSR_EXITINFO1_WRITE,
  VMEXIT_CR0_SEL_WRITE,
  VMEXIT_CR0_WRITE,
  VMEXIT_EXCP_BASE,
  VMEXIT_INVLPG,
  VMEXIT_MSR,
  VMEXIT_NPF,
} = svmConstants;
const { PF_VECTOR, PFERR_PRESENT, PFERR_RSVD } = core;

/** Exceptions that push an error code (APM Vol. 2 §8.2): #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP (21), #SX (30). */
function hasErrorCode(vector: number): boolean {
  return vector === 8 || (vector >= 10 && vector <= 14) || vector === 17 || vector === 21 || vector === 30;
}

/**
 * AMD SVM: the intercept rules of APM Vol. 2 ch. 15 over a `Vmcb`, and the exit codes and EXITINFO of
 * Appendix C. It does not provide `PageFaultFilter`: the exception intercept of vector 14 is one bit, with no
 * error-code filtering (APM §15.12), which is why KVM's bypass_guest_pf was VMX-only.
 */
export class SvmBackend implements Backend<Vmcb> {
  readonly name = 'svm' as const;

  createState(_vcpuId: number, mmu: MmuMode): Vmcb {
    return createVmcb(mmu);
  }

  /** APM Vol. 2 §15.12: an exception exits iff its bit in the exception intercept vector is set, whatever its error code. */
  exceptionExits(v: Vmcb, vector: number, _errorCode: number): boolean {
    return ((v.interceptExceptions >>> vector) & 1) === 1;
  }

  /**
   * APM Vol. 2 §15.9 (CR intercepts: a write of CRn exits iff bit 16+n of the CR intercept vector is set;
   * §15.9.2: with the CR0 write intercept clear, the selective CR0 write intercept makes a write of CR0 exit iff
   * it changes a bit other than TS and MP, compared here with the VMCB's CR0) and §15.11 (MSR intercepts: WRMSR
   * exits iff MSR_PROT is set and the MSR's write bit in the MSRPM is set).
   */
  crWriteExits(v: Vmcb, cr: number, value: number): boolean {
    switch (cr) {
      case 0:
        if ((v.interceptCr & INTERCEPT_CR0_WRITE) !== 0) return true;
        if ((v.interceptMisc1 & INTERCEPT_SELECTIVE_CR0) === 0) return false;
        // An operand with a bit of 63:32 set changes a bit other than TS and MP (the VMCB's CR0 has them 0).
        if (!(value >= -(2 ** 31) && value < 2 ** 32)) return true;
        return ((value ^ v.cr0) & ~CR0_SELECTIVE_IGNORED) !== 0;
      case 3:
        return (v.interceptCr & INTERCEPT_CR3_WRITE) !== 0;
      case 4:
        return (v.interceptCr & INTERCEPT_CR4_WRITE) !== 0;
      case MSR_EFER:
        return (v.interceptMisc1 & INTERCEPT_MSR_PROT) !== 0 && v.msrpmWrite.has(MSR_EFER);
      default:
        throw new BackendError('E_BACKEND_NO_RULE', `SVM: no write-intercept rule for control register ${cr}`);
    }
  }

  /** §15.9 / Appendix B: INVLPG exits iff intercept vector 3 bit 25 is set. */
  invlpgExits(v: Vmcb): boolean {
    return (v.interceptMisc1 & INTERCEPT_INVLPG) !== 0;
  }

  /**
   * §15.12: EXITCODE = VMEXIT_EXCP_BASE + vector (#PF = 0x4E); for a #PF, EXITINFO1 = the error code and
   * EXITINFO2 = the faulting linear address (CR2 is not written; KVM `pf_interception` reads exit_info_1/2).
   * Other exceptions with an error code carry it in EXITINFO1.
   */
  exceptionExit(v: Vmcb, vector: number, errorCode: number, address: number): HardwareExit {
    v.exitCode = VMEXIT_EXCP_BASE + vector;
    v.exitInfo1 = hasErrorCode(vector) ? errorCode >>> 0 : 0;
    v.exitInfo2 = vector === PF_VECTOR ? address : 0;
    return this.describe(v);
  }

  /** `exceptionExit` into a description the caller reuses (no allocation). */
  exceptionExitInto(v: Vmcb, vector: number, errorCode: number, address: number, out: HardwareExitBuffer): void {
    v.exitCode = VMEXIT_EXCP_BASE + vector;
    v.exitInfo1 = hasErrorCode(vector) ? errorCode >>> 0 : 0;
    v.exitInfo2 = vector === PF_VECTOR ? address : 0;
    // The strings are stored only when they change: a store of a heap object into an object calls V8's write
    // barrier while a major GC is marking, and the exit path otherwise stores none.
    if (out.backend !== 'svm') out.backend = 'svm';
    out.code = v.exitCode;
    const name = codeName(v.exitCode);
    if (out.name !== name) out.name = name;
    const f = out.fields;
    f.exitInfo1 = v.exitInfo1;
    f.exitInfo2 = v.exitInfo2;
  }

  /**
   * CR write: VMEXIT_CR0_WRITE + n, or VMEXIT_CR0_SEL_WRITE (65h) for a CR0 write that only the selective
   * intercept took (the CR0 write intercept has priority, §15.9.2); with decode assists (§15.33.1) EXITINFO1
   * bit 63 = MOV-to-CR and bits 3:0 the GPR (reported as 0 = RAX, so the value 2^63 is exact in a double; KVM
   * cr_interception reads CR_VALID for both CR0 codes). EFER: VMEXIT_MSR, EXITINFO1 = 1 (WRMSR).
   */
  crWriteExit(v: Vmcb, cr: number, _value: number): HardwareExit {
    if (cr === MSR_EFER) {
      v.exitCode = VMEXIT_MSR;
      v.exitInfo1 = SVM_MSR_EXITINFO1_WRITE;
      v.exitInfo2 = 0;
      return this.describe(v);
    }
    v.exitCode = cr === 0 && (v.interceptCr & INTERCEPT_CR0_WRITE) === 0 ? VMEXIT_CR0_SEL_WRITE : VMEXIT_CR0_WRITE + cr;
    v.exitInfo1 = SVM_CR_EXITINFO1_MOV;
    v.exitInfo2 = 0;
    return this.describe(v);
  }

  /** VMEXIT_INVLPG; with decode assists EXITINFO1 = the linear address (§15.33.2). */
  invlpgExit(v: Vmcb, va: number): HardwareExit {
    v.exitCode = VMEXIT_INVLPG;
    v.exitInfo1 = va;
    v.exitInfo2 = 0;
    return this.describe(v);
  }

  /**
   * §15.25.6: VMEXIT_NPF, EXITINFO2 = the faulting guest-physical address, EXITINFO1 = the #PF-style error
   * code of the nested walk (P, RW, US, RSV, ID: `fault.nestedCode`) plus bit 32 when the fault was on the
   * final guest-physical translation or bit 33 when it was on a guest page-table access. The guest-linear
   * address is not reported.
   */
  nestedFaultExit(v: Vmcb, fault: WalkResult, _address: number): HardwareExit {
    v.exitCode = VMEXIT_NPF;
    v.exitInfo1 = (fault.nestedCode >>> 0) + (fault.nestedFinal ? NPF_EXITINFO1_FINAL : NPF_EXITINFO1_PAGE_TABLE);
    v.exitInfo2 = fault.nestedGpa;
    return this.describe(v);
  }

  /** KVM's error code for the last NPF: EXITINFO1 as it is (arch/x86/kvm/svm/svm.c npf_interception). */
  nestedFaultErrorCode(v: Vmcb): number {
    if (v.exitCode !== VMEXIT_NPF) throw new BackendError('E_BACKEND_STATE', `SVM: exit code ${codeName(v.exitCode)} is not VMEXIT_NPF`);
    return v.exitInfo1;
  }

  /**
   * MMIO as KVM makes it exit (arch/x86/kvm/mmu/spte.c make_mmio_spte, svm.c npf_interception): the MMIO spte has P and reserved bit 51, so with NPT the
   * access is an NPF with P|RSVD on the final translation; with shadow paging a #PF with P|RSVD, which is
   * intercepted (the #PF intercept is on under shadow paging).
   */
  mmioExit(v: Vmcb, gpa: number, address: number, access: number): HardwareExit {
    const code = PFERR_PRESENT | PFERR_RSVD | access;
    if (v.npEnable) {
      v.exitCode = VMEXIT_NPF;
      v.exitInfo1 = code + NPF_EXITINFO1_FINAL;
      v.exitInfo2 = gpa;
      return this.describe(v);
    }
    return this.exceptionExit(v, PF_VECTOR, code, address);
  }

  /**
   * SVM keeps no read shadows, but KVM reprograms the CR0 intercepts after it handles a CR0 write (svm.c
   * `svm_set_cr0`, after kvm_set_cr0 forced ET): the VMCB's CR0 becomes the guest's value as KVM runs it
   * (`hostCr0`), and when that equals the guest's own CR0 the CR0 read and write intercepts are cleared ("Selective
   * CR0 write remains on"), else set. From then on only a write that changes a bit other than TS and MP exits.
   */
  crWriteHandled(v: Vmcb, cr: number, value: number): void {
    if (cr !== 0) return;
    const cr0 = (value | CR0_ET) >>> 0;
    v.cr0 = hostCr0(cr0, !v.npEnable);
    if (v.cr0 === cr0) v.interceptCr &= ~(INTERCEPT_CR0_READ | INTERCEPT_CR0_WRITE);
    else v.interceptCr |= INTERCEPT_CR0_READ | INTERCEPT_CR0_WRITE;
  }

  /** §15.20 Event Injection: EVENTINJ = vector | type 3 | EV (error code valid) | V, error code in bits 63:32. */
  injectException(v: Vmcb, vector: number, errorCode: number): void {
    const withCode = hasErrorCode(vector);
    v.eventInj = (SVM_EVTINJ_VALID | SVM_EVTINJ_TYPE_EXEPT | (withCode ? SVM_EVTINJ_VALID_ERR : 0) | (vector & SVM_EVTINJ_VEC_MASK)) >>> 0;
    v.eventInjErr = withCode ? errorCode >>> 0 : 0;
  }

  /** VMRUN delivers EVENTINJ and clears its V bit (§15.20). */
  vmEntry(v: Vmcb, out: { errorCode: number }): number {
    const ev = v.eventInj;
    if ((ev & SVM_EVTINJ_VALID) === 0) return -1;
    v.eventInj = (ev & ~SVM_EVTINJ_VALID) >>> 0;
    out.errorCode = (ev & SVM_EVTINJ_VALID_ERR) !== 0 ? v.eventInjErr : 0;
    return ev & SVM_EVTINJ_VEC_MASK;
  }

  /**
   * §15.25.3: N_CR3 = the nested page table root; NP_ENABLE; the nested tables' depth is the host's paging
   * mode (`levels`). NPT always has A/D flags (`accessedDirty` does not apply).
   */
  setNestedRoot(v: Vmcb, root: number, options: NestedRootOptions = {}): void {
    v.nCr3 = root - (root % 4096);
    v.npEnable = true;
    v.nptLevels = options.levels ?? 4;
  }

  /** The nested-paging walk under the VMCB's nCR3 (APM Vol. 2 §15.25.5). */
  createSecondStage(v: Vmcb, hostMem: PhysicalMemory, hostMaxPhyAddr: number): SecondStage {
    if (!v.npEnable) throw new BackendError('E_BACKEND_STATE', 'SVM: NP_ENABLE is 0 in the VMCB: no second stage');
    return new NptStage(hostMem, v.nCr3, { maxPhyAddr: hostMaxPhyAddr, levels: v.nptLevels });
  }

  private describe(v: Vmcb): HardwareExit {
    return { backend: 'svm', code: v.exitCode, name: codeName(v.exitCode), fields: { exitInfo1: v.exitInfo1, exitInfo2: v.exitInfo2 } };
  }
}

/** `exitCodeName`, built once per exit code (the exception codes' names are built strings: not per exit). */
const codeNames: (string | undefined)[] = new Array<string | undefined>(0x1000).fill(undefined);
function codeName(code: number): string {
  if (code < 0 || code > 0xfff) return exitCodeName(code);
  return (codeNames[code] ??= exitCodeName(code));
}
