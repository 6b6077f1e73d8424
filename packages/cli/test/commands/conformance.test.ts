import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { quietOnEpipe } from '../../src/epipe.js';
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

  // core's extended cases (state access.c's flag space keeps fixed), natively.
  it('passes the 55 extended vectors natively', async () => {
    expect(await main(['conformance', fixture('extended.jsonl')])).toBe(0);
    expect(out).toBe('conformance: 55 passed, 0 failed\n');
    expect(err).toBe('');
  });

  it.each(['vmx', 'svm'])('passes every sample vector as guest accesses under TDP on %s (EPT / NPT built at fault time)', async (backend) => {
    expect(await main(['conformance', '--backend', backend, '--mmu', 'tdp', ...ALL])).toBe(0);
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

    it('a file with no vector (empty, or blank lines only)', async () => {
      for (const [name, text] of [
        ['empty.jsonl', ''],
        ['blank.jsonl', '\n  \n'],
      ] as const) {
        const p = file(name, text);
        err = '';
        expect(await main(['conformance', fixture('sample-twice-pae.jsonl'), p])).toBe(2);
        expect(err).toBe(`vmexit: ${p}: no vectors (the file is empty or has only blank lines)\n`);
        expect(out).toBe('');
      }
    });

    it('a memory_after that does not list the entries of memory (FORMAT.md)', async () => {
      const v = sample();
      (v['expect'] as Record<string, unknown>)['memory_after'] = [];
      const p = file('short-after.jsonl', `${JSON.stringify(sample())}\n${JSON.stringify(v)}\n`);
      expect(await main(['conformance', p])).toBe(2);
      expect(err).toMatch(new RegExp(`^vmexit: ${p.replace(/[.]/g, '\\.')}:2: expect\\.memory_after: lists 0 entries, memory lists \\d+: missing 0x`));
      expect(out).toBe('');
    });

    it('an error code with a bit the format does not define', async () => {
      const v = sample();
      (v['expect'] as Record<string, unknown>)['error_code'] = 64;
      const p = file('error-code.jsonl', `${JSON.stringify(v)}\n`);
      expect(await main(['conformance', p])).toBe(2);
      expect(err).toBe(`vmexit: ${p}:1: expect.error_code: expected an error code in 0..63 (P=1 W=2 U=4 RSVD=8 I/D=16 PK=32), got number 64\n`);
    });

    it('a hex string that is not lowercase and unpadded', async () => {
      const v = sample();
      v['cr3'] = '0x01000';
      const p = file('padded.jsonl', `${JSON.stringify(v)}\n`);
      expect(await main(['conformance', p])).toBe(2);
      expect(err).toBe(`vmexit: ${p}:1: cr3: hex strings are lowercase and unpadded (FORMAT.md): expected "0x1000", got the string "0x01000"\n`);
    });

    it('a PAE PDPTE register with a reserved bit (the CR3 load would be a #GP, SDM Vol. 3A §4.4.1)', async () => {
      const v = JSON.parse(readFileSync(fixture('sample-access-pae.jsonl'), 'utf8').split('\n')[0]!) as Record<string, unknown>;
      v['pdptes'] = ['0x0', '0x2021', '0x0', '0x0'];
      const p = file('pdpte.jsonl', `${JSON.stringify(v)}\n`);
      expect(await main(['conformance', p])).toBe(2);
      expect(err).toMatch(
        new RegExp(
          `^vmexit: ${p.replace(/[.]/g, '\\.')}:1: pdptes\\[1\\]: PDPTE 1 = 0x2021 is present with reserved bits 0x20 set .*#GP, not a #PF \\(SDM Vol\\. 3A §4\\.4\\.1`,
        ),
      );
      expect(out).toBe('');
    });

    it('--mmu without --backend (it would be ignored: the vectors would run natively)', async () => {
      expect(await main(['conformance', '--mmu', 'shadow', fixture('sample-twice-pae.jsonl')])).toBe(2);
      expect(err).toBe(
        'vmexit: --mmu shadow: needs --backend vmx|svm (or --config FILE); without a backend the vectors run natively and it would be ignored\n',
      );
      expect(out).toBe('');
      err = '';
      expect(await main(['conformance', '--mmu', 'shadow', '--policy', 'unsync', fixture('sample-twice-pae.jsonl')])).toBe(2);
      expect(err).toMatch(/^vmexit: --mmu shadow, --policy unsync: needs --backend vmx\|svm .* they would be ignored\n$/);
    });

    it('--mmu with --backend none (meaningless: the vectors run natively)', async () => {
      expect(await main(['conformance', '--backend', 'none', '--mmu', 'shadow', fixture('sample-twice-pae.jsonl')])).toBe(2);
      expect(err).toBe('vmexit: --mmu shadow: meaningless with --backend none: the vectors run natively on the architectural walker\n');
      expect(out).toBe('');
    });

    it('--mmu with a --config whose backend is none', async () => {
      const config = file('none.json', JSON.stringify({ backend: 'none' }));
      expect(await main(['conformance', '--config', config, '--mmu', 'shadow', fixture('sample-twice-pae.jsonl')])).toBe(2);
      // (Variant composition may refuse an mmu over backend 'none' itself; either way it is named.)
      expect(err).toMatch(/^vmexit: [\s\S]*mmu[\s\S]* 'none'/);
      expect(out).toBe('');
      err = '';
      expect(await main(['conformance', '--config', config, '--vcpus', '2', fixture('sample-twice-pae.jsonl')])).toBe(2);
      expect(err).toMatch(
        /^vmexit: (--vcpus 2: meaningless with backend 'none' \(from --config .*none\.json\): the vectors run natively|[\s\S]*vcpus[\s\S]*'none')/,
      );
    });
  });

  it('runs natively with --backend none alone', async () => {
    expect(await main(['conformance', '--backend', 'none', fixture('sample-twice-pae.jsonl')])).toBe(0);
    expect(out).toBe('conformance: 10 passed, 0 failed\n');
  });

  describe('stdout closed early (vmexit conformance ... | head; bin/vmexit.ts installs quietOnEpipe)', () => {
    it('exits quietly, with the status of the run, when a write fails with EPIPE', async () => {
      expect(await main(['conformance', '--json', fixture('sample-twice-pae.jsonl')])).toBe(0);
      quietOnEpipe();
      const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as () => never);
      process.stdout.emit('error', Object.assign(new Error('write EPIPE'), { code: 'EPIPE', errno: -32, syscall: 'write' }));
      expect(exit).toHaveBeenCalledTimes(1);
      expect(exit).toHaveBeenCalledWith();
      expect(process.exitCode).toBe(0);
      expect(err).toBe('');
    });

    it('still reports any other stdout error', async () => {
      expect(await main(['conformance', fixture('sample-twice-pae.jsonl')])).toBe(0);
      quietOnEpipe();
      const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as () => never);
      expect(() => process.stdout.emit('error', Object.assign(new Error('write EIO'), { code: 'EIO' }))).toThrow('write EIO');
      expect(exit).not.toHaveBeenCalled();
    });
  });
});
