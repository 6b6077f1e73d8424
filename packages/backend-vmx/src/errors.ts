/**
 * The VMX backend's error: a stable `code` and a message that names the input.
 * - `E_BACKEND_UNKNOWN_EXIT`: an exit reason this backend has no name for;
 * - `E_BACKEND_NO_RULE`: a control register (or MSR) for which the backend has no exit rule.
 */
export type BackendErrorCode = 'E_BACKEND_UNKNOWN_EXIT' | 'E_BACKEND_NO_RULE';

export class BackendError extends Error {
  readonly code: BackendErrorCode;
  constructor(code: BackendErrorCode, message: string) {
    super(message);
    this.name = 'BackendError';
    this.code = code;
  }
}
