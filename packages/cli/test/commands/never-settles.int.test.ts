import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

// Hostile input: a --config or --policy module whose top-level await never settles. Node then leaves with the
// command still waiting (nothing left to run), which would be exit 0 with no output; the bin reports it (exit 2).
// A real subprocess: the behaviour is the process's, at its end.

const BIN = path.resolve(import.meta.dirname, '../../bin/vmexit.js');
let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-never-'));
  fs.writeFileSync(path.join(dir, 'hang.mjs'), 'await new Promise(() => {});\nexport default {};\n');
});

afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('a module that never finishes loading', () => {
  for (const [name, args] of [
    ['--config', ['run', '--workload', 'demand-fault:pages=16', '--config', 'hang.mjs', '--trace', 'exits.jsonl']],
    ['--policy', ['run', '--workload', 'demand-fault:pages=16', '--backend', 'vmx', '--policy', './hang.mjs']],
  ] as const) {
    it(`${name}: exit 2 with a message, and no output file`, () => {
      const r = spawnSync(process.execPath, [BIN, ...args], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
      expect(r.status).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toBe(
        'vmexit: the command never finished: a module it loaded (--config, --policy or a variant file) waits on a promise that never settles (a top-level await?)\n',
      );
      expect(fs.readdirSync(dir)).toEqual(['hang.mjs']);
    });
  }
});
