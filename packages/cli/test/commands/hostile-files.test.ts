import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { captureStdio } from '../helpers/stdio.js';
import { main } from '../../src/program.js';

// Input files that are not what a command reads - a device, a FIFO, a file too large to read - found by a
// driver that ran every command on such inputs: each ends at once with exit 2 and a message naming the
// file, and writes nothing.

const io = captureStdio();
const err = (): string => io.err.join('');
let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-hostile-files-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function fifo(name: string): string {
  const f = path.join(dir, name);
  execFileSync('mkfifo', [f]);
  return f;
}

describe('hostile input files', () => {
  describe('report', () => {
    it('refuses /dev/zero (it read it until it ran out of memory) and writes no --output', async () => {
      const html = path.join(dir, 'r.html');
      expect(await main(['report', '/dev/zero', '-o', html])).toBe(2);
      expect(err()).toBe(
        'vmexit: /dev/zero: not a regular file (a device, FIFO or socket); give a sweep directory, its results.jsonl or the output of vmexit migrate --json\n',
      );
      expect(fs.existsSync(html)).toBe(false);
    }, 10_000);

    it('refuses a FIFO (it waited for a writer forever)', async () => {
      const f = fifo('results.jsonl');
      expect(await main(['report', f, '-o', path.join(dir, 'r.html')])).toBe(2);
      expect(err()).toBe(
        `vmexit: ${f}: not a regular file (a device, FIFO or socket); give a sweep directory, its results.jsonl or the output of vmexit migrate --json\n`,
      );
    }, 10_000);

    it('refuses a sweep directory whose results.jsonl is a directory, naming it', async () => {
      fs.mkdirSync(path.join(dir, 'results.jsonl'));
      expect(await main(['report', dir, '-o', path.join(dir, 'r.html')])).toBe(2);
      expect(err()).toBe(
        `vmexit: ${path.join(dir, 'results.jsonl')}: not a regular file (a directory); give a sweep directory, its results.jsonl or the output of vmexit migrate --json\n`,
      );
    });

    it("refuses an --output that is the sweep directory's results.jsonl (it wrote the HTML over the results)", async () => {
      // A migration document on one line is a results file the report charts.
      expect(await main(['migrate', '--workload', 'demand-fault:pages=16', '--memory', '4M', '--json'])).toBe(0);
      const results = path.join(dir, 'results.jsonl');
      const doc = `${JSON.stringify(JSON.parse(io.out.join('')))}\n`;
      fs.writeFileSync(results, doc);
      io.out.length = 0;
      expect(await main(['report', dir, '-o', results])).toBe(2);
      expect(err()).toBe(`vmexit: --output ${results}: it is also an input of this command (${results}); writing it would destroy it\n`);
      expect(fs.readFileSync(results, 'utf8')).toBe(doc);
    }, 30_000);

    it('refuses a results file over 256 MiB before it reads it (a 3 GiB one took 49 s to fail)', async () => {
      // A sparse file: no disk space, but its size is what stat reports.
      const f = path.join(dir, 'results.jsonl');
      fs.writeFileSync(f, '');
      fs.truncateSync(f, 2 ** 28 + 1);
      const t0 = Date.now();
      expect(await main(['report', f, '-o', path.join(dir, 'r.html')])).toBe(2);
      expect(Date.now() - t0).toBeLessThan(2000);
      expect(err()).toBe(`vmexit: ${f}: ${2 ** 28 + 1} bytes, over the ${2 ** 28} bytes (256 MiB) a report reads\n`);
    }, 10_000);
  });

  describe('main', () => {
    it('refuses a --report that is the --workload trace (it ran everything, then wrote the HTML over the trace)', async () => {
      const TINY = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'guest', 'test', 'fixtures', 'tiny');
      const trace = path.join(dir, 'tiny.vxt');
      const logs = ['tiny.100.1', 'tiny.101.1', 'tiny.101.2'].map((f) => path.join(TINY, f));
      expect(await main(['trace', 'import', 'lackey', ...logs, '-o', trace])).toBe(0);
      const bytes = fs.readFileSync(trace);
      expect(await main(['main', '--workload', trace, '--report', trace])).toBe(2);
      expect(err()).toBe(`vmexit: --report ${trace}: it is also an input of this command (${trace}); writing it would destroy it\n`);
      expect(fs.readFileSync(trace)).toEqual(bytes);
    }, 120_000);
  });

  describe('run --trace', () => {
    it('refuses a --trace that is the --cost-model file or a --policy file (it wrote the trace over them)', async () => {
      const { builtInCostProfile } = await import('@vmexit/core');
      const model = path.join(dir, 'mine.json');
      const text = JSON.stringify({ ...builtInCostProfile('server-2020s'), name: 'mine' });
      fs.writeFileSync(model, text);
      expect(await main(['run', '--workload', 'demand-fault:pages=4', '--cost-model', model, '--trace', model])).toBe(2);
      expect(err()).toBe(`vmexit: --trace ${model}: it is also an input of this command (${model}); writing it would destroy it\n`);
      expect(fs.readFileSync(model, 'utf8')).toBe(text);
      io.err.length = 0;
      // A copy of a policy fixture beside it (its imports resolve from the package's node_modules), removed after.
      const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures');
      const copies = fs.mkdtempSync(path.join(fixtures, 'tmp-policy-'));
      try {
        const policy = path.join(copies, 'index.mjs');
        fs.copyFileSync(path.join(fixtures, 'third-party-policy', 'index.mjs'), policy);
        const before = fs.readFileSync(policy);
        expect(await main(['run', '--workload', 'demand-fault:pages=4', '--policy', `pte-update,${policy}`, '--trace', policy])).toBe(2);
        expect(err()).toBe(`vmexit: --trace ${policy}: it is also an input of this command (${policy}); writing it would destroy it\n`);
        expect(fs.readFileSync(policy)).toEqual(before);
      } finally {
        fs.rmSync(copies, { recursive: true, force: true });
      }
    });
  });

  describe('trace stats', () => {
    it('refuses /dev/zero (readline gathered one endless line until node died with a stack trace)', async () => {
      expect(await main(['trace', 'stats', '/dev/zero'])).toBe(2);
      expect(err()).toBe('vmexit: /dev/zero: not a regular file (a device, FIFO or socket); give a trace written by vmexit run --trace\n');
    }, 10_000);

    it('refuses a FIFO', async () => {
      const f = fifo('t.jsonl');
      expect(await main(['trace', 'stats', f])).toBe(2);
      expect(err()).toBe(`vmexit: ${f}: not a regular file (a device, FIFO or socket); give a trace written by vmexit run --trace\n`);
    }, 10_000);
  });

  describe("an output named '-'", () => {
    it('is refused: -, as in most tools, reads as standard output, but --trace - wrote a file named - in the working directory', async () => {
      const cwd = process.cwd();
      process.chdir(dir);
      try {
        expect(await main(['run', '--workload', 'demand-fault:pages=4', '--trace', '-'])).toBe(2);
        expect(err()).toBe('vmexit: --trace -: writes a file, not standard output; give a file name (./- for a file named -)\n');
        io.err.length = 0;
        expect(await main(['report', '/nonexistent-results.jsonl', '-o', '-'])).toBe(2);
        expect(err()).toBe('vmexit: --output -: writes a file, not standard output; give a file name (./- for a file named -)\n');
        expect(fs.readdirSync(dir)).toEqual([]);
      } finally {
        process.chdir(cwd);
      }
    });
  });
});
