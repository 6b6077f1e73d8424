/** The shadow MMU's error: a stable `code` and a message that names what ran out or broke. */
export class ShadowMmuError extends Error {
  readonly code: 'E_MMU_NOSPC' | 'E_MMU_STATE' | 'E_MMU_AUDIT' | 'E_MMU_OPTION';
  constructor(code: ShadowMmuError['code'], message: string) {
    super(message);
    this.name = 'ShadowMmuError';
    this.code = code;
  }
}
