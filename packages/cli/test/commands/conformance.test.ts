import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/program.js';

/** The sample vectors, kept as fixtures of @vmexit/core (the tests do not depend on ../shared). */
const FIXTURES = fileURLToPath(new URL('../../../core/conformance/', import.meta.url));
const fixture = (name: string) => join(FIXTURES, name);
const ALL = [
  'sample-access-legacy32.jsonl',
  'sample-access-long4.jsonl',
  'sample-access-pae.jsonl',
  'sample-ext-legacy32.jsonl',
  'sample-ext-long4.jsonl',
  'sample-ext-pae.jsonl',
  'sample-twice-legacy32.jsonl',
  'sample-twice-long4.jsonl',
  'sample-twice-pae.jsonl',
].map(fixture);

let out = '';
let err = '';
beforeEach(() => {
  out = '';
  err = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => ((out += String(s)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((err += String(s)), true));
});
afterEach(() => {
  vi.restoreAllMocks();
  process.exitCode = undefined;
});

const tmp = mkdtempSync(join(tmpdir(), 'vmexit-conformance-'));
function file(name: string, text: string): string {
  const p = join(tmp, name);
  writeFileSync(p, text);
  return p;
}
/** The first vector of the long4 sample, as an object to change. */
function sample(): Record<string, unknown> {
  return JSON.parse(readFileSync(fixture('sample-access-long4.jsonl'), 'utf8').split('\n')[0]!) as Record<string, unknown>;
}

describe('vmexit conformance', () => {
  it('passes every sample vector: 240 vectors, exit 0, the summary line only', async () => {
    expect(await main(['conformance', ...ALL])).toBe(0);
    expect(out).toBe('conformance: 240 passed, 0 failed\n');
    expect(err).toBe('');
  });

  it('prints one line per failure (id, expected, observed, field) and the summary last; exit 1', async () => {
    const bad = sample();
    (bad['expect'] as Record<string, unknown>)['error_code'] = 2; // the walk gives 0: the PDE is not present
    bad['id'] = 'made-wrong';
    const p = file('one-bad.jsonl', `${JSON.stringify(sample())}\n${JSON.stringify(bad)}\n`);
    expect(await main(['conformance', p])).toBe(1);
    expect(out.trimEnd().split('\n')).toEqual([`FAIL made-wrong (${p}:2): expect.error_code: expected 2, observed 0`, 'conformance: 1 passed, 1 failed']);
  });

  it('prints a JSON report with --json', async () => {
    expect(await main(['conformance', '--json', fixture('sample-twice-pae.jsonl')])).toBe(0);
    const report = JSON.parse(out) as { passed: number; failed: number; results: Array<{ passed: boolean }> };
    expect([report.passed, report.failed, report.results.length]).toEqual([10, 0, 10]);
  });

  describe('bad input: exit 2, a message naming the file, line and field, nothing run', () => {
    it('a missing file', async () => {
      expect(await main(['conformance', fixture('sample-twice-pae.jsonl'), join(tmp, 'nope.jsonl')])).toBe(2);
      expect(err).toBe(`vmexit: ${join(tmp, 'nope.jsonl')}: cannot read the vector file: no such file\n`);
      expect(out).toBe('');
    });

    it('a line that is not JSON', async () => {
      const p = file('not-json.jsonl', `${JSON.stringify(sample())}\nthis is not json\n`);
      expect(await main(['conformance', p])).toBe(2);
      expect(err).toMatch(new RegExp(`^vmexit: ${p.replace(/[.]/g, '\\.')}:2: not a JSON value`));
      expect(out).toBe('');
    });

    it('a field of the wrong type', async () => {
      const v = sample();
      (v['cpu'] as Record<string, unknown>)['pkru'] = '0xfffffffc';
      const p = file('wrong-type.jsonl', `${JSON.stringify(v)}\n`);
      expect(await main(['conformance', p])).toBe(2);
      expect(err).toBe(`vmexit: ${p}:1: cpu.pkru: expected an integer in 0..4294967295, got the string "0xfffffffc"\n`);
    });

    it('an out-of-range value', async () => {
      const v = sample();
      (v['cpu'] as Record<string, unknown>)['maxphyaddr'] = 64;
      const p = file('out-of-range.jsonl', `${JSON.stringify(sample())}\n${JSON.stringify(v)}\n`);
      expect(await main(['conformance', p, fixture('sample-twice-pae.jsonl')])).toBe(2);
      expect(err).toBe(`vmexit: ${p}:2: cpu.maxphyaddr: expected an integer in 36..52, got 64\n`);
      expect(out).toBe('');
    });

    it('an unknown option prints the usage', async () => {
      expect(await main(['conformance', '--frobnicate', fixture('sample-twice-pae.jsonl')])).toBe(2);
      expect(err).toMatch(/unknown option '--frobnicate'/);
      expect(err).toMatch(/Usage: vmexit conformance \[options\] <files\.\.\.>/);
      expect(out).toBe('');
    });

    it('no file at all', async () => {
      expect(await main(['conformance'])).toBe(2);
      expect(err).toMatch(/missing required argument 'files'/);
    });
  });
});
