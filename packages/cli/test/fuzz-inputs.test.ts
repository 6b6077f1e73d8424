import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { encodeVxt, importLackey } from '@vmexit/guest';
import { main } from '../src/program.js';
// @ts-expect-error: a plain ES module script, without types
import { goodVxtOf, mutateVxt, rng, runFuzz } from '../scripts/fuzz-inputs.mjs';

// A fixed-seed sample of scripts/fuzz-inputs.mjs (which runs 10,000 cases): mutated .vxt files and lackey
// logs each end with exit 0 or 2 and a message, never a throw or a hang.
describe('fuzzed trace inputs', () => {
  it('150 mutated .vxt files and lackey logs (seed 7): exit 0 or 2, each well under 10 s', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-fuzz-test-'));
    try {
      const res = (await runFuzz({ main, seed: 7, count: 150, dir, goodVxt: goodVxtOf(encodeVxt, importLackey) })) as {
        problems: unknown[];
        codes: Record<string, number>;
        maxMs: number;
      };
      expect(res.problems).toEqual([]);
      expect(res.codes['0']! + res.codes['2']!).toBe(150);
      expect(res.codes['2']).toBeGreaterThan(0);
      expect(res.maxMs).toBeLessThan(10000);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60000);

  it('a few mutated files as real processes: exit 0 or 2, under 512 MB', () => {
    const bin = fileURLToPath(new URL('../dist/bin/vmexit.js', import.meta.url));
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-fuzz-proc-'));
    try {
      const good = goodVxtOf(encodeVxt, importLackey) as Buffer;
      const r = rng(11) as { int: (n: number) => number };
      for (let i = 0; i < 4; i++) {
        const [, bytes] = mutateVxt(good, r) as [string, Uint8Array];
        const f = path.join(dir, `p${i}.vxt`);
        fs.writeFileSync(f, bytes);
        // The child reports its own peak RSS (KiB) on exit: VmHWM, its address space's own high-water mark. Not
        // process.resourceUsage().maxRSS where /proc is there: Linux keeps ru_maxrss across fork and execve, so it
        // would count the forked copy of this test worker, which holds whatever earlier test files left in it.
        const peak = `(()=>{try{return Number(/VmHWM:\\s+(\\d+)/.exec(readFileSync('/proc/self/status','utf8'))[1])}catch{return process.resourceUsage().maxRSS}})()`;
        const script = `import { readFileSync } from 'node:fs';process.on('exit',()=>process.stderr.write('RSS '+${peak}+'\\n'));process.argv=[process.argv[0],${JSON.stringify(bin)},'trace','info',${JSON.stringify(f)}];await import(${JSON.stringify(bin)});`;
        const p = spawnSync(process.execPath, ['--input-type=module', '-e', script], { timeout: 10000, stdio: ['ignore', 'ignore', 'pipe'] });
        const code = p.status;
        const stderr = String(p.stderr);
        expect([0, 2]).toContain(code);
        const rss = /RSS (\d+)/.exec(stderr);
        expect(rss).not.toBeNull();
        expect(Number(rss![1]) / 1024).toBeLessThan(512);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60000);
});
