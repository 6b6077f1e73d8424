import * as core from '@vmexit/core';
import {
  type PageModificationLogging,
  type Backend,
  type HardwareExit,
  type HardwareExitBuffer,
  type MmuMode,
  type NestedRootOptions,
  type PageFaultFilter,
  type PhysicalMemory,
  type SecondStage,
  type WalkResult,
  EptStage,
  PmlLog,
} from '@vmexit/core';
import * as vmxConstants from './constants.js';
import { createVmcs, Vmcs } from './state.js';
import { BackendError } from './errors.js';

// Module-local copies of the imported constants and helpers the exit path uses. V8 folds a module's own constants into
// its compiled code, but reads an imported binding through its module cell, with a check, on every use (core
// DESIGN.md, "Speed").
const {
  CPU_BASED_CR3_LOAD_EXITING,
  CPU_BASED_INVLPG_EXITING,
  CPU_BASED_USE_MSR_BITMAPS,
  CR0_ET,
  CR_ACCESS_TYPE_MOV_TO_CR,
  EPT_VIOLATION_ACC_INSTR,
  EPT_VIOLATION_ACC_READ,
  EPT_VIOLATION_ACC_WRITE,
  EPT_VIOLATION_GVA_IS_VALID,
  EPT_VIOLATION_GVA_TRANSLATED,
  EPT_VIOLATION_LINEAR_USER,
  EPT_VIOLATION_LINEAR_WRITABLE,
  EPT_VIOLATION_LINEAR_XD,
  EPT_VIOLATION_RWX_MASK,
  EPT_VIOLATION_RWX_SHIFT,
  EXIT_REASON_CR_ACCESS,
  EXIT_REASON_EPT_MISCONFIG,
  EXIT_REASON_EPT_VIOLATION,
  EXIT_REASON_EXCEPTION_NMI,
  EXIT_REASON_INVLPG,
  EXIT_REASON_MSR_WRITE,
  exitReasonName,
  INTR_INFO_DELIVER_CODE,
  INTR_INFO_VALID,
  INTR_INFO_VECTOR_MASK,
  INTR_TYPE_HARD_EXCEPTION,
  MSR_EFER,
  SECONDARY_EXEC_ENABLE_EPT,
  SECONDARY_EXEC_ENABLE_PML,
  EXIT_REASON_PML_FULL,
  VMX_EPTP_AD_ENABLE,
  VMX_EPTP_MT_WB,
  VMX_EPTP_PWL_4,
  VMX_EPTP_PWL_5,
} = vmxConstants;
const { ACC_FETCH, ACC_WRITE, PF_VECTOR, PFERR_FETCH, PFERR_PRESENT, PFERR_RSVD, PFERR_USER, PFERR_WRITE } = core;

/** Exceptions that push an error code (SDM Vol. 3A §6.15): #DF 8, #TS 10, #NP 11, #SS 12, #GP 13, #PF 14, #AC 17, #CP 21. */
function hasErrorCode(vector: number): boolean {
  return vector === 8 || (vector >= 10 && vector <= 14) || vector === 17 || vector === 21;
}

/** The exception exits' reason name, looked up once. */
const EXCEPTION_NMI_NAME = exitReasonName(EXIT_REASON_EXCEPTION_NMI);

/** The exit fields of an exception exit (SDM Vol. 3C §28.2.1-28.2.2; see VmxBackend.exceptionExit). */
function recordException(v: Vmcs, vector: number, errorCode: number, address: number): void {
  const withCode = hasErrorCode(vector);
  v.vmExitReason = EXIT_REASON_EXCEPTION_NMI;
  v.exitQualification = vector === PF_VECTOR ? address : 0;
  v.vmExitIntrInfo = (INTR_INFO_VALID | INTR_TYPE_HARD_EXCEPTION | (withCode ? INTR_INFO_DELIVER_CODE : 0) | (vector & INTR_INFO_VECTOR_MASK)) >>> 0;
  v.vmExitIntrErrorCode = withCode ? errorCode >>> 0 : 0;
}

/** 2^32 / 2^33: bits 32 and 33 of KVM's fault error code (PFERR_GUEST_FINAL_MASK / PFERR_GUEST_PAGE_MASK, kvm_host.h). */
const PFERR_GUEST_FINAL = 2 ** 32;
const PFERR_GUEST_PAGE = 2 ** 33;

/**
 * Intel VMX: the exit rules of SDM Vol. 3C ch. 26 ("VMX Non-Root Operation") over a `Vmcs`, and the exit
 * information of ch. 28 ("VM Exits"). Also the `PageFaultFilter` capability (PFEC_MASK / PFEC_MATCH).
 */
export class VmxBackend implements Backend<Vmcs>, PageFaultFilter, PageModificationLogging<Vmcs> {
  readonly name = 'vmx' as const;

  createState(_vcpuId: number, mmu: MmuMode, cpu?: { readonly maxPhyAddr: number; readonly hostMaxPhyAddr: number }): Vmcs {
    return createVmcs(mmu, cpu);
  }

  /**
   * SDM Vol. 3C §26.2 (Exceptions) with §25.6.3: an exception exits iff its bit in the exception bitmap is
   * 1, except #PF: "If PFEC & PFEC_MASK = PFEC_MATCH, the specification of bit 14 in the exception bitmap is
   * followed; if there is inequality, the meaning of that bit is reversed". So
   * exit = EB[14] XOR ((PFEC & PFEC_MASK) != PFEC_MATCH).
   */
  exceptionExits(v: Vmcs, vector: number, errorCode: number): boolean {
    const bit = ((v.exceptionBitmap >>> vector) & 1) === 1;
    if (vector !== PF_VECTOR) return bit;
    const mismatch = (errorCode & v.pageFaultErrorCodeMask) >>> 0 !== v.pageFaultErrorCodeMatch >>> 0;
    return bit !== mismatch;
  }

  /**
   * SDM Vol. 3C §26.1.3: MOV to CR0/CR4 exits iff a bit set in the guest/host mask differs between the source
   * operand and the read shadow; MOV to CR3 exits iff CR3-load exiting is 1 and the value is none of the first
   * CR3-target-count CR3-target values (a count of 0 makes every MOV to CR3 exit). WRMSR exits when MSR
   * bitmaps are off, or the MSR's write bit is set (§25.6.9).
   */
  crWriteExits(v: Vmcs, cr: number, value: number): boolean {
    switch (cr) {
      case 0:
        // The masks are natural-width with bits 63:32 set (KVM: the complement of the guest-owned bits, an unsigned
        // long) and the shadows' bits 63:32 are 0: an operand with any of them set differs in a host-owned bit.
        if (hasUpper32(value)) return true;
        return ((value ^ v.cr0ReadShadow) & v.cr0GuestHostMask) !== 0;
      case 3: {
        if ((v.cpuBasedVmExecControl & CPU_BASED_CR3_LOAD_EXITING) === 0) return false;
        const n = Math.min(v.cr3TargetCount, v.cr3TargetValues.length);
        for (let i = 0; i < n; i++) if (v.cr3TargetValues[i] === value) return false;
        return true;
      }
      case 4:
        if (hasUpper32(value)) return true;
        return ((value ^ v.cr4ReadShadow) & v.cr4GuestHostMask) !== 0;
      case MSR_EFER:
        return (v.cpuBasedVmExecControl & CPU_BASED_USE_MSR_BITMAPS) === 0 || v.msrWriteIntercepts.has(MSR_EFER);
      default:
        throw new BackendError('E_BACKEND_NO_RULE', `VMX: no write-exit rule for control register ${cr}`);
    }
  }

  /** SDM Vol. 3C §26.1.3: INVLPG exits iff "INVLPG exiting" is 1. */
  invlpgExits(v: Vmcs): boolean {
    return (v.cpuBasedVmExecControl & CPU_BASED_INVLPG_EXITING) !== 0;
  }

  /**
   * SDM Vol. 3C §28.2.1-28.2.2: basic exit reason 0; VM-exit interruption information = vector, type 3
   * (hardware exception), bit 11 if an error code was pushed, bit 31 valid; the error code in the VM-exit
   * interruption error code; for a #PF the exit qualification is the faulting linear address (CR2 is not
   * written when a #PF causes a VM exit, §28.1).
   */
  exceptionExit(v: Vmcs, vector: number, errorCode: number, address: number): HardwareExit {
    recordException(v, vector, errorCode, address);
    return this.describe(v, {
      exitQualification: v.exitQualification,
      vmExitIntrInfo: v.vmExitIntrInfo,
      vmExitIntrErrorCode: v.vmExitIntrErrorCode,
    });
  }

  /** `exceptionExit` into a description the caller reuses (no allocation). */
  exceptionExitInto(v: Vmcs, vector: number, errorCode: number, address: number, out: HardwareExitBuffer): void {
    recordException(v, vector, errorCode, address);
    // The strings are stored only when they change (once per buffer): a store of a heap object into an object
    // calls V8's write barrier while a major GC is marking, and the exit path otherwise stores none.
    if (out.backend !== 'vmx') out.backend = 'vmx';
    out.code = EXIT_REASON_EXCEPTION_NMI;
    if (out.name !== EXCEPTION_NMI_NAME) out.name = EXCEPTION_NMI_NAME;
    const f = out.fields;
    f.exitQualification = v.exitQualification;
    f.vmExitIntrInfo = v.vmExitIntrInfo;
    f.vmExitIntrErrorCode = v.vmExitIntrErrorCode;
  }

  /**
   * MOV to CR: exit reason 28 with the qualification of Table 28-3 (bits 3:0 the CR number, 5:4 access type 0
   * = MOV to CR, 11:8 the GPR, which the simulator reports as 0 = RAX). WRMSR EFER: exit reason 32
   * (no qualification; the MSR number is in ECX).
   */
  crWriteExit(v: Vmcs, cr: number, _value: number): HardwareExit {
    if (cr === MSR_EFER) {
      v.vmExitReason = EXIT_REASON_MSR_WRITE;
      v.exitQualification = 0;
      return this.describe(v, { exitQualification: 0, ecx: MSR_EFER });
    }
    v.vmExitReason = EXIT_REASON_CR_ACCESS;
    v.exitQualification = (cr & 0xf) | CR_ACCESS_TYPE_MOV_TO_CR;
    return this.describe(v, { exitQualification: v.exitQualification });
  }

  /** INVLPG: exit reason 14, exit qualification = the linear-address operand (§28.2.1). */
  invlpgExit(v: Vmcs, va: number): HardwareExit {
    v.vmExitReason = EXIT_REASON_INVLPG;
    v.exitQualification = va;
    return this.describe(v, { exitQualification: va });
  }

  /**
   * SDM Vol. 3C §29.3.3: an EPT misconfiguration is exit reason 49 with the guest-physical address in
   * GUEST_PHYSICAL_ADDRESS (the exit qualification is undefined: 0 here); an EPT violation is exit reason 48
   * with GUEST_PHYSICAL_ADDRESS, GUEST_LINEAR_ADDRESS and the qualification of Table 28-7:
   * - bits 2:0, the access: a final access is a data read (0), a data write (1) or a fetch (2); a guest
   *   paging-structure access is a read (0), and also a write (1) where it is treated as one (EPTP bit 6,
   *   or the update of a guest A/D flag);
   * - bits 5:3, the AND of the R, W, X bits of the EPT entries used (0 when one was not present);
   * - bit 7, the linear-address field is valid (every walk's access translates a linear address; not a load of
   *   the PAE PDPTEs by MOV to CR, which has none);
   * - bit 8, the access was to the final translation (clear: to a guest paging-structure entry);
   * - bits 11:9 for a final access (advanced VM-exit information): the linear address is user-mode, is
   *   writable, is execute-disable, from the guest's translation (`fault.user`, `writable`, `executable`).
   */
  nestedFaultExit(v: Vmcs, fault: WalkResult, address: number): HardwareExit {
    const gpa = fault.nestedGpa;
    v.guestPhysicalAddress = gpa;
    if (fault.nestedPmlFull) {
      // §29.3.6 / §28.2.1: a PML-full event is exit reason 62; the qualification is 0 here (bit 12, NMI
      // unblocking due to IRET, is not modelled); the guest-physical address field is not defined for it.
      v.vmExitReason = EXIT_REASON_PML_FULL;
      v.exitQualification = 0;
      return this.describe(v, { exitQualification: 0 });
    }
    if (fault.nestedMisconfig) {
      v.vmExitReason = EXIT_REASON_EPT_MISCONFIG;
      v.exitQualification = 0;
      return this.describe(v, { guestPhysicalAddress: gpa });
    }
    const acc = fault.nestedAccess;
    const final = fault.nestedFinal;
    let q: number;
    if (final) q = (acc & ACC_WRITE) !== 0 ? EPT_VIOLATION_ACC_WRITE : (acc & ACC_FETCH) !== 0 ? EPT_VIOLATION_ACC_INSTR : EPT_VIOLATION_ACC_READ;
    else q = EPT_VIOLATION_ACC_READ | ((acc & ACC_WRITE) !== 0 ? EPT_VIOLATION_ACC_WRITE : 0);
    q |= (fault.nestedRights & 7) << EPT_VIOLATION_RWX_SHIFT;
    if (fault.nestedPdpteLoad) {
      // A load of the PAE PDPTEs by MOV to CR: "the guest linear-address field is valid for all EPT violations
      // except those resulting from an attempt to load the guest PDPTEs" (Table 28-7, bit 7): bits 7 and 8 clear.
      v.vmExitReason = EXIT_REASON_EPT_VIOLATION;
      v.exitQualification = q;
      v.guestLinearAddress = 0;
      return this.describe(v, { exitQualification: q, guestPhysicalAddress: gpa });
    }
    q |= EPT_VIOLATION_GVA_IS_VALID;
    if (final) {
      q |= EPT_VIOLATION_GVA_TRANSLATED;
      if (fault.user) q |= EPT_VIOLATION_LINEAR_USER;
      if (fault.writable) q |= EPT_VIOLATION_LINEAR_WRITABLE;
      if (!fault.executable) q |= EPT_VIOLATION_LINEAR_XD;
    }
    v.vmExitReason = EXIT_REASON_EPT_VIOLATION;
    v.exitQualification = q;
    v.guestLinearAddress = address;
    return this.describe(v, { exitQualification: q, guestPhysicalAddress: gpa, guestLinearAddress: address });
  }

  /**
   * KVM's error code for the last EPT exit (arch/x86/kvm/vmx/vmx.c handle_ept_violation ->
   * __vmx_handle_ept_violation; handle_ept_misconfig): a misconfiguration is PFERR_RSVD_MASK (KVM's MMIO
   * path); a violation is USER for a read (KVM's own use of the bit), WRITE, FETCH from bits 2:0, PRESENT
   * when any of bits 5:3 is set, and PFERR_GUEST_FINAL_MASK or PFERR_GUEST_PAGE_MASK from bit 8 when the
   * linear address is valid.
   */
  nestedFaultErrorCode(v: Vmcs): number {
    switch (v.vmExitReason) {
      case EXIT_REASON_EPT_MISCONFIG:
        return PFERR_RSVD;
      case EXIT_REASON_EPT_VIOLATION: {
        const q = v.exitQualification;
        let ec = (q & EPT_VIOLATION_ACC_READ) !== 0 ? PFERR_USER : 0;
        if ((q & EPT_VIOLATION_ACC_WRITE) !== 0) ec |= PFERR_WRITE;
        if ((q & EPT_VIOLATION_ACC_INSTR) !== 0) ec |= PFERR_FETCH;
        if ((q & EPT_VIOLATION_RWX_MASK) !== 0) ec |= PFERR_PRESENT;
        if ((q & EPT_VIOLATION_GVA_IS_VALID) === 0) return ec;
        return ec + ((q & EPT_VIOLATION_GVA_TRANSLATED) !== 0 ? PFERR_GUEST_FINAL : PFERR_GUEST_PAGE);
      }
      default:
        throw new BackendError('E_BACKEND_STATE', `VMX: exit reason ${v.vmExitReason} (${exitReasonName(v.vmExitReason)}) is not an EPT exit`);
    }
  }

  /**
   * An MMIO access as KVM makes it exit (arch/x86/kvm/mmu/spte.c make_mmio_spte, vmx.c handle_ept_misconfig): with EPT, KVM's MMIO sptes are misconfigured
   * (W|X, VMX_EPT_MISCONFIG_WX_VALUE) -> EPT_MISCONFIG; with shadow paging the MMIO spte has reserved bits
   * -> a #PF with P|RSVD, which exits however PFEC_MASK/MATCH are set (KVM keeps RSVD faults exiting).
   */
  mmioExit(v: Vmcs, gpa: number, address: number, access: number): HardwareExit {
    if ((v.secondaryVmExecControl & SECONDARY_EXEC_ENABLE_EPT) !== 0) {
      v.guestPhysicalAddress = gpa;
      v.vmExitReason = EXIT_REASON_EPT_MISCONFIG;
      v.exitQualification = 0;
      return this.describe(v, { guestPhysicalAddress: gpa });
    }
    return this.exceptionExit(v, PF_VECTOR, PFERR_PRESENT | PFERR_RSVD | access, address);
  }

  /**
   * After a CR0/CR4 write exit, KVM sets the read shadow to the guest's new value (vmx_set_cr0 / vmx_set_cr4),
   * CR0 with ET set (kvm_set_cr0: "cr0 |= X86_CR0_ET").
   */
  crWriteHandled(v: Vmcs, cr: number, value: number): void {
    if (cr === 0) v.cr0ReadShadow = (value | CR0_ET) >>> 0;
    else if (cr === 4) v.cr4ReadShadow = value >>> 0;
  }

  /**
   * SDM Vol. 3C §25.8.3 / §27.6 (Event Injection): the VM-entry interruption-information field (vector, type 3,
   * deliver-error-code, valid) and the VM-entry exception error code. For a #PF the VMM has set the guest's
   * CR2 (the vCPU does that as it delivers the fault).
   */
  injectException(v: Vmcs, vector: number, errorCode: number): void {
    const withCode = hasErrorCode(vector);
    v.vmEntryIntrInfoField = (INTR_INFO_VALID | INTR_TYPE_HARD_EXCEPTION | (withCode ? INTR_INFO_DELIVER_CODE : 0) | (vector & INTR_INFO_VECTOR_MASK)) >>> 0;
    v.vmEntryExceptionErrorCode = withCode ? errorCode >>> 0 : 0;
  }

  /** VM entry delivers the injected event; the valid bit is cleared on the next VM exit (§28.2.4), here at once. */
  vmEntry(v: Vmcs, out: { errorCode: number }): number {
    const info = v.vmEntryIntrInfoField;
    if ((info & INTR_INFO_VALID) === 0) return -1;
    v.vmEntryIntrInfoField = (info & ~INTR_INFO_VALID) >>> 0;
    out.errorCode = (info & INTR_INFO_DELIVER_CODE) !== 0 ? v.vmEntryExceptionErrorCode : 0;
    return info & INTR_INFO_VECTOR_MASK;
  }

  /**
   * EPTP (§25.6.11, Table 25-9): write-back memory type, the walk length (4 or 5 levels), bit 6 for EPT A/D,
   * the PML4 (PML5) address in bits 51:12, as KVM's construct_eptp; enables EPT.
   */
  setNestedRoot(v: Vmcs, root: number, options: NestedRootOptions = {}): void {
    const levels = options.levels ?? 4;
    v.eptPointer =
      root - (root % 4096) + (levels === 5 ? VMX_EPTP_PWL_5 : VMX_EPTP_PWL_4) + (options.accessedDirty === true ? VMX_EPTP_AD_ENABLE : 0) + VMX_EPTP_MT_WB;
    v.secondaryVmExecControl |= SECONDARY_EXEC_ENABLE_EPT;
  }

  /** The EPT walk under the VMCS's EPT pointer (SDM Vol. 3C §29.3); an invalid EPTP fails VM entry (§27.2.1.1). */
  createSecondStage(v: Vmcs, hostMem: PhysicalMemory, hostMaxPhyAddr: number): SecondStage {
    if ((v.secondaryVmExecControl & SECONDARY_EXEC_ENABLE_EPT) === 0)
      throw new BackendError('E_BACKEND_STATE', 'VMX: "enable EPT" is 0 in the secondary controls: no second stage');
    return new EptStage(hostMem, v.eptPointer, { maxPhyAddr: hostMaxPhyAddr });
  }

  /**
   * PageModificationLogging (SDM Vol. 3C §29.3.6; KVM vmx.c `init_vmcs` with `enable_pml`: SECONDARY_EXEC_ENABLE_PML,
   * PML_ADDRESS = the page of `vmx->pml_pg`, GUEST_PML_INDEX = PML_HEAD_INDEX): the log the EPT walk of `stage`
   * writes. PML logs the dirty flags of EPT: the EPTP must enable them (bit 6), else "enable PML" has no effect.
   */
  enablePml(v: Vmcs, stage: SecondStage): PmlLog {
    if (!(stage instanceof EptStage)) throw new RangeError('VMX PML: the second stage is not an EPT walk');
    if (!stage.accessedDirty) throw new RangeError('VMX PML needs EPT accessed and dirty flags (EPTP bit 6): none would be logged');
    const log = v.pml ?? new PmlLog();
    v.pml = log;
    v.secondaryVmExecControl |= SECONDARY_EXEC_ENABLE_PML;
    stage.pml = log;
    return log;
  }

  /** PageFaultFilter: programs PFEC_MASK and PFEC_MATCH (32-bit fields). */
  setPfecMaskMatch(state: unknown, mask: number, match: number): void {
    const v = state as Vmcs;
    v.pageFaultErrorCodeMask = mask >>> 0;
    v.pageFaultErrorCodeMatch = match >>> 0;
  }

  private describe(v: Vmcs, fields: Record<string, number>): HardwareExit {
    return { backend: 'vmx', code: v.vmExitReason, name: exitReasonName(v.vmExitReason), fields };
  }
}

/** A MOV-to-CR operand with a bit of 63:32 set (outside 0..2^32-1 and the int32 range a `1 << 31` makes). */
function hasUpper32(value: number): boolean {
  return !(value >= -(2 ** 31) && value < 2 ** 32);
}
