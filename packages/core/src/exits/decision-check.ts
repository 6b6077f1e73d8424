/**
 * Whether `d` may be the decision of an MMU event of `kind` (an MmuEventKind, a string here so that this module
 * imports nothing): one check for `decideMmuEvents`' answers and for the decision an event leaves the policies with
 * (`mmuEventPipeline`). A pte-write event's is one of its three strings, every other kind's a boolean.
 */
export function isDecisionOf(kind: string, d: unknown): boolean {
  return kind === 'pte-write' ? d === 'zap-spte' || d === 'update-spte' || d === 'zap-page' : typeof d === 'boolean';
}

/** The decisions an event of `kind` (an MmuEventKind) may have, for a message. */
export function expectedDecisions(kind: string): string {
  return kind === 'pte-write' ? 'zap-spte, update-spte or zap-page' : 'true or false';
}

/** A value for a message, whatever it is: JSON.stringify throws on a BigInt or a cycle, a template on a Symbol. */
export function describeValue(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : String(v);
}
