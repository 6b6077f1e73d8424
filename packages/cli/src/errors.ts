/**
 * Errors the CLI reports without a stack trace. `InputError` is bad input or usage (exit 2); `RunFailure`
 * is a run that completed and found a failure (exit 1: a conformance vector that failed, a --check divergence).
 * They are @vmexit/lab's, so that an error lab throws is the same class here.
 */
export { InputError, RunFailure } from '@vmexit/lab';
