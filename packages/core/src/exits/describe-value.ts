/** A value for a message, whatever it is: JSON.stringify throws on a BigInt or a cycle, a template on a Symbol. */
export function describeValue(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : String(v);
}
