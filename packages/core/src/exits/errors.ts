/**
 * The exit layer's error: a stable `code` says what went wrong, the message names the exit.
 * - `E_EXIT_UNRESOLVED`: no policy and no handler resolved the exit;
 * - `E_EXIT_DROPPED`: the exit did not reach the end of its pipeline (an operator filtered it out);
 * - `E_POLICY_FAILED`: a policy threw while it looked at the exit;
 * - `E_PIPELINE_CLOSED`: an exit was pushed into a pipeline that had already failed;
 * - `E_BAD_RESOLUTION`: the resolution cannot be applied to this kind of exit.
 */
export type ExitErrorCode = 'E_EXIT_UNRESOLVED' | 'E_EXIT_DROPPED' | 'E_POLICY_FAILED' | 'E_PIPELINE_CLOSED' | 'E_BAD_RESOLUTION';

/** The exit layer's error class: `code` is one of ExitErrorCode, the message names the exit. */
export class ExitError extends Error {
  readonly code: ExitErrorCode;
  constructor(code: ExitErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ExitError';
    this.code = code;
  }
}
