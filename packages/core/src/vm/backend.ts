import type { HardwareExit, HardwareExitBuffer } from '../exits/vm-exit.js';
import type { PhysicalMemory } from '../memory/physical.js';
import type { SecondStage, WalkResult } from '../paging/types.js';
import type { PmlLog } from '../paging/pml.js';
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
  /**
   * Creates a vCPU's control state, set up as KVM sets it up for this MMU mode and, when given, the vCPU's
   * MAXPHYADDR as the guest is told it (`maxPhyAddr`) and the processor's (`hostMaxPhyAddr`): KVM intercepts
   * #PF on VMX with EPT when the guest's is the smaller (vmx.c vmx_need_pf_intercept, allow_smaller_maxphyaddr).
   */
  createState(vcpuId: number, mmu: MmuMode, cpu?: { readonly maxPhyAddr: number; readonly hostMaxPhyAddr: number }): S;
  /** Whether an exception of `vector` with `errorCode` (32-bit) exits instead of going to the guest's IDT. */
  exceptionExits(state: S, vector: number, errorCode: number): boolean;
  /** Whether MOV to CR0/CR3/CR4 (`cr` = 0, 3, 4) or WRMSR EFER (`cr` = 0xc0000080) of `value` exits. */
  crWriteExits(state: S, cr: number, value: number): boolean;
  /** Whether INVLPG exits. */
  invlpgExits(state: S): boolean;
  /** Records an exception exit in the control state's exit fields and describes it. */
  exceptionExit(state: S, vector: number, errorCode: number, address: number): HardwareExit;
  /**
   * As `exceptionExit`, with the description written into `out` (which the caller owns and reuses: the same
   * values, and the same fields in the same order, as `exceptionExit` returns), so that an exit allocates
   * nothing (optional: without it the VM allocates a description per exit).
   */
  exceptionExitInto?(state: S, vector: number, errorCode: number, address: number, out: HardwareExitBuffer): void;
  /** A CR (or EFER) write exit. */
  crWriteExit(state: S, cr: number, value: number): HardwareExit;
  /** An INVLPG exit. */
  invlpgExit(state: S, va: number): HardwareExit;
  /**
   * A second-stage fault (VMX: EPT violation or EPT misconfiguration; SVM: #VMEXIT(NPF)), from what the walk
   * recorded in `fault` (`nestedGpa`, `nestedFinal`, `nestedCode`, `nestedRights`, `nestedAccess`,
   * `nestedMisconfig`, and the guest's rights of the linear address for a final access); `address` is the
   * guest-linear address being translated. Writes the control state's exit fields and describes them.
   */
  nestedFaultExit(state: S, fault: WalkResult, address: number): HardwareExit;
  /**
   * The fault error code the hypervisor derives from the last second-stage exit's fields, as KVM passes it to
   * `kvm_mmu_page_fault`: PFERR bits plus 2^32 (PFERR_GUEST_FINAL_MASK) or 2^33 (PFERR_GUEST_PAGE_MASK);
   * RSVD alone for an EPT misconfiguration (VMX `handle_ept_violation` / `handle_ept_misconfig`, SVM
   * `npf_interception`).
   */
  nestedFaultErrorCode(state: S): number;
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
  /**
   * Points the second stage at `root` (VMX EPT pointer, SVM nCR3) and enables it: `levels` 4 (default) or 5
   * (KVM uses 5-level TDP only when the guest's MAXPHYADDR is above 48, `kvm_mmu_get_tdp_level`; SVM: the
   * host's paging mode), `accessedDirty` the EPT A/D flags (EPTP bit 6; KVM `enable_ept_ad_bits`; NPT always
   * has them).
   */
  setNestedRoot(state: S, root: number, options?: NestedRootOptions): void;
  /**
   * The second stage as the hardware walks it under `state` (its EPTP / nCR3), over the second-stage tables
   * in `hostMem`, with the processor's MAXPHYADDR: what the TDP MMU hands to `Vcpu.setSecondStage`. Throws a
   * RangeError when the second stage is not enabled or its pointer is invalid (a VM-entry failure).
   */
  createSecondStage(state: S, hostMem: PhysicalMemory, hostMaxPhyAddr: number): SecondStage;
}

/** How the second stage is set up (`Backend.setNestedRoot`). */
export interface NestedRootOptions {
  readonly levels?: 4 | 5;
  readonly accessedDirty?: boolean;
}

/**
 * Capability: VMX's #PF filtering by error code (SDM Vol. 3C §25.2, "Exception Bitmap": a #PF exits iff bit 14
 * of the exception bitmap XOR (PFEC & PFEC_MASK != PFEC_MATCH)). AMD SVM has no equivalent: its #PF intercept
 * is all or nothing (APM Vol. 2 §15.12), so backend-svm does not bind this.
 */
export interface PageFaultFilter {
  /** Sets the VMCS PFEC_MASK and PFEC_MATCH fields of one vCPU (`state` is its backend state) to `mask` and `match`. */
  setPfecMaskMatch(state: unknown, mask: number, match: number): void;
}

/**
 * Capability: the MMU can install two kinds of non-present shadow pte, one that traps to the hypervisor and
 * one that does not (KVM `kvm_mmu_set_nonpresent_ptes(trap, notrap)`, commit c7addb902054). Values are 64-bit
 * ptes as low/high 32-bit halves (no BigInt).
 */
export interface NonPresentSpteEncoding {
  /**
   * Sets the two non-present spte values the MMU installs from now on: `trap*` exits on a fault, `notrap*` (reserved bits set) lets the #PF reach the
   * guest.
   */
  setNonPresentSptes(trapLo: number, trapHi: number, notrapLo: number, notrapHi: number): void;
}

/**
 * Capability: KVM's fast page fault (arch/x86/kvm/mmu/mmu.c `fast_page_fault`): write-protect faults under
 * dirty logging fixed by an spte compare-and-swap without `mmu_lock`. Bound by mmu-shadow (direct pages) and mmu-tdp.
 */
export interface FastPageFaultControl {
  /** Turns the fast path on or off for the whole VM (off by default; the `fast-page-fault` policy turns it on). */
  setFastPageFault(on: boolean): void;
}

/**
 * Capability (backend): page-modification logging, Intel SDM Vol. 3C §29.3.6 (KVM vmx.c `enable_pml`). Bound
 * only by backend-vmx: AMD SVM has no PML.
 */
export interface PageModificationLogging<S = unknown> {
  /**
   * Turns PML on in the vCPU's control state `state` (the "enable PML" secondary control, the PML address, the
   * PML index at 511) for its second stage `stage` and returns the log the processor writes. Throws when the
   * stage has no EPT accessed and dirty flags (EPTP bit 6), which PML needs.
   */
  enablePml(state: S, stage: SecondStage): PmlLog;
}

/**
 * Capability (MMU): dirty logging through the processor's own log (KVM `kvm_x86_ops.cpu_dirty_log_size`): the
 * MMU clears dirty flags instead of write-protecting, and empties each vCPU's log into the dirty log. Bound by
 * mmu-tdp (the logged addresses are guest-physical: a second-stage idea).
 */
export interface CpuDirtyLogControl {
  /** Turns it on for every vCPU, with the backend's PML (the `pml` policy wires the two). */
  enableCpuDirtyLog(pml: PageModificationLogging): void;
}

/** Who provides a capability: the backend's module or the MMU's module. */
export type CapabilityProvider = 'backend' | 'mmu';

/** One entry of CAPABILITIES: the name a policy puts in `needs`, its DI token, which module binds it, and what it does. */
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
  ShadowPageTables: {
    name: 'ShadowPageTables',
    token: TYPES.ShadowPageTables,
    providedBy: 'mmu',
    description: "shadow page tables built from the guest's, with its page-table writes trapped and emulated: a shadow-paging idea",
  },
  FastPageFault: {
    name: 'FastPageFault',
    token: TYPES.FastPageFault,
    providedBy: 'mmu',
    description: "KVM's lock-free fast page fault (spte cmpxchg outside mmu_lock)",
  },
  PageModificationLogging: {
    name: 'PageModificationLogging',
    token: TYPES.PageModificationLogging,
    providedBy: 'backend',
    description: 'page-modification logging of EPT dirty flags (VMX PML, SDM Vol. 3C §29.3.6; SVM has no PML)',
  },
  CpuDirtyLogging: {
    name: 'CpuDirtyLogging',
    token: TYPES.CpuDirtyLogging,
    providedBy: 'mmu',
    description: "dirty logging through the processor's log of guest-physical addresses (needs two-dimensional paging; the shadow MMU has none)",
  },
};
