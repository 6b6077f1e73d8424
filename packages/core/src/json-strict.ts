/**
 * JSON as the files users write are read (a variant file, a cost model): `JSON.parse`, and then no object
 * may name a member twice. `JSON.parse` keeps the last of two equal names without a word, so a second
 * `"policies"` silently replaced the first; RFC 8259 §4 only says names SHOULD be unique, and I-JSON
 * (RFC 7493 §2.3) says they MUST NOT be duplicated, which is the rule here.
 */

/** Where an object names a member a second time. */
export interface DuplicateJsonKey {
  /** The member's name, decoded (`"a"` and `"\u0061"` are the same name). */
  readonly key: string;
  /**
   * The object's path from the document's root, as variant problems give theirs (`policies.0.options`; '' for the
   * root). Whole here; the error's message cuts one longer than 120 characters in its middle.
   */
  readonly path: string;
  /** 1-based line (lines end at LF, CRLF or a lone CR) and column (UTF-16 units) of the second name's opening quote. */
  readonly line: number;
  readonly column: number;
  /** 1-based line of the first. */
  readonly firstLine: number;
}

/** JSON text that names an object member twice; `duplicate` says where. */
export class JsonDuplicateKeyError extends SyntaxError {
  constructor(readonly duplicate: DuplicateJsonKey) {
    const d = duplicate;
    const where = d.path === '' ? '' : ` in ${shortPath(d.path)}`;
    super(
      `duplicate key ${JSON.stringify(d.key)}${where} at line ${d.line}, column ${d.column} (first at line ${d.firstLine}): ` +
        'JSON would keep only the last one; give each key once',
    );
    this.name = 'JsonDuplicateKeyError';
  }
}

/** The longest path a message gives whole; a longer one (deep nesting: up to 400 KB in a 1 MiB file) is cut in its middle. */
const MESSAGE_PATH_CHARS = 120;

/** `path` for a message: whole when short, else its first and last 60 characters around the count of those left out. */
function shortPath(path: string): string {
  if (path.length <= MESSAGE_PATH_CHARS) return path;
  const half = MESSAGE_PATH_CHARS / 2;
  return `${path.slice(0, half)}…(${path.length - 2 * half} characters)…${path.slice(-half)}`;
}

/**
 * `JSON.parse(text)` that also refuses a member name given twice in one object (JsonDuplicateKeyError, with
 * the name, the object's path and the line). Text that is not JSON throws `JSON.parse`'s own SyntaxError.
 *
 * @example
 * parseJsonStrict('{\n  "policies": [],\n  "policies": ["unsync"]\n}');
 * // JsonDuplicateKeyError: duplicate key "policies" at line 3, column 3 (first at line 2): ...
 */
export function parseJsonStrict(text: string): unknown {
  const value: unknown = JSON.parse(text);
  const d = findDuplicateJsonKey(text);
  if (d !== null) throw new JsonDuplicateKeyError(d);
  return value;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const LF = 0x0a;
const LBRACE = 0x7b;
const RBRACE = 0x7d;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;
const COLON = 0x3a;
const COMMA = 0x2c;
const CR = 0x0d;

/** An open object (its names so far, by the line each was given on, and the member being read) or array (its element index). */
type Frame = { readonly names: Map<string, number>; key: string } | { readonly names: null; index: number };

/**
 * The first member name that an object of `text` gives twice, or null: one pass over the text, which must
 * be valid JSON (`JSON.parse` accepted it); what it does with other text is unspecified.
 */
export function findDuplicateJsonKey(text: string): DuplicateJsonKey | null {
  const stack: Frame[] = [];
  let line = 1;
  let lineStart = 0;
  let expectName = false;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      const start = i;
      let escaped = false;
      for (i++; i < n; i++) {
        const d = text.charCodeAt(i);
        if (d === QUOTE) break;
        if (d === BACKSLASH) {
          escaped = true;
          i++;
        }
      }
      const top = stack[stack.length - 1];
      if (expectName && top !== undefined && top.names !== null) {
        const raw = text.slice(start + 1, i);
        const name = escaped ? (JSON.parse(text.slice(start, i + 1)) as string) : raw;
        const first = top.names.get(name);
        if (first !== undefined) {
          return { key: name, path: pathOf(stack, stack.length - 1), line, column: start - lineStart + 1, firstLine: first };
        }
        top.names.set(name, line);
        top.key = name;
        expectName = false;
      }
    } else if (c === LBRACE) {
      stack.push({ names: new Map(), key: '' });
      expectName = true;
    } else if (c === LBRACKET) {
      stack.push({ names: null, index: 0 });
    } else if (c === RBRACE || c === RBRACKET) {
      stack.pop();
      expectName = false;
    } else if (c === COMMA) {
      const top = stack[stack.length - 1]!;
      if (top.names === null) top.index++;
      else expectName = true;
    } else if (c === COLON) {
      expectName = false;
    } else if (c === LF || (c === CR && text.charCodeAt(i + 1) !== LF)) {
      // A line ends at LF, CRLF or a lone CR (JSON whitespace, RFC 8259 §2; the line break of old Mac files,
      // which editors count as one): a CR before an LF is counted at the LF.
      line++;
      lineStart = i + 1;
    }
  }
  return null;
}

/** The path of the object `stack[depth]`: the members and indexes that lead to it from the root. */
function pathOf(stack: readonly Frame[], depth: number): string {
  const parts: string[] = [];
  for (let k = 0; k < depth; k++) {
    const f = stack[k]!;
    parts.push(f.names === null ? String(f.index) : f.key);
  }
  return parts.join('.');
}
