import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import {
  CellTraceLoader,
  createFileDigests,
  deterministicPart,
  expandGrid,
  InProcessExecutor,
  InputError,
  runCell,
  sweep,
  withInputDigests,
  type Cell,
  type CellRecord,
  type FileDigests,
} from '../src/index.js';
import { outcomeError, runCellOutcome } from '../src/cell.js';
import { fileDigests, RACY_NS } from '../src/file-digests.js';
import { countingCellTraces, encodeVxt, storeTrace } from './helpers/store-trace.js';

const tmp = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-lab-cell-traces-')));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/**
 * Two traces whose files have the same length (226 bytes each) but not the same records: 20 stores to 2 pages,
 * and 20 stores to 8 pages (more first-touch faults, so more exits). A file rewritten from one to the other in
 * place keeps its inode and size, and with its mtime set back, every field a (path, inode, size, mtime) key sees.
 */
const TWO_PAGES = encodeVxt(storeTrace(20, 2, 1));
const EIGHT_PAGES = encodeVxt(storeTrace(20, 8, 1));
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** Writes `bytes` to `file` in place (same inode) with the modification time 1600000000 s. */
function writeKeepingMtime(file: string, bytes: Uint8Array): void {
  fs.writeFileSync(file, bytes);
  fs.utimesSync(file, 1_600_000_000, 1_600_000_000);
}

/** The one cell replaying `file` on vmx shadow (long4, seed 1, 4 MiB of guest RAM). */
const cellOn = (file: string): Cell =>
  expandGrid({ workloads: [file], variants: ['vmx shadow'], modes: ['long4'], seeds: [1], overrides: { memory: '4M' } })[0]!;

/** Runs `cell` on `executor`, failing on an error outcome. */
async function runOn(executor: InProcessExecutor, cell: Cell): Promise<CellRecord> {
  let record: CellRecord | null = null;
  await executor.run([cell], (_c, o) => {
    if (!o.ok) throw new Error(o.error.message);
    record = o.record;
  });
  return record!;
}

describe('CellTraceLoader', () => {
  describe('.load', () => {
    it('gives the trace it keeps for its digest, reads the file for another, and refuses bytes that are not the digest asked for', () => {
      const file = path.join(tmp, 'load.vxt');
      writeKeepingMtime(file, TWO_PAGES);
      const { traces, decoded } = countingCellTraces();
      const two = traces.load(file, sha256(TWO_PAGES));
      expect(traces.load(file, sha256(TWO_PAGES))).toBe(two); // kept: one decode
      expect(decoded()).toBe(1);

      writeKeepingMtime(file, EIGHT_PAGES);
      // The file holds the 8-page trace now: asked for it, the loader reads it (a second decode)...
      expect(traces.load(file, sha256(EIGHT_PAGES)).accesses.page[7]).toBe(0x4835 + 7);
      expect(decoded()).toBe(2);
      // ...and asked for the 2-page trace it no longer keeps, it refuses the file rather than replay other content.
      expect(() => traces.load(file, sha256(TWO_PAGES))).toThrow(
        new InputError(
          `${file} changed since the sweep was planned (sha256 ${sha256(EIGHT_PAGES).slice(0, 12)}… now, ${sha256(TWO_PAGES).slice(0, 12)}… then): rerun the sweep`,
        ),
      );
      expect(decoded()).toBe(2);
    });
  });
});

describe('runCell on a trace workload', () => {
  it('replays the trace its key names, after its file was rewritten with the same inode, size and mtime', async () => {
    const file = path.join(tmp, 'rewritten.vxt');
    expect(TWO_PAGES.length).toBe(EIGHT_PAGES.length); // the premise: one size
    writeKeepingMtime(file, TWO_PAGES);
    const { traces, decoded } = countingCellTraces();
    const executor = new InProcessExecutor(traces); // one thread's loader, kept between the two sweeps' cells
    const [two] = await withInputDigests([cellOn(file)]);
    const first = await runOn(executor, two!);

    const ino = fs.statSync(file).ino;
    writeKeepingMtime(file, EIGHT_PAGES);
    expect(fs.statSync(file).ino).toBe(ino);
    const [eight] = await withInputDigests([cellOn(file)]);
    expect(eight!.inputs).toEqual([{ file, sha256: sha256(EIGHT_PAGES) }]);
    const second = await runOn(executor, eight!);
    // The 8-page trace's result, decoded anew: a loader keyed on (path, inode, size, mtime) gave the 2-page trace it
    // kept, and stored its result under the 8-page trace's key.
    expect(decoded()).toBe(2);
    expect(deterministicPart(second)).toEqual(deterministicPart(await runCell(eight!)));
    expect(second.counters.total.exits).not.toBe(first.counters.total.exits);
  }, 60_000);

  it('refuses a cell whose trace was replaced after planning (an InputError: exit 2), found by the check or at the read', async () => {
    const file = path.join(tmp, 'replaced.vxt');
    writeKeepingMtime(file, TWO_PAGES);
    const [planned] = await withInputDigests([cellOn(file)]);

    // Replaced before the cell runs: the check of its files refuses it.
    writeKeepingMtime(file, EIGHT_PAGES);
    const checked = await runCellOutcome(planned!);
    expect(checked.ok).toBe(false);
    if (checked.ok) return;
    expect([checked.error.name, checked.error.exitCode]).toEqual(['InputError', 2]);
    expect(checked.error.message).toContain(`${file} is not the file the sweep planned the cell with`);
    expect(outcomeError(planned!, checked.error)).toBeInstanceOf(InputError);

    // Replaced after the check, before the trace is read: the loader finds the bytes it read are another content.
    writeKeepingMtime(file, TWO_PAGES);
    const own = createFileDigests();
    const replacing: FileDigests = {
      sha256: (f) => own.sha256(f),
      sha256Sync: (f) => own.sha256Sync(f),
      get hashed() {
        return own.hashed;
      },
      readWithSha256: (f, read) => {
        writeKeepingMtime(file, EIGHT_PAGES);
        return own.readWithSha256(f, read);
      },
    };
    const read = await runCellOutcome(planned!, new CellTraceLoader({ digests: replacing }));
    expect(read.ok).toBe(false);
    if (read.ok) return;
    expect([read.error.name, read.error.exitCode]).toEqual(['InputError', 2]);
    expect(read.error.message).toContain(`${file} changed since the sweep was planned`);
  }, 60_000);

  it("holds a relative trace path to its planned digest in a worker whose working directory is not the planner's", async () => {
    // A queue's worker runs in a directory of its own, with the same relative layout (`rel.vxt` in both). The cell's
    // inputs name the planner's absolute path; checkCellInputs pairs the files by position, and so must the trace
    // read: keyed by the planner's path, the worker's file found no digest and was replayed whatever it held.
    const planner = path.join(tmp, 'planner');
    const worker = path.join(tmp, 'worker');
    for (const d of [planner, worker]) {
      fs.mkdirSync(d, { recursive: true });
      writeKeepingMtime(path.join(d, 'rel.vxt'), TWO_PAGES);
    }
    const [planned] = await withInputDigests([cellOn('rel.vxt')], planner);
    expect(planned!.inputs).toEqual([{ file: path.join(planner, 'rel.vxt'), sha256: sha256(TWO_PAGES) }]);
    const file = path.join(worker, 'rel.vxt');
    // Replaced after the check, before the trace is read (as above).
    const own = createFileDigests();
    const replacing: FileDigests = {
      sha256: (f) => own.sha256(f),
      sha256Sync: (f) => own.sha256Sync(f),
      get hashed() {
        return own.hashed;
      },
      readWithSha256: (f, read) => {
        writeKeepingMtime(file, EIGHT_PAGES);
        return own.readWithSha256(f, read);
      },
    };
    const cwd = process.cwd();
    process.chdir(worker);
    let out: Awaited<ReturnType<typeof runCellOutcome>>;
    try {
      out = await runCellOutcome(planned!, new CellTraceLoader({ digests: replacing }));
    } finally {
      process.chdir(cwd);
    }
    expect(out.ok).toBe(false);
    if (out.ok) return;
    expect([out.error.name, out.error.exitCode]).toEqual(['InputError', 2]);
    expect(out.error.message).toContain(`${file} changed since the sweep was planned`);
  }, 60_000);
});

describe('sweep', () => {
  it('hashes a trace once in this thread for all its cells (planning), then only stats it', async () => {
    const file = path.join(tmp, 'once.vxt');
    writeKeepingMtime(file, TWO_PAGES);
    // Past the racy window (a file changed less than RACY_NS before its hash is hashed again each time).
    await sleep(Number(RACY_NS / 1_000_000n) + 100);
    const cells = expandGrid({ workloads: [file], variants: ['vmx shadow'], modes: ['long4'], seeds: [1, 2, 3, 4], overrides: { memory: '4M' } });
    const hashed = fileDigests.hashed;
    const out = await sweep({ cells }); // in this thread: the planning, the 4 cells' checks and their trace's read share one cache
    expect(out.ran).toBe(4);
    // 1: the planning read the file; the 4 checks (checkCellInputs) and the one read of the trace found its stat
    // unchanged. Each cell hashed its files again before (1 + 4).
    expect(fileDigests.hashed - hashed).toBe(1);
  }, 60_000);
});
