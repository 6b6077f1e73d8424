import * as arch from '../arch/constants.js';
import * as emulation from '../machine/emulate.js';
import * as faultActions from '../machine/hooks.js';
import type { FaultAction, VcpuHooks } from '../machine/hooks.js';
import { hexU64 as hex } from '../arch/hex.js';
import { MachineError } from '../machine/errors.js';
import type { Vcpu } from '../machine/vcpu.js';
import * as pagingTypes from '../paging/types.js';
import { WalkResult } from '../paging/types.js';
import { walk } from '../paging/walker.js';
import { ExitError } from '../exits/errors.js';
import { ExitChannel, exitPipeline } from '../exits/pipeline.js';
import type { StatCell, Stats } from '../exits/stats.js';
import type { MonoTypeOperatorFunction } from 'rxjs';
import { assertNever, describeExit, RESUME, type ExceptionExit, type ExitResolution, type HardwareExitBuffer, type VmExit } from '../exits/vm-exit.js';
import type { Backend } from './backend.js';
import type { Mmu } from './mmu.js';

// Module-local copies of the imported constants (and leaf helpers) the access and exit paths use. V8 folds a module's
// own constants into its compiled code, but reads an imported binding through its module cell, with a check, on
// every use (DESIGN.md, "Speed").
const { ACC_FETCH, ACC_MASK, ACC_READ, ACC_WRITE, GP_VECTOR, PF_VECTOR, PFERR_PRESENT } = arch;
const { FAULT_DELIVER, FAULT_DONE, FAULT_RETRY } = faultActions;
const { WALK_PAGE_FAULT, WALK_SIDE_EFFECTS } = pagingTypes;
const { createEmulationOutcome, emulatePendingAccess, EMULATION_FAILED } = emulation;

/** Bit 32 / bit 33 of KVM's 64-bit fault error code (PFERR_GUEST_FINAL_MASK / PFERR_GUEST_PAGE_MASK, kvm_host.h). */
export const PFERR_GUEST_FINAL = 2 ** 32;
export const PFERR_GUEST_PAGE = 2 ** 33;

/**
 * The VM's side of the vCPU seam, one per vCPU: where an exit starts and where it ends. The route of one
 * exit (packages/core/DESIGN.md, "The route of one exit"):
 *
 * 1. the vCPU calls a hook (`exception`, `nestedFault`, `mmio`, `crWrite`, `crWriteFault`, `invlpg`);
 * 2. the hook asks the backend whether the event exits (VMX: exception bitmap with PFEC_MASK/MATCH,
 *    CR3-load exiting and the CR3-target list, INVLPG exiting; SVM: intercept bits) and for the hardware's
 *    account of it; an event that exits becomes a `VmExit`;
 * 3. `channel.push(exit)` sends it through this vCPU's exit pipeline (RxJS, synchronous): the policies'
 *    operators in order, then `handleExit` (the MMU's handler) for what they left, then the counters and
 *    observers. What comes out is the exit's `ExitResolution`;
 * 4. `act` carries the resolution out (inject through the backend's VM entry, emulate, exit to user space)
 *    and answers the vCPU with a `FaultAction`.
 *
 * One vocabulary per boundary: the vCPU and its hooks speak `FaultAction`; everything on the exit
 * pipeline (policies and the MMU's `handlePageFault`) speaks `ExitResolution`. An exception that does not
 * exit goes to the guest's IDT; a CR write or INVLPG that does not exit still tells the MMU
 * (exited = false). Nothing here allocates unless an event exits.
 */
export class VmHooks implements VcpuHooks<Vcpu> {
  private seq = 0;
  /**
   * Called after every exit of this vCPU once it is fully handled (resolution applied, emulation done),
   * before the guest runs again: where `--audit` checks the MMU (KVM's mmu_audit runs at the same points).
   */
  afterExit: ((exit: VmExit) => void) | null = null;
  private readonly emulation = createEmulationOutcome();
  /** The insn_emulation counter's cell, taken at the first emulation (Stats.cell). */
  private insnEmulation: StatCell | null = null;
  private readonly entry = { errorCode: 0 };
  /** The guest walk of `fixupPageFault` (created at its first use). */
  private fixupWalk: WalkResult | null = null;
  /**
   * The exception exit this vCPU reuses (null: none, every exit is a new object): see `reusableException`.
   * In flight from its push until its action is decided; an exit raised meanwhile (a guest handler's access
   * that exits while an injected exception is delivered) takes a new object.
   */
  private readonly scratch: ScratchExceptionExit | null;
  private scratchInFlight = false;

  /** This vCPU's exit pipeline: the policies' operators, then `handleExit`, then the observers. */
  readonly channel: ExitChannel;

  constructor(
    readonly vcpu: Vcpu,
    readonly backend: Backend,
    readonly state: unknown,
    readonly mmu: Mmu,
    readonly stats: Stats,
    policies: readonly MonoTypeOperatorFunction<VmExit>[],
    observers: readonly MonoTypeOperatorFunction<VmExit>[],
    options: VmHooksOptions = {},
  ) {
    this.channel = new ExitChannel(exitPipeline(policies, (exit) => this.handleExit(exit), observers, options.observe ?? null));
    this.scratch =
      options.reuseExits === true && backend.exceptionExitInto !== undefined
        ? {
            kind: 'exception',
            vcpu: vcpu.id,
            seq: 0,
            hw: { backend: backend.name, code: 0, name: '', fields: {} },
            vector: 0,
            errorCode: 0,
            address: 0,
            access: 0,
            resolution: null,
            resolvedBy: null,
          }
        : null;
    // V8 keeps a field that has only ever held numbers as an unboxed double, and every read of it that is passed on
    // (`handleExit` hands `address` to the MMU's fault handler) boxes it in a new heap number: an allocation per exit.
    // A field that once held something else is a plain slot: it keeps the number `exception` was given as it is,
    // and passing it on allocates nothing.
    if (this.scratch !== null) {
      (this.scratch as { address: unknown }).address = null;
      this.scratch.address = 0;
    }
  }

  exception(vcpu: Vcpu, vector: number, errorCode: number, address: number, access: number): FaultAction {
    if (!this.backend.exceptionExits(this.state, vector, errorCode >>> 0)) return FAULT_DELIVER;
    vcpu.clearGuestWalk();
    const scratch = this.scratch;
    // Nothing outside the pipeline can keep the exit (no tracer, recorder, audit hook or `exits$` subscriber;
    // policies see an exit only while it is in the pipeline): refill this vCPU's one exception exit.
    if (scratch !== null && !this.scratchInFlight && this.afterExit === null && !this.channel.observed) {
      this.backend.exceptionExitInto!(this.state, vector, errorCode, address, scratch.hw);
      scratch.seq = ++this.seq;
      scratch.vector = vector;
      scratch.errorCode = errorCode;
      scratch.address = address;
      scratch.access = access;
      scratch.resolution = null;
      scratch.resolvedBy = null;
      this.scratchInFlight = true;
      const action = this.act(scratch, this.channel.push(scratch), vector, address);
      this.scratchInFlight = false;
      return action;
    }
    const hw = this.backend.exceptionExit(this.state, vector, errorCode, address);
    const exit: VmExit = { kind: 'exception', vcpu: vcpu.id, seq: ++this.seq, hw, vector, errorCode, address, access, resolution: null, resolvedBy: null };
    return this.done(exit, this.act(exit, this.channel.push(exit), vector, address));
  }

  nestedFault(vcpu: Vcpu, address: number, access: number, r: WalkResult): FaultAction {
    // A second-stage fault always exits (SDM Vol. 3C §29.3.3; APM Vol. 2 §15.25.6); the hypervisor's error
    // code comes from the exit's fields (VMX handle_ept_violation / handle_ept_misconfig, SVM npf_interception).
    const gpa = r.nestedGpa;
    vcpu.clearGuestWalk();
    const hw = this.backend.nestedFaultExit(this.state, r, address);
    if (r.nestedPmlFull) {
      // A PML-full event (SDM Vol. 3C §29.3.6), exit reason 62: the hypervisor empties the log (Mmu.pmlFull).
      const exit: VmExit = {
        kind: 'nested-fault',
        vcpu: vcpu.id,
        seq: ++this.seq,
        hw,
        gpa,
        address,
        access,
        errorCode: 0,
        pmlFull: true,
        resolution: null,
        resolvedBy: null,
      };
      return this.done(exit, this.act(exit, this.channel.push(exit), PF_VECTOR, address));
    }
    const errorCode = this.backend.nestedFaultErrorCode(this.state);
    const exit: VmExit = { kind: 'nested-fault', vcpu: vcpu.id, seq: ++this.seq, hw, gpa, address, access, errorCode, resolution: null, resolvedBy: null };
    return this.done(exit, this.act(exit, this.channel.push(exit), PF_VECTOR, address));
  }

  mmio(vcpu: Vcpu, gpa: number, access: number): FaultAction {
    const address = vcpu.pendingVa;
    vcpu.clearGuestWalk();
    const hw = this.backend.mmioExit(this.state, gpa, address, access);
    const exit: VmExit = { kind: 'mmio', vcpu: vcpu.id, seq: ++this.seq, hw, gpa, address, access, resolution: null, resolvedBy: null };
    return this.done(exit, this.act(exit, this.channel.push(exit), GP_VECTOR, address));
  }

  crWrite(vcpu: Vcpu, cr: number, oldValue: number, operand: number): void {
    const value = cr === 0 ? vcpu.cr0 : cr === 3 ? vcpu.cr3 : cr === 4 ? vcpu.cr4 : vcpu.efer;
    // The exit is decided on the operand (VMX compares the source operand with the read shadow under the guest/host
    // mask, SDM Vol. 3C §26.1.3: CR0's reserved bits, which the load ignores, still count); the handler loads the value.
    if (!this.backend.crWriteExits(this.state, cr, cr === 0 || cr === 4 ? operand : value)) {
      this.mmu.crWritten(vcpu, cr, oldValue, false);
      return;
    }
    const hw = this.backend.crWriteExit(this.state, cr, value);
    const exit: VmExit = { kind: 'cr-write', vcpu: vcpu.id, seq: ++this.seq, hw, cr, value, oldValue, faulted: false, resolution: null, resolvedBy: null };
    this.actNoFault(exit, this.channel.push(exit));
    this.done(exit, FAULT_RETRY);
  }

  /**
   * A MOV to CR whose checks failed (VcpuHooks.crWriteFault). When the backend intercepts the write (VMX
   * CR3-load exiting / the CR0/CR4 guest-host masks, SVM CR write intercepts), it exits first: SDM Vol. 3C
   * §26.1.1 (§25.1.1 in older editions), "Relative Priority of Faults and VM Exits", gives only #UD,
   * faults based on privilege level and I/O-permission #GPs priority over a VM exit, and "fault-like VM
   * exits have priority over exceptions other than those"; AMD checks instruction intercepts before the
   * instruction's operand-dependent exceptions (APM Vol. 2 §15.7). The handler then does what KVM's does:
   * kvm_set_cr3 (kvm_set_cr0/cr4 likewise) -> load_pdptrs fails -> kvm_complete_insn_gp injects #GP(0), and
   * the MMU hears nothing (kvm_mmu_new_pgd is never reached). Otherwise the write faults in the guest, and
   * its #GP is an ordinary exception (which exits only by the exception bitmap / intercepts).
   */
  crWriteFault(vcpu: Vcpu, cr: number, value: number): FaultAction {
    if (!this.backend.crWriteExits(this.state, cr, value)) return this.exception(vcpu, GP_VECTOR, 0, 0, ACC_READ);
    const oldValue = cr === 0 ? vcpu.cr0 : cr === 3 ? vcpu.cr3 : cr === 4 ? vcpu.cr4 : vcpu.efer;
    const hw = this.backend.crWriteExit(this.state, cr, value);
    const exit: VmExit = { kind: 'cr-write', vcpu: vcpu.id, seq: ++this.seq, hw, cr, value, oldValue, faulted: true, resolution: null, resolvedBy: null };
    const res = this.channel.push(exit);
    if (res.kind !== 'inject') {
      throw new ExitError(
        'E_BAD_RESOLUTION',
        `${describeExit(exit)} was resolved as '${res.kind}' by ${exit.resolvedBy}: a faulting CR write can only inject its #GP`,
      );
    }
    return this.done(exit, this.act(exit, res, GP_VECTOR, 0));
  }

  invlpg(vcpu: Vcpu, va: number): void {
    if (!this.backend.invlpgExits(this.state)) {
      this.mmu.invlpg(vcpu, va, false);
      return;
    }
    const hw = this.backend.invlpgExit(this.state, va);
    const exit: VmExit = { kind: 'invlpg', vcpu: vcpu.id, seq: ++this.seq, hw, va, resolution: null, resolvedBy: null };
    this.actNoFault(exit, this.channel.push(exit));
    this.done(exit, FAULT_RETRY);
  }

  /**
   * The MMU's handler: resolves what no policy resolved. #PF and second-stage faults go to
   * `mmu.handlePageFault` (KVM `kvm_mmu_page_fault`); other intercepted exceptions are reflected to the guest
   * (KVM `handle_exception_nmi` queues them back); a CR write or INVLPG exit was already carried out by the
   * vCPU, so the handler brings the control state up to date and tells the MMU (exited = true); an MMIO
   * access exits to user space.
   */
  handleExit(exit: VmExit): ExitResolution {
    const vcpu = this.vcpu;
    switch (exit.kind) {
      case 'exception':
        if (exit.vector === PF_VECTOR) {
          // Under TDP a #PF exits only where the backend intercepts it for a guest MAXPHYADDR below the host's
          // (VMX vmx_need_pf_intercept): KVM's handle_exception_nmi does not call the MMU then.
          if (this.mmu.name === 'tdp') return this.fixupPageFault(exit.address, exit.errorCode);
          return this.mmu.handlePageFault(vcpu, exit.address, exit.errorCode);
        }
        return { kind: 'inject', vector: exit.vector, errorCode: exit.errorCode };
      case 'nested-fault':
        if (exit.pmlFull === true) {
          if (this.mmu.pmlFull === undefined) throw new ExitError('E_BAD_RESOLUTION', `${describeExit(exit)}: the ${this.mmu.name} MMU keeps no PML log`);
          return this.mmu.pmlFull(vcpu);
        }
        return this.mmu.handlePageFault(vcpu, exit.gpa, exit.errorCode);
      case 'cr-write':
        // KVM handle_cr -> kvm_set_cr3 / kvm_set_cr0 / kvm_set_cr4: a failed PDPTE load is #GP(0), nothing changes.
        if (exit.faulted) return { kind: 'inject', vector: GP_VECTOR, errorCode: 0 };
        this.backend.crWriteHandled(this.state, exit.cr, exit.value);
        this.mmu.crWritten(vcpu, exit.cr, exit.oldValue, true);
        return RESUME;
      case 'invlpg':
        this.mmu.invlpg(vcpu, exit.va, true);
        return RESUME;
      case 'mmio':
        return { kind: 'userspace', reason: 'mmio', gpa: exit.gpa };
      default:
        return assertNever(exit);
    }
  }

  /**
   * An intercepted #PF under TDP (KVM vmx.c handle_exception_nmi with enable_ept -> x86.c
   * kvm_fixup_and_inject_pf_error): the processor walked the guest's tables with the host's MAXPHYADDR, so a
   * present fault may hide a reserved bit that the guest's smaller MAXPHYADDR makes. KVM walks the guest's
   * tables itself (walk_mmu->gva_to_gpa, under the guest's MAXPHYADDR, for the W/U/I-D bits of the error code)
   * and injects that walk's fault; when the fault is not present, or its own walk succeeds, it injects the
   * processor's error code. The walk has the emulator's side effects (FNAME(walk_addr_generic) sets accessed and
   * dirty flags only after a walk that succeeds, which cannot follow a present fault on the same tables here).
   */
  private fixupPageFault(address: number, errorCode: number): ExitResolution {
    if ((errorCode & PFERR_PRESENT) !== 0) {
      const r = (this.fixupWalk ??= new WalkResult());
      const vcpu = this.vcpu;
      if (walk(vcpu.ctx, vcpu.memory, address, errorCode & ACC_MASK, WALK_SIDE_EFFECTS, r) === WALK_PAGE_FAULT)
        return { kind: 'inject', vector: PF_VECTOR, errorCode: r.errorCode };
    }
    return { kind: 'inject', vector: PF_VECTOR, errorCode };
  }

  /**
   * Turns the resolution of a faulting access's exit into the vCPU's answer. `hookVector` is the vector the
   * vCPU raises on FAULT_DELIVER for this hook; an injection of another vector is raised here.
   */
  private act(exit: VmExit, res: ExitResolution, hookVector: number, address: number): FaultAction {
    const vcpu = this.vcpu;
    switch (res.kind) {
      case 'resume':
        return FAULT_RETRY;
      case 'inject': {
        // VM entry with the event in the VM-entry interruption-information field / EVENTINJ.
        this.backend.injectException(this.state, res.vector, res.errorCode);
        const vector = this.backend.vmEntry(this.state, this.entry);
        const errorCode = this.entry.errorCode;
        if (vector === PF_VECTOR) this.stats.add('pf_guest'); // KVM kvm_inject_page_fault (x86.c)
        if (vector === hookVector) {
          vcpu.deliverErrorCode = errorCode;
          return FAULT_DELIVER;
        }
        vcpu.raise(vector, errorCode, address);
        return FAULT_RETRY;
      }
      case 'emulate':
        return this.emulate(address, hookVector);
      case 'userspace':
        if (exit.kind === 'mmio') {
          this.stats.add('mmio_exits'); // KVM: an MMIO exit to user space (x86.c, vcpu_mmio_*)
          return FAULT_DONE; // the vCPU completes it as an open-bus access
        }
        // A #PF / second-stage fault at a gpa the MMU found to be MMIO or read-only RAM: KVM emulates the
        // instruction, and exits to user space when the emulated access is MMIO. It need not be: a second-stage
        // fault on a guest paging-structure entry in read-only RAM (its A/D update, SDM Vol. 3C §29.3.3.2)
        // emulates an access whose own gpa may well be RAM (the emulator's walk leaves that entry's flags alone).
        this.stats.add('insn_emulation');
        if (emulatePendingAccess(this.vcpu, this.mmu, this.emulation).mmio === true) this.stats.add('mmio_exits');
        return this.emulationAction(address, hookVector);
      default:
        return assertNever(res);
    }
  }

  /** KVM x86_emulate_instruction after RET_PF_EMULATE: the core emulator completes the access. */
  private emulate(address: number, hookVector: number): FaultAction {
    (this.insnEmulation ??= this.stats.cell('insn_emulation')).n++;
    const out = emulatePendingAccess(this.vcpu, this.mmu, this.emulation);
    // Completed as MMIO (no memslot, or a store to read-only RAM: KVM_MEM_READONLY): an exit to user space.
    if (out.action === FAULT_DONE && out.mmio === true) this.stats.add('mmio_exits');
    return this.emulationAction(address, hookVector);
  }

  /**
   * After the emulator ran. A failure is retried only when the MMU unprotected a shadowed guest page table at
   * the gpa (a page table recycled as data: the guest may then do the store itself); any other failure would
   * fail again on every retry, so it stops the run, as KVM reports it to user space (x86.c
   * x86_emulate_instruction -> reexecute_instruction / kvm_mmu_unprotect_page, else
   * handle_emulation_failure -> KVM_EXIT_INTERNAL_ERROR, KVM_INTERNAL_ERROR_EMULATION).
   */
  private emulationAction(address: number, hookVector: number): FaultAction {
    const out = this.emulation;
    if (out.action === EMULATION_FAILED) {
      this.stats.add('insn_emulation_fail');
      if (this.mmu.emulationFailed(this.vcpu, out.gpa)) return FAULT_RETRY;
      const v = this.vcpu;
      throw new MachineError(
        'emulation-failure',
        `vCPU ${v.id}: emulation failed for the ${v.pendingSize}-byte ${accessName(v.pendingAccess)} of ${hex(v.pendingVa)} (gpa ${hex(out.gpa)}), ` +
          'which is not a shadowed page table that could be unprotected: KVM_EXIT_INTERNAL_ERROR (KVM_INTERNAL_ERROR_EMULATION)',
      );
    }
    if (out.action === FAULT_DELIVER) {
      // The guest's own walk faulted during emulation: inject that exception (emulator inject_emulated_exception).
      if (out.vector === PF_VECTOR) this.stats.add('pf_guest');
      if (out.vector === hookVector) return FAULT_DELIVER;
      this.vcpu.raise(out.vector, this.vcpu.deliverErrorCode, address);
      return FAULT_RETRY;
    }
    return out.action;
  }

  private done(exit: VmExit, action: FaultAction): FaultAction {
    if (this.afterExit !== null) this.afterExit(exit);
    return action;
  }

  /** A CR write or INVLPG exit: the instruction already took effect, so only resume (or emulate) is valid. */
  private actNoFault(exit: VmExit, res: ExitResolution): void {
    if (res.kind !== 'resume' && res.kind !== 'emulate') {
      throw new ExitError(
        'E_BAD_RESOLUTION',
        `${describeExit(exit)} was resolved as '${res.kind}' by ${exit.resolvedBy}: a CR write or INVLPG exit can only resume`,
      );
    }
  }
}

/** How a vCPU's hooks are built. */
export interface VmHooksOptions {
  /**
   * Nothing but the pipeline sees an exit (no tracer or recorder bound): an exception exit may be one object
   * refilled for every exit while nothing subscribes to the channel's output (no allocation per exit).
   */
  readonly reuseExits?: boolean;
  /** Called with every exit once resolved, in the handler's link (`exitPipeline`'s `observe`), before `observers`. */
  readonly observe?: (exit: VmExit) => void;
}

/** An exception exit that VmHooks refills (its fields writable, its description a buffer). */
type ScratchExceptionExit = { -readonly [K in keyof ExceptionExit]: ExceptionExit[K] } & { hw: HardwareExitBuffer };

/** A PFERR_* access kind in words, for messages. */
function accessName(access: number): string {
  return (access & ACC_WRITE) !== 0 ? 'store' : (access & ACC_FETCH) !== 0 ? 'fetch' : 'load';
}
