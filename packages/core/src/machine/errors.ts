/**
 * The machine layer's error: something the guest cannot recover from, so the run stops. A stable `code`
 * says what happened, the message names the vCPU and the address:
 * - `paging-disabled`: an access with CR0.PG=0 (real mode is not modelled);
 * - `walk-status`: the walker returned a status the vCPU does not know (a bug, never a guest's doing);
 * - `fault-loop`: one access faulted again and again (the hypervisor "fixed" a fault that is still there);
 * - `triple-fault`: an exception with no handler, or nested too deep in handlers (SDM Vol. 3A §6.15,
 *   "Interrupt 8—Double Fault Exception": a fault while delivering a double fault shuts the processor down);
 * - `nested-fault`: a second-stage (EPT/NPT) fault reached a vCPU that runs without a hypervisor;
 * - `emulation-failure`: the hypervisor could not emulate an instruction it had to (KVM's
 *   KVM_EXIT_INTERNAL_ERROR with KVM_INTERNAL_ERROR_EMULATION);
 * - `zero-page`: a store reached the shared zero page with no guest page recorded for its TLB entry (a bug:
 *   every TLB fill that points at the zero page records its guest page).
 */
export type MachineErrorCode = 'paging-disabled' | 'walk-status' | 'fault-loop' | 'triple-fault' | 'nested-fault' | 'emulation-failure' | 'zero-page';

/** The machine layer's error class: `code` is one of MachineErrorCode, the message names the vCPU and the address. */
export class MachineError extends Error {
  readonly code: MachineErrorCode;
  constructor(code: MachineErrorCode, message: string) {
    super(message);
    this.name = 'MachineError';
    this.code = code;
  }
}

/**
 * Thrown by a guest exception handler when the faulting access cannot complete (the kernel sends SIGSEGV, or
 * the process exits): the access is abandoned. Not an error of the machine: the guest model catches it where
 * it runs the process.
 */
export class GuestAbort extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = 'GuestAbort';
  }
}
