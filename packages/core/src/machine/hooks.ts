import { hexU64 } from '../arch/hex.js';
import { MachineError } from './errors.js';
import type { WalkResult } from '../paging/types.js';

/** What the vCPU does after a hook has seen an event (the hook's answer). */
export const FAULT_DELIVER = 0; // deliver the exception to the guest's handler, with vcpu.deliverErrorCode
/** Re-execute the access (the hypervisor fixed the translation) */
export const FAULT_RETRY = 1;
/** The access was completed by emulation (a store was performed, a load's value set) */
export const FAULT_DONE = 2;

/** What a hook answers the vCPU after an event: FAULT_DELIVER, FAULT_RETRY or FAULT_DONE. */
export type FaultAction = typeof FAULT_DELIVER | typeof FAULT_RETRY | typeof FAULT_DONE;

/**
 * The vCPU as a hook receives it: what every hook may rely on. Declared here, where the hooks consume it, so
 * that the seam does not import the vCPU. `Vcpu` (vcpu.ts) has this shape; hooks that need more of the vCPU
 * (the VM's hooks read its control registers and pending access) implement `VcpuHooks<Vcpu>`.
 */
export interface HookedVcpu {
  readonly id: number;
  /** The error code an exception is delivered with: set before `exception`, a hook may change it. */
  deliverErrorCode: number;
}

/**
 * The seam between the vCPU (hardware) and whatever runs beneath the guest. Natively (`NativeHooks`) every
 * exception goes to the guest. Under a hypervisor, the backend decides by its rules (VMX exception bitmap and
 * PFEC_MASK/MATCH, SVM intercepts) whether an event exits; an exit goes through the exit pipeline, and its
 * resolution becomes the answer.
 *
 * The hardware walks `vcpu.activeCtx` over `vcpu.activeMem` (the guest's tables natively and under TDP, the
 * shadow tables under shadow paging). Host-physical addresses of guest RAM equal guest-physical addresses in
 * this simulator (the host mapping is the memslot's), so the walk's final address is looked up in the memslots.
 */
export interface VcpuHooks<V extends HookedVcpu = HookedVcpu> {
  /**
   * An exception raised by the hardware (a #PF from the walk of the active tables, a #GP). Before the call
   * the vCPU sets `vcpu.deliverErrorCode = errorCode`; a hook that answers FAULT_DELIVER may change it (an
   * injected #PF carries the guest walker's error code, not the shadow walk's). `access` is the PFERR_*
   * kind of the access that faulted.
   */
  exception(vcpu: V, vector: number, errorCode: number, address: number, access: number): FaultAction;
  /** The second stage (EPT/NPT) refused an access; `r` holds the nested-fault details. */
  nestedFault(vcpu: V, address: number, access: number, r: WalkResult): FaultAction;
  /** An access reached a guest-physical address with no RAM behind it (MMIO, or a write to read-only RAM). */
  mmio(vcpu: V, gpa: number, access: number): FaultAction;
  /**
   * MOV to CR0/CR3/CR4 or WRMSR IA32_EFER (`cr` = 0, 3, 4, or 0xc0000080), after the architectural effect. `operand`
   * is the value the instruction wrote (32 bits outside 64-bit mode), which may differ from the register's new value
   * (CR0's reserved bits are ignored): a VM exit is decided on the operand (SDM Vol. 3C §26.1.3).
   */
  crWrite(vcpu: V, cr: number, oldValue: number, operand: number): void;
  /**
   * MOV to CR0/CR3/CR4 or WRMSR IA32_EFER (`cr` = 0xc0000080) of `value` whose architectural checks failed:
   * #GP(0) for an invalid value (cr-checks.ts: reserved bits, CR0.PG without PE, NW without CD, leaving or entering
   * IA-32e mode the wrong way, an LME change with paging on; CR3's reserved bits and CR4.PCIDE's conditions), or,
   * in PAE paging, for a present PDPTE with a reserved bit (SDM Vol. 3A §4.4.1). The vCPU has left the register
   * (and the PDPTE registers) unchanged. A VM exit the write would cause comes first (SDM Vol. 3C §26.1.1, "Relative
   * Priority of Faults and VM Exits": only #UD, privilege-level faults and I/O-permission #GPs have priority
   * over a VM exit; AMD checks intercepts before operand-dependent exceptions, APM Vol. 2 §15.7), and then the
   * hypervisor, emulating the write, makes the same checks and injects the #GP itself (KVM kvm_set_cr0 /
   * kvm_set_cr3 / kvm_set_cr4 / set_efer fail -> kvm_complete_insn_gp). Answers FAULT_DELIVER to deliver
   * #GP(vcpu.deliverErrorCode) to the guest's handler; FAULT_RETRY when it was delivered already.
   */
  crWriteFault(vcpu: V, cr: number, value: number): FaultAction;
  /** INVLPG `va`, after the architectural TLB invalidation. */
  invlpg(vcpu: V, va: number): void;
}

/** A guest with no hypervisor: every exception is delivered to the guest, nothing exits. */
export class NativeHooks implements VcpuHooks {
  exception(_vcpu: HookedVcpu, _vector: number, _errorCode: number, _address: number, _access: number): FaultAction {
    return FAULT_DELIVER;
  }
  nestedFault(vcpu: HookedVcpu, address: number, _access: number, _r: WalkResult): FaultAction {
    throw new MachineError('nested-fault', `vCPU ${vcpu.id}: a second-stage (EPT/NPT) fault at ${hexU64(address)} with no hypervisor to take it`);
  }
  mmio(_vcpu: HookedVcpu, _gpa: number, _access: number): FaultAction {
    return FAULT_DONE; // reads of unbacked memory return all ones; writes are dropped (the vCPU does that)
  }
  crWrite(_vcpu: HookedVcpu, _cr: number, _oldValue: number, _operand: number): void {}
  crWriteFault(_vcpu: HookedVcpu, _cr: number, _value: number): FaultAction {
    return FAULT_DELIVER; // the #GP goes to the guest's handler
  }
  invlpg(_vcpu: HookedVcpu, _va: number): void {}
}
