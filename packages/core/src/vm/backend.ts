import type { HardwareExit } from '../exits/vm-exit.js';
import { TYPES } from './tokens.js';

/** How the VM's MMU translates guest memory, which decides how a backend programs its intercepts. */
export type MmuMode = 'shadow' | 'tdp';

/**
 * A hardware virtualization backend (Intel VMX, AMD SVM): the rules by which guest events exit, and the
 * exit information the hardware produces. `S` is the per-vCPU control state (a VMCS, a VMCB). Every
 * `...Exits` method is on the hot path (called for every exception, CR write and INVLPG of the guest):
 * it reads the control state and allocates nothing. Exit construction runs only when an event exits.
 */
export interface Backend<S = unknown> {
  readonly name: 'vmx' | 'svm';
  /** Creates a vCPU's control state, set up as KVM sets it up for this MMU mode. */
  createState(vcpuId: number, mmu: MmuMode): S;
  /** Whether an exception of `vector` with `errorCode` (32-bit) exits instead of going to the guest's IDT. */
  exceptionExits(state: S, vector: number, errorCode: number): boolean;
  /** Whether MOV to CR0/CR3/CR4 (`cr` = 0, 3, 4) or WRMSR EFER (`cr` = 0xc0000080) of `value` exits. */
  crWriteExits(state: S, cr: number, value: number): boolean;
  /** Whether INVLPG exits. */
  invlpgExits(state: S): boolean;
  /** Records an exception exit in the control state's exit fields and describes it. */
  exceptionExit(state: S, vector: number, errorCode: number, address: number): HardwareExit;
  /** A CR (or EFER) write exit. */
  crWriteExit(state: S, cr: number, value: number): HardwareExit;
  /** An INVLPG exit. */
  invlpgExit(state: S, va: number): HardwareExit;
  /**
   * A second-stage fault (EPT violation / misconfiguration, NPF). `errorCode` carries the PFERR bits of the
   * fault (RSVD = a misconfigured entry) plus bit 32 (final translation) or bit 33 (guest page-table access).
   */
  nestedFaultExit(state: S, gpa: number, address: number, errorCode: number): HardwareExit;
  /** An access to a guest-physical address with no RAM (an MMIO spte: KVM's reserved-bit / misconfig encodings). */
  mmioExit(state: S, gpa: number, address: number, access: number): HardwareExit;
  /** The hypervisor finished handling a CR write exit: the control state follows the guest's new value. */
  crWriteHandled(state: S, cr: number, value: number): void;
  /** Queues an exception for injection on the next VM entry (VMX VM-entry interruption information, SVM EVENTINJ). */
  injectException(state: S, vector: number, errorCode: number): void;
  /**
   * VM entry: delivers the queued event, if any, and clears it. Returns the vector (-1 if none), with the
   * error code in `out.errorCode`.
   */
  vmEntry(state: S, out: { errorCode: number }): number;
  /** Points the second stage at `root` (VMX EPT pointer, SVM nCR3) and enables it. */
  setNestedRoot(state: S, root: number): void;
}

/**
 * Capability: VMX's #PF filtering by error code (SDM Vol. 3C §25.2, "Exception Bitmap": a #PF exits iff bit 14
 * of the exception bitmap XOR (PFEC & PFEC_MASK != PFEC_MATCH)). AMD SVM has no equivalent: its #PF intercept
 * is all or nothing (APM Vol. 2 §15.12), so backend-svm does not bind this.
 */
export interface PageFaultFilter {
  setPfecMaskMatch(state: unknown, mask: number, match: number): void;
}

/**
 * Capability: the MMU can install two kinds of non-present shadow pte, one that traps to the hypervisor and
 * one that does not (KVM `kvm_mmu_set_nonpresent_ptes(trap, notrap)`, commit c7addb902054). Values are 64-bit
 * ptes as low/high 32-bit halves (no BigInt).
 */
export interface NonPresentSpteEncoding {
  setNonPresentSptes(trapLo: number, trapHi: number, notrapLo: number, notrapHi: number): void;
}

/** Who provides a capability: the backend's module or the MMU's module. */
export type CapabilityProvider = 'backend' | 'mmu';

export interface CapabilityInfo {
  readonly name: string;
  readonly token: symbol;
  readonly providedBy: CapabilityProvider;
  readonly description: string;
}

/** The capabilities a policy may name in `needs`. */
export const CAPABILITIES: Readonly<Record<string, CapabilityInfo>> = {
  PageFaultFilter: {
    name: 'PageFaultFilter',
    token: TYPES.PageFaultFilter,
    providedBy: 'backend',
    description: 'error-code filtering of #PF exits (VMX PFEC_MASK/PFEC_MATCH)',
  },
  NonPresentSpteEncoding: {
    name: 'NonPresentSpteEncoding',
    token: TYPES.NonPresentSpteEncoding,
    providedBy: 'mmu',
    description: 'trap / notrap encodings of non-present shadow ptes',
  },
};
