import type { Vcpu } from '../machine/vcpu.js';
import type { WriteTracker } from '../machine/emulate.js';
import type { MmuDecisionOf, MmuEvent, MmuEventKind } from '../exits/mmu-events.js';
import type { ExitResolution } from '../exits/vm-exit.js';
import type { StatCell } from '../exits/stats.js';
import type { Backend } from './backend.js';
import type { HostPages } from './variant.js';

/** The VM an MMU serves: its vCPUs (for remote TLB flushes) and counters. */
export interface MmuHost {
  readonly vcpus: readonly Vcpu[];
  /** Adds `n` to the KVM-named counter `name` of vCPU `vcpuId` (its merge gives the VM total). */
  count(vcpuId: number, name: string, n?: number): void;
  /**
   * The cell of vCPU `vcpuId`'s counter `name` (optional; `Stats.cell`): a hot path keeps it and adds to
   * `cell.n` with no lookup by name. Take it at the first add, as `count` would create the counter then.
   */
  counter?(vcpuId: number, name: string): StatCell;
  /**
   * An MMU-internal decision that policies may take over: the event goes through the vCPU's `mmuEvents`
   * pipeline (the policies, then `fallback`, the MMU's own choice, when none decides; then the counters and
   * observers), and its decision is the answer, typed by the event's kind.
   */
  decide<E extends MmuEvent>(event: E, fallback: MmuDecisionOf<E>): MmuDecisionOf<E>;
  /**
   * Asked before the event is built, so that the hot path allocates nothing (optional): true when nothing
   * would see an event of `kind` on vCPU `vcpuId` (no policy may decide that kind, no tracer or recorder is
   * bound). The host has then counted the event as `decide` would, and the MMU's own choice stands. False
   * (or no such method): build the event and call `decide`.
   */
  decideByDefault?(vcpuId: number, kind: MmuEventKind): boolean;
  /**
   * Whether every event of `kind` on vCPU `vcpuId` is decided by default, for the VM's life (optional): when
   * true, the MMU may ask once and from then on count each event itself as `mmu_events.<kind>` (through
   * `counter`, taken at the first event) and keep its own choice, exactly as `decideByDefault` would.
   */
  decidesByDefault?(vcpuId: number, kind: MmuEventKind): boolean;
  /**
   * Whether nothing outside vCPU `vcpuId`'s `mmuEvents` pipeline can keep an event it is handed now (optional;
   * no tracer or recorder is bound and nothing subscribes to `mmuEvents$`): the MMU may then pass one object
   * per kind to `decide`, refilled for every event, instead of a new one (the hot path allocates nothing). A
   * policy sees an event only while it is in the pipeline (an operator that holds one back fails the
   * pipeline), so it sees each event's own fields. Asked per event: a subscriber may come between runs.
   */
  reusesEvents?(vcpuId: number): boolean;
  /**
   * The backend below the VM (optional: a host without one serves only an MMU that programs no hardware).
   * The TDP MMU points each vCPU's second stage at its root through it (`Backend.setNestedRoot`,
   * `Backend.createSecondStage`), as KVM's `kvm_mmu_load` -> `kvm_x86_call(load_mmu_pgd)` does.
   */
  readonly backend?: Backend | null;
  /** The backend's control state (VMCS, VMCB) of vCPU `vcpuId`; present with `backend`. */
  backendState?(vcpuId: number): unknown;
  /**
   * The host page size backing guest RAM (the variant's `hostPages`), or undefined for 4 KiB: the largest
   * leaf a TDP MMU may map (KVM `kvm_mmu_max_mapping_level` follows the host mapping's level).
   */
  readonly hostPages?: HostPages;
}

/**
 * An MMU implementation: shadow paging (mmu-shadow) or two-dimensional paging (mmu-tdp). Bound to the
 * `TYPES.Mmu` token by the package's ContainerModule.
 */
export interface Mmu extends WriteTracker {
  readonly name: 'shadow' | 'tdp';
  /** Called once when the VM is built, before any vCPU runs. */
  init(host: MmuHost): void;
  /** Points `vcpu.activeCtx` / `vcpu.activeMem` at the tables the hardware walks for this vCPU. */
  attachVcpu(vcpu: Vcpu): void;
  /**
   * A page-fault exit that no policy resolved (#PF intercept: address = the linear address; TDP violation:
   * the gpa), KVM's `kvm_mmu_page_fault`. The answer is the exit's resolution, in the exit pipeline's own
   * terms (KVM's RET_PF_* results, arch/x86/kvm/mmu/mmu_internal.h): `resume` for RET_PF_FIXED /
   * RET_PF_RETRY (the translation was fixed, re-enter the guest), `inject` #PF with the guest walk's error
   * code (the guest's own fault), `emulate` for RET_PF_EMULATE (a write to a write-tracked gfn), `userspace`
   * MMIO for a gpa with no memslot (`kvm_handle_noslot_fault`).
   */
  handlePageFault(vcpu: Vcpu, address: number, errorCode: number): ExitResolution;
  /** After an emulated store of `size` bytes at `gpa` (KVM `kvm_mmu_track_write`), old and new values. */
  trackWrite(vcpu: Vcpu, gpa: number, size: number, oldLo: number, oldHi: number, newLo: number, newHi: number): void;
  /** After the guest changed CR0, CR3, CR4 or EFER (`cr` = 0, 3, 4, or 0xc0000080), whether or not it exited. */
  crWritten(vcpu: Vcpu, cr: number, oldValue: number, exited: boolean): void;
  /** After the guest executed INVLPG, whether or not it exited. */
  invlpg(vcpu: Vcpu, va: number, exited: boolean): void;
  /**
   * The emulator could not emulate an access that exited on a write-protected gfn (KVM:
   * `kvm_mmu_unprotect_page` on emulation failure, "unprotect a recycled page table"). Returns true when the
   * gfn was unprotected and the guest may simply re-execute the access.
   */
  emulationFailed(vcpu: Vcpu, gpa: number): boolean;
  /**
   * `--audit`: checks the MMU's invariants (KVM's mmu_audit.c and more) and throws at the first violation,
   * with a report of what is wrong. Called after every exit when a run audits.
   */
  audit?(): void;
  /**
   * A PML-full exit (VMX exit reason 62, KVM `handle_pml_full` after `vmx_flush_pml_buffer`): empty the vCPU's
   * page-modification log into the dirty log and resume. Only an MMU that turned PML on has it.
   */
  pmlFull?(vcpu: Vcpu): ExitResolution;
}
