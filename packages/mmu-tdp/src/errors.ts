/** The TDP MMU's error: a stable `code` and a message that names what is wrong. */
export class TdpMmuError extends Error {
  readonly code: 'E_MMU_STATE' | 'E_MMU_AUDIT' | 'E_MMU_OPTION';
  constructor(code: TdpMmuError['code'], message: string) {
    super(message);
    this.name = 'TdpMmuError';
    this.code = code;
  }
}
