/**
 * The VMX backend's error: a stable `code` and a message that names the input.
 * - `E_BACKEND_UNKNOWN_EXIT`: an exit reason this backend has no name for;
 * - `E_BACKEND_NO_RULE`: a control register (or MSR) for which the backend has no exit rule;
 * - `E_BACKEND_STATE`: a call that the VMCS's state does not allow (a second stage asked for with it off, a
 *   second-stage error code asked of an exit that is not a second-stage exit): a bug of the caller.
 */
export type BackendErrorCode = 'E_BACKEND_UNKNOWN_EXIT' | 'E_BACKEND_NO_RULE' | 'E_BACKEND_STATE';

/** Thrown by the VMX backend, with one of the codes above. */
export class BackendError extends Error {
  readonly code: BackendErrorCode;
  constructor(code: BackendErrorCode, message: string) {
    super(message);
    this.name = 'BackendError';
    this.code = code;
  }
}
