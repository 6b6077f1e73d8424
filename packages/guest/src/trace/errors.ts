/**
 * The one error class of the trace layer. `input` names the file (or log) at fault and `code` says what is
 * wrong with it; the message already contains both, so a CLI can print it as it is (exit 2).
 */
export class TraceError extends Error {
  constructor(
    /**
     * What is wrong: `not-vxt`, `version`, `truncated`, `corrupt`, `not-lackey`, `bad-line`, `inconsistent`, `io`;
     * `unsupported`: a valid recording that does something the trace and the guest model cannot replay (mremap).
     */
    readonly code: 'not-vxt' | 'version' | 'truncated' | 'corrupt' | 'not-lackey' | 'bad-line' | 'inconsistent' | 'io' | 'unsupported',
    /** The input (file name) the problem is in. */
    readonly input: string,
    detail: string,
  ) {
    super(`${input}: ${detail}`);
    this.name = 'TraceError';
  }
}
