/**
 * The exit layer's error: a stable `code` says what went wrong, the message names the exit.
 * - `E_EXIT_UNRESOLVED`: no policy and no handler resolved the exit;
 * - `E_EXIT_DROPPED`: the exit did not reach the end of its pipeline (an operator filtered it out);
 * - `E_EXIT_DUPLICATED`: the exit came out of its pipeline more than once (an operator emitted it twice), so that
 *   its observers counted it twice;
 * - `E_POLICY_FAILED`: a policy threw while it looked at the exit (the MMU's handler and the observers throw
 *   their own errors, rethrown as they are);
 * - `E_PIPELINE_CLOSED`: an exit was pushed into a pipeline that had already failed (any error above: a dropped or
 *   duplicated exit included), that an operator completed, or whose VM was disposed (`Vm.dispose`);
 * - `E_BAD_RESOLUTION`: the resolution cannot be applied to this kind of exit.
 */
export type ExitErrorCode = 'E_EXIT_UNRESOLVED' | 'E_EXIT_DROPPED' | 'E_EXIT_DUPLICATED' | 'E_POLICY_FAILED' | 'E_PIPELINE_CLOSED' | 'E_BAD_RESOLUTION';

/** The exit layer's error class: `code` is one of ExitErrorCode, the message names the exit. */
export class ExitError extends Error {
  readonly code: ExitErrorCode;
  constructor(code: ExitErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ExitError';
    this.code = code;
  }
}
