import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PROFILE_SERVER } from '@vmexit/core';
import { captureStdio } from '../helpers/stdio.js';
import { main } from '../../src/program.js';

// The JSON files users write (a variant file, a cost model, a sweep's variant file) are read as I-JSON
// (RFC 7493 §2.3): a member named twice in one object is refused, exit 2, with the file, the key and the line,
// and nothing is written. JSON.parse alone kept the last one without a word. Such a file is valid JSON (RFC 8259 §4:
// names SHOULD be unique), so the message says what is wrong with it, not "not valid JSON".

const io = captureStdio();
const err = (): string => io.err.join('');
let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-dup-keys-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function write(name: string, text: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, text);
  return f;
}

/** A variant file whose second "policies" replaced the first. */
const DUP_POLICIES = '{\n  "backend": "vmx",\n  "mmu": "shadow",\n  "policies": ["write-flood"],\n  "policies": ["unsync"]\n}\n';
const DUP_MESSAGE = 'duplicate key "policies" at line 5, column 3 (first at line 4): JSON would keep only the last one; give each key once';

describe('duplicate JSON keys', () => {
  it('run --config: refuses a variant file that names a key twice, and writes no --trace', async () => {
    const config = write('vmexit.config.json', DUP_POLICIES);
    const trace = path.join(dir, 't.jsonl');
    expect(await main(['run', '--workload', 'scan:pages=4', '--config', config, '--trace', trace])).toBe(2);
    expect(err()).toBe(`vmexit: --config ${config}: ${DUP_MESSAGE}\n`);
    expect(io.out.join('')).toBe('');
    expect(fs.readdirSync(dir)).toEqual(['vmexit.config.json']);
  });

  it("names a nested duplicate's path (a policy's options)", async () => {
    const line3 = '  "policies": [{ "use": "write-flood", "options": { "threshold": 3, "threshold": 5 } }]';
    const config = write('vmexit.config.json', `{\n  "backend": "vmx",\n${line3}\n}\n`);
    const column = line3.lastIndexOf('"threshold"') + 1; // 69
    expect(await main(['run', '--workload', 'scan:pages=4', '--config', config])).toBe(2);
    expect(err()).toBe(
      `vmexit: --config ${config}: duplicate key "threshold" in policies.0.options at line 3, column ${column} (first at line 3): JSON would keep only the last one; give each key once\n`,
    );
  });

  it('run --cost-model: refuses a cost model that names a figure twice', async () => {
    const text = JSON.stringify(PROFILE_SERVER, null, 2).replace(
      '"guestFault": {',
      '"guestFault": { "cycles": 1, "basis": "estimate", "source": "x" },\n  "guestFault": {',
    );
    const model = write('mine.json', text);
    const first = text.split('\n').findIndex((l) => l.startsWith('  "guestFault": {')) + 1; // 1-based
    expect(await main(['run', '--workload', 'scan:pages=4', '--cost-model', model])).toBe(2);
    expect(err()).toBe(
      `vmexit: --cost-model ${model}: duplicate key "guestFault" at line ${first + 1}, column 3 (first at line ${first}): JSON would keep only the last one; give each key once\n`,
    );
  });

  it('refuses a cost model named by a variant file ("costModel": "./mine.json") the same way', async () => {
    const model = write('mine.json', '{ "name": "mine", "name": "yours" }');
    const config = write('vmexit.config.json', '{ "backend": "vmx", "costModel": "./mine.json" }');
    expect(await main(['run', '--workload', 'scan:pages=4', '--config', config])).toBe(2);
    expect(err()).toBe(
      `vmexit: costModel ${model}: duplicate key "name" at line 1, column 19 (first at line 1): JSON would keep only the last one; give each key once\n`,
    );
  });

  it('sweep --variant FILE: refuses it before any cell runs, and writes no --out', async () => {
    const config = write('v.json', DUP_POLICIES);
    const out = path.join(dir, 'out');
    expect(await main(['sweep', '--workload', 'scan:pages=4', '--variant', config, '--out', out])).toBe(2);
    expect(err()).toContain(`${config}: ${DUP_MESSAGE}`);
    expect(fs.existsSync(out)).toBe(false);
  });

  it('accepts the same key in different objects', async () => {
    const config = write(
      'vmexit.config.json',
      '{ "backend": "vmx", "mmu": "shadow", "policies": [{ "use": "write-flood", "options": {} }, { "use": "unsync", "options": {} }] }',
    );
    expect(await main(['run', '--workload', 'scan:pages=4', '--config', config, '--json'])).toBe(0);
    expect(JSON.parse(io.out.join('')).variant.policies).toEqual(['write-flood', 'unsync']);
  });
});
