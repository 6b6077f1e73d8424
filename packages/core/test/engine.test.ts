import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { V8_FLAGS } from '../src/engine.js';

describe('tuneV8', () => {
  it('sets only flags that this Node accepts (v8.setFlagsFromString ignores an unknown flag without a word)', () => {
    expect(V8_FLAGS.length).toBeGreaterThan(0);
    for (const flag of V8_FLAGS) {
      // On the command line an unknown flag is refused ("bad option", exit 9): the flag still exists in this V8.
      const r = spawnSync(process.execPath, [flag, '-e', '0'], { encoding: 'utf8' });
      expect({ flag, status: r.status, stderr: r.stderr }).toEqual({ flag, status: 0, stderr: '' });
    }
    const bad = spawnSync(process.execPath, ['--max-inlined-bytecode-size-cumulativ=3000', '-e', '0'], { encoding: 'utf8' });
    expect(bad.status).not.toBe(0); // the check above can fail
  });
});
