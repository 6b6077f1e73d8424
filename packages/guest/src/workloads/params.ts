/**
 * Workload names and parameters: `NAME[:k=v,...]`, `kbuild` (the bundled trace) or a path ending in `.vxt`.
 */

/** Bad workload input: `input` is what the user wrote, the message says what is wrong with it. */
export class WorkloadError extends Error {
  constructor(
    readonly code: 'unknown-workload' | 'unknown-parameter' | 'bad-value' | 'too-small-memory' | 'too-much-work' | 'bad-config',
    readonly input: string,
    detail: string,
  ) {
    super(`workload '${input}': ${detail}`);
    this.name = 'WorkloadError';
  }
}

/** One parameter of a synthetic workload: its default and its inclusive range (`vmexit workloads` lists them). */
export interface ParamDef {
  readonly default: number;
  readonly min: number;
  readonly max: number;
  /** Whole numbers only. */
  readonly integer: boolean;
  readonly doc: string;
  /** A parameter that names one of these: given by name (or index), its value is the index (0..length-1). */
  readonly choices?: readonly string[];
}

/** A parsed workload reference. */
export type WorkloadRef =
  | { readonly kind: 'synthetic'; readonly name: string; readonly raw: Readonly<Record<string, string>>; readonly input: string }
  | { readonly kind: 'trace'; readonly name: string; readonly path: string | null; readonly input: string };

/** Splits `NAME[:k=v,...]`; a name ending in `.vxt` is a trace file, `kbuild` the bundled trace. */
export function parseWorkloadRef(input: string): WorkloadRef {
  const text = input.trim();
  if (text.length === 0) throw new WorkloadError('unknown-workload', input, 'the workload name is empty');
  if (text.toLowerCase().endsWith('.vxt')) return { kind: 'trace', name: text, path: text, input };
  const colon = text.indexOf(':');
  const name = colon < 0 ? text : text.slice(0, colon);
  const rest = colon < 0 ? '' : text.slice(colon + 1);
  if (name === 'kbuild') {
    if (rest.length > 0) throw new WorkloadError('unknown-parameter', input, 'the kbuild trace takes no parameters');
    return { kind: 'trace', name, path: null, input };
  }
  // No prototype: a parameter named like an Object.prototype member (`__proto__`, `toString`) is a key like any other
  // (an unknown one), not "given twice".
  const raw = Object.create(null) as Record<string, string>;
  if (rest.length > 0) {
    for (const part of rest.split(',')) {
      const eq = part.indexOf('=');
      if (eq <= 0) throw new WorkloadError('bad-value', input, `parameter '${part}' is not of the form key=value`);
      const k = part.slice(0, eq).trim();
      if (Object.hasOwn(raw, k)) throw new WorkloadError('bad-value', input, `parameter '${k}' is given twice`);
      raw[k] = part.slice(eq + 1).trim();
    }
  }
  return { kind: 'synthetic', name, raw, input };
}

const SUFFIX: Record<string, number> = { k: 1e3, m: 1e6, g: 1e9, ki: 1024, mi: 1024 ** 2, gi: 1024 ** 3 };

/** Parses one value: a number, optionally with k/M/G (powers of 10) or Ki/Mi/Gi (powers of 2). */
export function parseNumber(text: string): number {
  const m = /^(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)([kmg]i?)?$/i.exec(text);
  if (m === null) return NaN;
  return Number(m[1]) * (m[2] === undefined ? 1 : SUFFIX[m[2].toLowerCase()]!);
}

/** Checks and completes the parameters of a synthetic workload against its definitions. */
export function resolveParams(
  input: string,
  workload: string,
  defs: Readonly<Record<string, ParamDef>>,
  raw: Readonly<Record<string, string>>,
): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of Object.keys(raw)) {
    if (!Object.hasOwn(defs, k)) {
      const known = Object.keys(defs);
      throw new WorkloadError('unknown-parameter', input, `${workload} has no parameter '${k}' (it takes ${known.length === 0 ? 'none' : known.join(', ')})`);
    }
  }
  for (const [k, d] of Object.entries(defs)) {
    const text = raw[k];
    if (text === undefined) {
      out[k] = d.default;
      continue;
    }
    const choice = d.choices?.indexOf(text) ?? -1;
    if (choice >= 0) {
      out[k] = choice;
      continue;
    }
    const v = parseNumber(text);
    if (d.choices !== undefined && !(Number.isInteger(v) && v >= 0 && v < d.choices.length))
      throw new WorkloadError('bad-value', input, `parameter ${k}=${text} is not one of ${d.choices.join(', ')}`);
    if (!Number.isFinite(v)) throw new WorkloadError('bad-value', input, `parameter ${k}=${text} is not a number`);
    if (d.integer && !Number.isInteger(v)) throw new WorkloadError('bad-value', input, `parameter ${k}=${text} must be a whole number`);
    if (v < d.min || v > d.max) throw new WorkloadError('bad-value', input, `parameter ${k}=${text} is out of range (${d.min}..${d.max})`);
    out[k] = v;
  }
  return out;
}
