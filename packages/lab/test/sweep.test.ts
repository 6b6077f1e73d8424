import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  cellKey,
  deterministicPart,
  expandGrid,
  InProcessExecutor,
  readResults,
  runCell,
  summarize,
  summaryCsv,
  sweep,
  withParams,
  type CellExecutor,
  type CellRecord,
} from '../src/index.js';
import { runCellOutcome } from '../src/cell.js';
import { countingCellTraces, encodeVxt, storeTrace } from './helpers/store-trace.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-lab-sweep-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

// 2 workloads (a parameter over 2 values) x 2 variants x 2 seeds: 8 cells to expand; the sweeps run 4 tiny ones.
const grid = expandGrid({
  workloads: ['demand-fault'],
  params: { pages: ['8', '12'] },
  variants: ['vmx shadow', 'svm shadow'],
  modes: ['long4'],
  seeds: [1, 2],
  overrides: { memory: '4M' }, // tiny cells: a run's cost grows with the guest RAM
});
const cells = grid.filter((c) => c.variant === 'vmx shadow');

const byKey = (rs: readonly CellRecord[]): Record<string, unknown> => Object.fromEntries(rs.map((r) => [r.cell.key, deterministicPart(r)]));

describe('expandGrid', () => {
  it('takes the cross product, seeds innermost, parameters added to the workload spec', () => {
    expect(grid.map((c) => `${c.workload}|${c.variant}|${c.seed}`)).toEqual([
      'demand-fault:pages=8|vmx shadow|1',
      'demand-fault:pages=8|vmx shadow|2',
      'demand-fault:pages=8|svm shadow|1',
      'demand-fault:pages=8|svm shadow|2',
      'demand-fault:pages=12|vmx shadow|1',
      'demand-fault:pages=12|vmx shadow|2',
      'demand-fault:pages=12|svm shadow|1',
      'demand-fault:pages=12|svm shadow|2',
    ]);
    expect(new Set(grid.map(cellKey)).size).toBe(8);
    expect(withParams('fork-cow:forks=1', { pages: '16' })).toBe('fork-cow:forks=1,pages=16');
  });
});

describe('sweep', () => {
  it('gives each cell the same result in this thread and on 2 worker threads, and skips the cells done on a rerun', async () => {
    const one = await sweep({ cells, out: path.join(tmp, 'one'), jobs: 1 });
    const two = await sweep({ cells, out: path.join(tmp, 'two'), jobs: 2 });
    expect(one.ran).toBe(4);
    expect(two.ran).toBe(4);
    expect(byKey(two.records)).toEqual(byKey(one.records));
    // Every line of results.jsonl is one whole result; the file holds each cell once.
    const lines = readResults(path.join(tmp, 'two', 'results.jsonl'));
    expect(lines.map((r) => r.cell.key).sort()).toEqual(cells.map(cellKey).sort());
    expect(byKey(lines)).toEqual(byKey(one.records));
    expect(lines[0]!.provenance.packages['@vmexit/lab']).toMatch(/^\d/);

    // A rerun runs nothing; a line cut short (a crash mid-write) is dropped and its cell run again.
    const again = await sweep({ cells, out: path.join(tmp, 'one'), jobs: 1 });
    expect([again.ran, again.skipped]).toEqual([0, 4]);
    const file = path.join(tmp, 'one', 'results.jsonl');
    const text = fs.readFileSync(file, 'utf8');
    const cut = text.slice(0, text.lastIndexOf('\n', text.length - 2) + 1) + text.split('\n').at(-2)!.slice(0, 40);
    fs.writeFileSync(file, cut);
    const repaired = await sweep({ cells, out: path.join(tmp, 'one'), jobs: 1 });
    expect([repaired.ran, repaired.skipped]).toEqual([1, 3]);
    expect(byKey(readResults(file))).toEqual(byKey(one.records));
  }, 300_000);

  it('summarises each cell group across seeds: mean, sd, min and max of every counter', async () => {
    const rs = readResults(path.join(tmp, 'one', 'results.jsonl'));
    const groups = summarize(rs);
    expect(groups.map((g) => `${g.workload}|${g.variant}|${g.seeds.join(',')}`).sort()).toEqual(
      ['demand-fault:pages=12|vmx shadow|1,2', 'demand-fault:pages=8|vmx shadow|1,2'].sort(),
    );
    for (const g of groups) {
      const own = rs.filter((r) => r.cell.workload === g.workload && r.cell.variant === g.variant).map((r) => r.counters.total.exits ?? 0);
      const mean = (own[0]! + own[1]!) / 2;
      expect(g.counters.exits).toEqual({ n: 2, mean, sd: Math.abs(own[0]! - own[1]!) / Math.SQRT2, min: Math.min(...own), max: Math.max(...own) });
    }
    const csv = fs.readFileSync(path.join(tmp, 'one', 'summary.csv'), 'utf8');
    expect(csv).toBe(summaryCsv(rs));
    expect(csv.split('\n')[0]).toBe('workload,variant,mode,seeds,counter,mean,sd,min,max');
    expect(csv).toMatch(/^demand-fault:pages=8,vmx shadow,long4,2,exits,\d+,\d+(\.\d+)?,\d+,\d+$/m);
  });

  it('writes the same summary.csv and report.html bytes whatever order the cells finish in', async () => {
    // A queue or a thread pool hands results back in the order the cells finish, which differs from run to run.
    // `cells` is 2 groups (pages=8, pages=12) of 2 seeds; delivered last-first, the pages=12 group arrives first.
    // summary.csv must still list the groups in the sweep's order (pages=8 first), byte for byte as the
    // in-process sweep in tmp/one wrote them (results.jsonl may differ in order; it is keyed per line).
    const reversed: CellExecutor = {
      async run(cs, onOutcome) {
        const outcomes = [];
        for (const c of cs) outcomes.push([c, await runCellOutcome(c)] as const);
        for (const [c, o] of outcomes.reverse()) onOutcome(c, o);
      },
      async close() {},
    };
    await sweep({ cells, out: path.join(tmp, 'reversed'), executor: reversed });
    const read = (dir: string, name: string): string => fs.readFileSync(path.join(tmp, dir, name), 'utf8');
    expect(readResults(path.join(tmp, 'reversed', 'results.jsonl'))[0]!.cell.workload).toBe('demand-fault:pages=12');
    expect(read('reversed', 'summary.csv')).toBe(read('one', 'summary.csv'));
    expect(read('reversed', 'report.html').replace(/reversed/g, 'one')).toBe(read('one', 'report.html'));
  }, 120_000);

  it('refuses a bad variant before any cell runs, and stops at a cell that fails, keeping the others', async () => {
    await expect(sweep({ cells: [{ ...cells[0]!, variant: 'vmx shadow nope' }], out: path.join(tmp, 'bad') })).rejects.toThrow(/--variant "vmx shadow nope"/);
    expect(fs.existsSync(path.join(tmp, 'bad', 'results.jsonl'))).toBe(false);
    await expect(sweep({ cells: [cells[0]!, { ...cells[0]!, workload: 'no-such-workload' }], out: path.join(tmp, 'bad') })).rejects.toThrow(
      /cell [0-9a-f]{16} \(no-such-workload on "vmx shadow", long4, seed 1\): .*no-such-workload/,
    );
    expect(readResults(path.join(tmp, 'bad', 'results.jsonl')).length).toBe(1);
  }, 120_000);
});

describe('InProcessExecutor', () => {
  it('decodes a trace workload once for the cells on it, with the results of cells run one by one', async () => {
    const trace = storeTrace(40, 2, 1);
    const file = path.join(tmp, 'cells.vxt');
    fs.writeFileSync(file, encodeVxt(trace));
    const traceCells = expandGrid({ workloads: [file], variants: ['vmx shadow', 'svm tdp'], modes: ['long4'], seeds: [1, 2], overrides: { memory: '4M' } });
    const { traces, decoded } = countingCellTraces();
    const executor = new InProcessExecutor(traces);
    const records: CellRecord[] = [];
    await executor.run(traceCells, (_c, o) => {
      if (!o.ok) throw new Error(o.error.message);
      records.push(o.record);
    });
    expect(decoded()).toBe(1);
    expect(records).toHaveLength(4);
    for (const [i, c] of traceCells.entries()) expect(deterministicPart(records[i]!)).toEqual(deterministicPart(await runCell(c)));
  });
});
