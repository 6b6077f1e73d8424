import { describe, expect, it } from 'vitest';
import { findDuplicateJsonKey, JsonDuplicateKeyError, parseJsonStrict } from '../src/index.js';

/** What parseJsonStrict threw for `text` (fails the test when it returned). */
function refusal(text: string): JsonDuplicateKeyError {
  try {
    parseJsonStrict(text);
  } catch (e) {
    if (e instanceof JsonDuplicateKeyError) return e;
    throw e;
  }
  throw new Error('parseJsonStrict accepted it');
}

describe('parseJsonStrict', () => {
  it('refuses a member given twice, naming the key, its line and column and the first line (JSON.parse keeps the last)', () => {
    const text = '{\n  "backend": "vmx",\n  "policies": ["write-flood"],\n  "policies": ["unsync"]\n}\n';
    expect(JSON.parse(text)).toEqual({ backend: 'vmx', policies: ['unsync'] }); // the first list silently gone
    const e = refusal(text);
    expect(e).toBeInstanceOf(SyntaxError);
    expect(e.duplicate).toEqual({ key: 'policies', path: '', line: 4, column: 3, firstLine: 3 });
    expect(e.message).toBe('duplicate key "policies" at line 4, column 3 (first at line 3): JSON would keep only the last one; give each key once');
  });

  it("names the object's path for a nested duplicate", () => {
    const text = [
      '{',
      '  "policies": [',
      '    { "use": "unsync" },',
      '    { "use": "write-flood", "options": { "threshold": 3,',
      '      "threshold": 5 } }',
      '  ]',
      '}',
    ].join('\n');
    expect(refusal(text).duplicate).toEqual({ key: 'threshold', path: 'policies.1.options', line: 5, column: 7, firstLine: 4 });
    expect(refusal(text).message).toMatch(/^duplicate key "threshold" in policies\.1\.options at line 5, column 7 \(first at line 4\)/);
  });

  it('cuts a deep path in the message (whole in .duplicate), so that a deeply nested file does not print it all', () => {
    // 100,000 nested objects under "a" (600 KB, under the 1 MiB a variant file may have): the path is "a.a. ... a",
    // 199,999 characters, which the message gave whole (a 200 KB line). The second "b" is at offset 5 * depth + 7.
    const depth = 100_000;
    const e = refusal(`${'{"a":'.repeat(depth)}{"b":1,"b":2}${'}'.repeat(depth)}`);
    expect(e.duplicate.path).toBe(Array(depth).fill('a').join('.'));
    const cut = `${'a.'.repeat(30)}…(${2 * depth - 1 - 120} characters)…${'.a'.repeat(30)}`;
    expect(e.message).toBe(
      `duplicate key "b" in ${cut} at line 1, column ${5 * depth + 8} (first at line 1): JSON would keep only the last one; give each key once`,
    );
  });

  it('compares names as JSON decodes them (escapes), including __proto__', () => {
    expect(refusal('{"a": 1, "\\u0061": 2}').duplicate).toMatchObject({ key: 'a', line: 1, column: 10 });
    expect(refusal('{"a\\"b": 1, "a\\"b": 2}').duplicate.key).toBe('a"b');
    expect(refusal('{"__proto__": 1, "__proto__": 2}').duplicate.key).toBe('__proto__');
  });

  it('counts lines by LF, with CRLF files too', () => {
    expect(refusal('{\r\n"x": {\r\n"k": 1,\r\n"k": 2}}').duplicate).toEqual({ key: 'k', path: 'x', line: 4, column: 1, firstLine: 3 });
  });

  it('counts a lone CR as a line end (old Mac files; JSON whitespace), as editors do', () => {
    // Lines: 1 `{`, 2 `  "x": 1,`, 3 `  "x": 2`, 4 `}`. Counting LF alone put both on line 1, the second at column 15.
    expect(refusal('{\r  "x": 1,\r  "x": 2\r}').duplicate).toEqual({ key: 'x', path: '', line: 3, column: 3, firstLine: 2 });
    // Mixed endings: a CRLF is one line end, not two.
    expect(refusal('{\r\n"a": 1,\r"b": 2,\n"a": 3}').duplicate).toEqual({ key: 'a', path: '', line: 4, column: 1, firstLine: 2 });
  });

  it('accepts equal names in different objects, and strings equal to a name that are values', () => {
    const ok = [
      '[{"a": 1}, {"a": 2}]',
      '{"a": {"a": 1}, "b": {"a": 2}}',
      '{"x": [{"a": 1}, {"a": 2}], "y": {"a": 3}}',
      '{"a": "a", "b": ["a", "a", {"b": "b"}], "c": {}}',
      '{"a\\\\": 1, "a": 2}', // a\ and a: two names
      '"a"',
      '{}',
    ];
    for (const text of ok) {
      expect(findDuplicateJsonKey(text)).toBeNull();
      expect(parseJsonStrict(text)).toEqual(JSON.parse(text));
    }
  });

  it("throws JSON.parse's own error for text that is not JSON", () => {
    let thrown: unknown = null;
    try {
      parseJsonStrict('{"a": 1, "a": }');
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(SyntaxError);
    expect(thrown).not.toBeInstanceOf(JsonDuplicateKeyError);
  });
});
