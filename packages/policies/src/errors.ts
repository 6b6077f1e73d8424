/**
 * A policy that cannot run in the VM it was composed into (a backend or MMU that lacks what it relies on),
 * or was given options it cannot use. `code` is stable; the message names the policy and the reason.
 */
export class PolicyError extends Error {
  readonly code: 'E_POLICY_UNSUPPORTED';
  constructor(message: string) {
    super(message);
    this.name = 'PolicyError';
    this.code = 'E_POLICY_UNSUPPORTED';
  }
}
