/**
 * Errors that a caller reports without a stack trace. `InputError` is bad input or usage (the CLI exits 2);
 * `RunFailure` is a run that completed and found a failure (exit 1: a conformance vector that failed, a
 * --check divergence). The CLI re-exports these, so `instanceof` holds across both packages.
 */
export class InputError extends Error {
  readonly exitCode = 2;
  constructor(message: string) {
    super(message);
    this.name = 'InputError';
  }
}

export class RunFailure extends Error {
  readonly exitCode = 1;
  constructor(message: string) {
    super(message);
    this.name = 'RunFailure';
  }
}
