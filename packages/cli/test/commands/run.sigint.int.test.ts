import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

// Hostile input: SIGINT during `vmexit run --trace FILE` (Ctrl-C in a shell) must not leave a
// valid-looking trace. The run is a real subprocess (the built bin), interrupted once its trace has grown.

const BIN = path.resolve(import.meta.dirname, '../../bin/vmexit.js');
let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-sigint-'));
});

afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('vmexit run --trace, interrupted by SIGINT', () => {
  it('dies of the signal (status 130 in a shell), keeps the old FILE, and leaves a partial file whose last record says it was cut short', async () => {
    const file = path.join(dir, 'exits.jsonl');
    fs.writeFileSync(file, 'the previous trace\n');
    // A run of minutes (10^8 random accesses), traced as it goes.
    const child = spawn(
      process.execPath,
      [BIN, 'run', '--workload', 'random-ws:pages=2048,accesses=100000000', '--backend', 'svm', '--mmu', 'shadow', '--memory', '64M', '--trace', file],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.on('exit', (code, signal) => resolve({ code, signal })),
    );
    // Wait until the partial file holds more than one 64 KiB chunk of lines (and so a rewritten interrupted record).
    const partial = path.join(dir, `exits.jsonl.partial-${child.pid}`);
    const deadline = Date.now() + 60_000;
    while (!(fs.existsSync(partial) && fs.statSync(partial).size > 70_000)) {
      if (Date.now() > deadline) throw new Error(`no trace after 60 s: ${fs.readdirSync(dir).join(', ')}; stderr: ${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    child.kill('SIGINT');
    const { code, signal } = await exited;
    // Node's default SIGINT action: the process ends by the signal (a shell reports 128 + 2 = 130).
    expect({ code, signal }).toEqual({ code: null, signal: 'SIGINT' });
    expect(stderr).not.toMatch(/at .*\.js:\d+/); // no stack trace
    // The old FILE is untouched; the partial file stays beside it.
    expect(fs.readFileSync(file, 'utf8')).toBe('the previous trace\n');
    expect(fs.readdirSync(dir).sort()).toEqual(['exits.jsonl', path.basename(partial)]);
    // Every line is JSON, and the last one is the interrupted record.
    const lines = fs
      .readFileSync(partial, 'utf8')
      .split('\n')
      .filter((l) => l.length > 0)
      .map((l) => JSON.parse(l) as { type: string; reason?: string });
    expect(lines.length).toBeGreaterThan(50);
    expect(lines.at(-1)!.type).toBe('interrupted');
    expect(lines.at(-1)!.reason).toMatch(/stopped here from outside \(SIGINT/);
    expect(lines.slice(0, -1).every((l) => l.type !== 'interrupted')).toBe(true);
  }, 90_000);
});
