import { z } from 'zod';

/**
 * Schema pieces for the files the lab reads back (a sweep's results, migration documents, exit traces): each
 * piece's error message is what the field must be (`a non-negative integer`), and `inputProblem` turns the
 * first issue into `<field path> must be <what>, not <what it is>`, for an InputError that names the file.
 */

/** An object (any other keys kept). */
export const object = <S extends z.core.$ZodLooseShape>(shape: S) => z.looseObject(shape, { error: 'an object' });
/** A string. */
export const string = z.string({ error: 'a string' });
/** A non-negative integer (a count, a seed, a vCPU, a round). */
export const count = z.number({ error: 'a non-negative integer' }).int({ error: 'a non-negative integer' }).min(0, { error: 'a non-negative integer' });
/** A non-negative finite number (modelled cycles). */
export const amount = z.number({ error: 'a non-negative number' }).min(0, { error: 'a non-negative number' });
/** An array of `item`. */
export const array = <T extends z.ZodType>(item: T) => z.array(item, { error: 'an array' });
/** An object of `value`s by name (counters). */
export const record = <T extends z.ZodType>(value: T) => z.record(z.string(), value, { error: 'an object' });
/** One of `values`. */
export const oneOf = <const T extends readonly [string, ...string[]]>(values: T, what = `one of ${values.join(', ')}`) => z.enum(values, { error: what });

/** A field path as a reader writes it: `variant.policies[0].use`, `rounds[2]`. */
export function fieldPath(path: readonly PropertyKey[]): string {
  let s = '';
  for (const p of path) s += typeof p === 'number' ? `[${p}]` : `${s === '' ? '' : '.'}${String(p)}`;
  return s;
}

/** What a value is, for a message: `missing`, `null`, `an array`, `an object`, `the string "x"`, `-1`, `true`. */
export function describeValue(v: unknown): string {
  if (v === undefined) return 'missing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v)}`;
  return String(v);
}

function valueAt(x: unknown, path: readonly PropertyKey[]): unknown {
  let v = x;
  for (const p of path) {
    if (typeof v !== 'object' || v === null) return undefined;
    v = (v as Record<PropertyKey, unknown>)[p];
  }
  return v;
}

/**
 * The first problem `schema` finds in `x` as `<field path> must be <what>, not <what it is>` (the path left
 * out when the value itself is wrong: `must be an object, not null`), or null when `x` is valid. A union that
 * failed on an object names the field inside it that is wrong (`policies[0].use`), not the whole union.
 */
export function inputProblem(schema: z.ZodType, x: unknown): string | null {
  const r = schema.safeParse(x);
  if (r.success) return null;
  let issue: z.core.$ZodIssue = r.error.issues[0]!;
  let path: PropertyKey[] = [...issue.path];
  while (issue.code === 'invalid_union') {
    const v = valueAt(x, path);
    if (typeof v !== 'object' || v === null) break;
    const inner = issue.errors.find((errs) => errs.length > 0 && errs[0]!.path.length > 0)?.[0];
    if (inner === undefined) break;
    issue = inner;
    path = [...path, ...inner.path];
  }
  const where = fieldPath(path);
  return `${where === '' ? '' : `${where} `}must be ${issue.message}, not ${describeValue(valueAt(x, path))}`;
}
