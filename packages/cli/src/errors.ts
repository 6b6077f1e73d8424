/**
 * Errors the CLI reports without a stack trace. They are @vmexit/lab's, so that an error lab throws is the
 * same class here.
 */
/** Bad input or usage: the CLI prints the message and exits 2 (no stack trace). */
export { InputError } from '@vmexit/lab';
/** A run that completed and found a failure (a conformance vector that failed, a --check divergence): exit 1. */
export { RunFailure } from '@vmexit/lab';
