/**
 * The DI tokens of a VM's composition (inversify 8). `Symbol.for` so that a package outside the monorepo
 * (a third-party policy) can bind to the same token without importing `@vmexit/core`:
 * `bind(Symbol.for('vmexit.FaultPolicy')).toConstantValue(policy)`.
 */
export const TYPES = {
  /** The `Backend` (VMX or SVM); bound by @vmexit/backend-vmx or @vmexit/backend-svm. */
  Backend: Symbol.for('vmexit.Backend'),
  /** The `Mmu` (shadow or tdp); bound by @vmexit/mmu-shadow or @vmexit/mmu-tdp. */
  Mmu: Symbol.for('vmexit.Mmu'),
  /** `FaultPolicy` definitions, multi-bound: every policy package binds its own. */
  FaultPolicy: Symbol.for('vmexit.FaultPolicy'),
  /** Capability: #PF exits filtered by error code (VMX PFEC_MASK/PFEC_MATCH). Bound only by backend-vmx. */
  PageFaultFilter: Symbol.for('vmexit.PageFaultFilter'),
  /** Capability: the MMU can encode non-present shadow ptes as trap / notrap values (KVM 2007 bypass). */
  NonPresentSpteEncoding: Symbol.for('vmexit.NonPresentSpteEncoding'),
  /**
   * Capability: the MMU builds shadow page tables from the guest's own (write-protected guest page tables,
   * emulated guest pte writes, unsync pages). Bound by @vmexit/mmu-shadow; not under TDP, where the guest's
   * tables are walked by the hardware and the hypervisor never sees a guest pte write.
   */
  ShadowPageTables: Symbol.for('vmexit.ShadowPageTables'),
  /** Capability: the MMU has KVM's lock-free fast page fault (`FastPageFaultControl`). */
  FastPageFault: Symbol.for('vmexit.FastPageFault'),
  /** Capability: the MMU write-protects for dirty logging (`DirtyLogMmu`, core/src/mmu/dirty-log.ts) and takes the VM's dirty log. */
  DirtyLogMmu: Symbol.for('vmexit.DirtyLogMmu'),
  /** Capability: VMX page-modification logging (`PageModificationLogging`, SDM Vol. 3C §29.3.6). Bound only by backend-vmx: SVM has no PML. */
  PageModificationLogging: Symbol.for('vmexit.PageModificationLogging'),
  /** Capability: the MMU logs dirty pages through the processor's log, clearing dirty flags instead of write-protecting (`CpuDirtyLogControl`). Bound by mmu-tdp. */
  CpuDirtyLogging: Symbol.for('vmexit.CpuDirtyLogging'),
  /** Observers: the exit tracer and the exit recorder (no-ops by default, see core's `coreModule`). */
  ExitTracer: Symbol.for('vmexit.ExitTracer'),
  ExitRecorder: Symbol.for('vmexit.ExitRecorder'),
} as const;
