import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  cellInputFiles,
  cellKey,
  deterministicPart,
  expandGrid,
  InputError,
  readResults,
  runCell,
  summarize,
  sweep,
  withInputDigests,
  type Cell,
  type CellExecutor,
} from '../src/index.js';
import { outcomeError, runCellOutcome } from '../src/cell.js';
import { buildCheckedProcessor, jobProcessor } from '../src/queue-processor.js';
import { encodeVxt, storeTrace } from './helpers/store-trace.js';

// realpath: policy modules are listed as Node resolves them, with symbolic links resolved (/tmp may be one).
const tmp = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-lab-cell-')));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A scratch directory of its own under tmp. */
const dirOf = (name: string): string => {
  const d = path.join(tmp, name);
  fs.mkdirSync(d, { recursive: true });
  return d;
};

/** The one cell of `workload` on `variant` (seed 1, long4, 4 MiB of guest RAM: a tiny run). */
const cellOf = (variant: string, workload = 'demand-fault:pages=8'): Cell =>
  expandGrid({ workloads: [workload], variants: [variant], modes: ['long4'], seeds: [1], overrides: { memory: '4M' } })[0]!;

describe('cellKey', () => {
  it('keeps the key of a cell that reads no file, so that the results of such sweeps stay valid', async () => {
    // The value results.jsonl files already hold for this cell: sha256 of the canonical JSON
    // ["run","demand-fault:pages=8","vmx shadow","long4",1,[],{"memory":"4M"}], first 16 hex digits.
    const c = cellOf('vmx shadow');
    expect(cellKey(c)).toBe('c296b1f2cb652e4d');
    const [planned] = await withInputDigests([c]);
    expect(planned).toEqual(c); // no `inputs` field added
    expect(cellKey(planned!)).toBe('c296b1f2cb652e4d');
  });
});

describe('cellInputFiles', () => {
  it('lists the trace, the config file, its policy module by path and its cost model, resolved as the run resolves them', async () => {
    const d = dirOf('inputs');
    fs.mkdirSync(path.join(d, 'policy'));
    fs.writeFileSync(path.join(d, 'policy', 'package.json'), JSON.stringify({ name: 'mine', main: 'main.mjs' }));
    fs.writeFileSync(path.join(d, 'policy', 'main.mjs'), 'export default null;\n');
    fs.writeFileSync(path.join(d, 'cost.json'), '{}');
    fs.writeFileSync(path.join(d, 't.vxt'), '');
    // Relative to the config's directory: the policy (a directory: its package's entry) and the cost model.
    fs.writeFileSync(
      path.join(d, 'v.json'),
      JSON.stringify({ backend: 'vmx', policies: [{ use: 'pte-update' }, { use: './policy#mine' }], costModel: './cost.json' }),
    );
    const c = cellOf(path.join(d, 'v.json'), 't.vxt');
    expect(await cellInputFiles(c, d)).toEqual([path.join(d, 't.vxt'), path.join(d, 'v.json'), path.join(d, 'policy', 'main.mjs'), path.join(d, 'cost.json')]);
    // Words: a policy path relative to the working directory, and --cost-model FILE (which wins over the config's).
    const words: Cell = { ...cellOf('vmx shadow pte-update,./policy/main.mjs'), overrides: { costModel: 'cost.json' } };
    expect(await cellInputFiles(words, d)).toEqual([path.join(d, 'policy', 'main.mjs'), path.join(d, 'cost.json')]);
    // Built-in names, a package name and the bundled kbuild trace read no file of the user's.
    expect(await cellInputFiles(cellOf('vmx tdp pte-update @acme/policy', 'kbuild'), d)).toEqual([]);
  });
});

describe('sweep', () => {
  it('runs a cell again once its config file changed, and results.jsonl and summary.csv keep only the new result', async () => {
    const d = dirOf('config');
    const config = path.join(d, 'v.json');
    const out = path.join(d, 'out');
    fs.writeFileSync(config, JSON.stringify({ backend: 'vmx', mmu: 'shadow' }));
    const cells = [cellOf(config)];
    const first = await sweep({ cells, out });
    expect([first.ran, first.skipped]).toEqual([1, 0]);
    // The same file again: nothing to run.
    expect((await sweep({ cells, out })).ran).toBe(0);

    // The variant file now says svm: the same spec (its path) is another variant, so the cell must run again (it was
    // skipped as done, its vmx result kept under the svm config) and its vmx result must go.
    fs.writeFileSync(config, JSON.stringify({ backend: 'svm', mmu: 'shadow' }));
    const second = await sweep({ cells, out });
    expect([second.ran, second.skipped]).toEqual([1, 0]);
    const fresh = await sweep({ cells, out: path.join(d, 'fresh') });
    const lines = readResults(path.join(out, 'results.jsonl'));
    expect(lines).toHaveLength(1);
    expect(deterministicPart(lines[0]!)).toEqual(deterministicPart(fresh.records[0]!));
    expect(deterministicPart(lines[0]!)).not.toEqual(deterministicPart(first.records[0]!));
    expect(lines[0]!.cell.key).not.toBe(first.records[0]!.cell.key);
    // One group of one seed in the summary, not the old and new results as two seeds of one cell.
    expect(summarize(lines).map((g) => g.seeds)).toEqual([[1]]);
    const csv = fs.readFileSync(path.join(out, 'summary.csv'), 'utf8');
    expect(csv).toBe(fs.readFileSync(path.join(d, 'fresh', 'summary.csv'), 'utf8'));
  }, 120_000);

  it('runs a trace workload again once its .vxt file changed', async () => {
    const d = dirOf('trace');
    const trace = path.join(d, 't.vxt');
    const out = path.join(d, 'out');
    fs.writeFileSync(trace, encodeVxt(storeTrace(20, 2, 1)));
    const cells = [cellOf('vmx shadow', trace)];
    const first = await sweep({ cells, out });
    fs.writeFileSync(trace, encodeVxt(storeTrace(20, 4, 1))); // stores to 4 pages now, not 2: more first-touch faults, so other counters
    const second = await sweep({ cells, out });
    expect([second.ran, second.skipped]).toEqual([1, 0]);
    const lines = readResults(path.join(out, 'results.jsonl'));
    expect(lines.map((r) => r.cell.key)).toEqual([second.records[0]!.cell.key]);
    expect(second.records[0]!.counters.total.exits).not.toBe(first.records[0]!.counters.total.exits);
  }, 120_000);

  it('runs a cell again on 2 worker threads once its .mjs config changed (each sweep has threads of its own)', async () => {
    const d = dirOf('mjs');
    const config = path.join(d, 'v.mjs');
    const out = path.join(d, 'out');
    fs.writeFileSync(config, "export default { backend: 'vmx', mmu: 'shadow' };\n");
    const cells = [cellOf(config), cellOf(config, 'demand-fault:pages=12')];
    const first = await sweep({ cells, out, jobs: 2 });
    fs.writeFileSync(config, "export default { backend: 'svm', mmu: 'shadow' };\n");
    const second = await sweep({ cells, out, jobs: 2 });
    expect([second.ran, second.skipped]).toEqual([2, 0]);
    const svm = await sweep({ cells: [cellOf('svm shadow'), cellOf('svm shadow', 'demand-fault:pages=12')] });
    const lines = readResults(path.join(out, 'results.jsonl'));
    expect(lines).toHaveLength(2);
    // The svm variant's counters, not vmx's (the records differ only in the cell they answer).
    const counters = (rs: readonly { counters: unknown }[]) => rs.map((r) => r.counters);
    expect(counters(second.records)).toEqual(counters(svm.records));
    expect(counters(first.records)).not.toEqual(counters(svm.records));
  }, 120_000);
});

describe('checkCellInputs', () => {
  it('refuses a module config this thread imported in an earlier version (Node keeps a module once imported)', async () => {
    const d = dirOf('imported');
    const config = path.join(d, 'v.mjs');
    fs.writeFileSync(config, "export default { backend: 'vmx', mmu: 'shadow' };\n");
    const cells = [cellOf(config)];
    expect((await sweep({ cells })).ran).toBe(1); // in this thread: it imported v.mjs
    fs.writeFileSync(config, "export default { backend: 'svm', mmu: 'shadow' };\n");
    // The planned digest is the new file's, but this thread would run the vmx module it keeps: refused, not run as vmx.
    await expect(sweep({ cells })).rejects.toThrow(`${config} changed after this thread imported it`);
  });

  it('refuses a cell whose file differs from the one it was planned with: runCell, a sweep, and a queue worker', async () => {
    const d = dirOf('mismatch');
    const config = path.join(d, 'v.json');
    fs.writeFileSync(config, JSON.stringify({ backend: 'vmx', mmu: 'shadow' }));
    const [planned] = await withInputDigests([cellOf(config)]);
    expect(planned!.inputs).toHaveLength(1);
    fs.writeFileSync(config, JSON.stringify({ backend: 'svm', mmu: 'shadow' }));
    const refusal = `${config} is not the file the sweep planned the cell with`;
    await expect(runCell(planned!)).rejects.toThrow(refusal);
    await expect(runCell(planned!)).rejects.toBeInstanceOf(InputError);

    // A sweep whose file changes between planning and the run (a worker elsewhere with another copy): the cell is
    // refused, the sweep fails with an InputError, and no result is written.
    fs.writeFileSync(config, JSON.stringify({ backend: 'vmx', mmu: 'shadow' }));
    const elsewhere: CellExecutor = {
      async run(cells, onOutcome) {
        fs.writeFileSync(config, JSON.stringify({ backend: 'svm', mmu: 'shadow' }));
        for (const c of cells) onOutcome(c, await runCellOutcome(c));
      },
      async close() {},
    };
    const out = path.join(d, 'out');
    await expect(sweep({ cells: [cellOf(config)], out, executor: elsewhere })).rejects.toThrow(refusal);
    expect(fs.existsSync(path.join(out, 'results.jsonl'))).toBe(false);

    // A queue worker's processor answers the job with the refusal (an InputError, exit 2, at the sweep), not a result.
    const build = { id: 'b1', packages: { '@vmexit/lab': '0.0.0' } };
    const processJob = buildCheckedProcessor(jobProcessor(60_000), () => build);
    const answer = await processJob({ data: { ...planned!, build: 'b1' } });
    expect(answer.ok).toBe(false);
    if (answer.ok) return;
    expect([answer.error.name, answer.error.exitCode]).toEqual(['InputError', 2]);
    expect(answer.error.message).toContain(refusal);
    expect(outcomeError(planned!, answer.error)).toBeInstanceOf(InputError);
    // With the planned file back, the same job runs.
    fs.writeFileSync(config, JSON.stringify({ backend: 'vmx', mmu: 'shadow' }));
    const ran = await processJob({ data: { ...planned!, build: 'b1' } });
    expect(ran.ok && ran.record.cell.key).toBe(cellKey(planned!));
  }, 120_000);
});
