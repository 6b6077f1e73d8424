import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readResults } from '@vmexit/lab';
import { captureStdio } from '../helpers/stdio.js';
import { main } from '../../src/program.js';
import { parseParams, parseSeeds } from '../../src/commands/sweep.js';

const { out, err } = captureStdio();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-sweep-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('sweep', () => {
  it('runs the cross product into --out, one result per cell, and skips them on a rerun', async () => {
    const dir = path.join(tmp, 'a');
    const args = ['sweep', '--workload', 'demand-fault', '--param', 'pages=8,12', '--variant', 'native', '--seeds', '1..2', '--memory', '4M', '--out', dir];
    expect(await main(args), err.join('')).toBe(0);
    expect(out.join('')).toBe(`4 cells: 4 ran, 0 already done; ${dir}/results.jsonl, ${dir}/summary.csv\n`);
    const rs = readResults(path.join(dir, 'results.jsonl'));
    expect(rs.map((r) => `${r.workload.input} ${r.seed}`).sort()).toEqual([
      'demand-fault:pages=12 1',
      'demand-fault:pages=12 2',
      'demand-fault:pages=8 1',
      'demand-fault:pages=8 2',
    ]);
    expect(fs.readFileSync(path.join(dir, 'summary.csv'), 'utf8')).toMatch(/^demand-fault:pages=8,native,long4,2,guest\.faults,8,0,8,8$/m);
    out.length = 0;
    expect(await main(args)).toBe(0);
    expect(out.join('')).toMatch(/^4 cells: 0 ran, 4 already done/);
    // The report: written by the sweep, and again by `vmexit report` (self-contained: the vega bundles inline).
    expect(fs.readFileSync(path.join(dir, 'report.html'), 'utf8')).toMatch(/<div class="chart" id="exits-by-reason">/);
    out.length = 0;
    expect(await main(['report', dir, '-o', path.join(tmp, 'r.html')])).toBe(0);
    expect(out.join('')).toBe(`${path.join(tmp, 'r.html')}: 4 results\n`);
    const html = fs.readFileSync(path.join(tmp, 'r.html'), 'utf8');
    expect(html).toMatch(/vega-embed/);
    expect(html).not.toMatch(/<script[^>]+src=/);
    expect(await main(['report', path.join(tmp, 'nothing-here'), '-o', path.join(tmp, 'x.html')])).toBe(2);
  }, 120_000);

  it.each([
    [['--seeds', '5..2'], /--seeds: the range ends before it starts, got '5\.\.2'/],
    [['--seeds', '1,x'], /--seeds: expected integers from 0 to 4294967295/],
    [['--param', 'pages'], /--param: expected NAME=V1,V2,\.\.\., got 'pages'/],
    [['--jobs', '0'], /--jobs: expected an integer from 1 to 256, got '0'/],
    [['--mode', 'long6'], /--mode: unknown paging mode 'long6'/],
    [['--variant', 'shadow'], /--variant "shadow": name a backend/],
    [['--queue', 'http://x'], /--queue: 'http:\/\/x': expected a redis:\/\/ URL/],
    [['--queue', 'redis://127.0.0.1:1'], /--queue redis:\/\/127\.0\.0\.1:1: cannot connect \(ECONNREFUSED\)/],
    [['--redis-timeout-ms', '10'], /--redis-timeout-ms: expected an integer of at least 500, got '10'/],
  ])('exits 2 on bad input %j, and writes nothing: not even the --out directory', async (extra, message) => {
    const dir = path.join(tmp, 'bad', 'out');
    const code = await main(['sweep', '--workload', 'demand-fault:pages=8', '--variant', 'native', '--out', dir, ...extra]);
    expect(code).toBe(2);
    expect(err.join('')).toMatch(message);
    expect(fs.existsSync(path.join(tmp, 'bad'))).toBe(false);
  });

  it.each([
    // Each cell's workload is checked before any cell runs: the good cells of a sweep with a bad one do not run.
    [['--workload', 'demand-fault', '--param', 'pages=16,abc'], /--workload: workload 'demand-fault:pages=abc': parameter pages=abc is not a number/],
    [
      ['--workload', 'demand-fault:pages=8', '--param', 'bogus=1'],
      /--workload: workload 'demand-fault:pages=8,bogus=1': demand-fault has no parameter 'bogus'/,
    ],
    [['--workload', 'demand-fault:pages=8', '--workload', 'bogus'], /--workload: workload 'bogus': no workload 'bogus'/],
    // A sweep whose only cell fails before any result: nothing is written either.
    [['--workload', 'demand-fault:pages=4096', '--memory', '2M'], /needs at least 4112 free pages .* give more --memory/],
  ])('exits 2 on the bad workload of %j before any cell runs, and makes no --out directory', async (args, message) => {
    const dir = path.join(tmp, 'bad-cells', 'out');
    expect(await main(['sweep', ...args, '--variant', 'native', '--out', dir])).toBe(2);
    expect(err.join('')).toMatch(message);
    expect(fs.existsSync(path.join(tmp, 'bad-cells'))).toBe(false);
  });

  it('parses seeds and parameters', () => {
    expect(parseSeeds('3..5')).toEqual([3, 4, 5]);
    expect(parseSeeds('7,1')).toEqual([7, 1]);
    expect(parseParams(['pages=16,64', 'write=0,1'])).toEqual({ pages: ['16', '64'], write: ['0', '1'] });
    expect(() => parseParams(['pages=16,16'])).toThrow(/a value is repeated/);
  });
});
