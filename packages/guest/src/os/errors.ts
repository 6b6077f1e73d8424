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

/** An address for a message: `0x` and lowercase hex (negative numbers keep their sign). */
export function hexa(n: number): string {
  return n < 0 ? `-0x${(-n).toString(16)}` : `0x${n.toString(16)}`;
}
