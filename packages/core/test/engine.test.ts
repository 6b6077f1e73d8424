import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { V8_FLAGS } from '../src/engine.js';

describe('tuneV8', () => {
  it('sets only flags that this Node accepts, on its command line and at run time', () => {
    expect(V8_FLAGS.length).toBeGreaterThan(0);
    for (const flag of V8_FLAGS) {
      // On the command line an unknown flag is refused ("bad option", exit 9).
      const cli = spawnSync(process.execPath, [flag, '-e', '0'], { encoding: 'utf8' });
      expect({ flag, status: cli.status, stderr: cli.stderr }).toEqual({ flag, status: 0, stderr: '' });
      // At run time v8.setFlagsFromString does not throw on an unknown flag: it prints an error and goes on.
      const set = `require('node:v8').setFlagsFromString(${JSON.stringify(flag)})`;
      const runtime = spawnSync(process.execPath, ['-e', set], { encoding: 'utf8' });
      expect({ flag, status: runtime.status, stderr: runtime.stderr }).toEqual({ flag, status: 0, stderr: '' });
    }
    // Both checks can fail: a misspelt flag.
    const bad = '--max-inlined-bytecode-size-cumulativ=3000';
    expect(spawnSync(process.execPath, [bad, '-e', '0']).status).not.toBe(0);
    expect(spawnSync(process.execPath, ['-e', `require('node:v8').setFlagsFromString('${bad}')`], { encoding: 'utf8' }).stderr).toMatch(/unrecognized flag/);
  });
});
