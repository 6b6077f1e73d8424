/** The kernel reached a state Linux would oops on (a fault in kernel mode, a reserved-bit fault). */
export class KernelPanic extends Error {
  constructor(message: string) {
    super(`guest kernel panic: ${message}`);
    this.name = 'KernelPanic';
  }
}

/** A bad kernel configuration (mode, memory size, personality), reported before the guest boots. */
export class GuestConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestConfigError';
  }
}
