import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runWorkload, type RunOptions, type RunResult } from '../../src/run.js';

/**
 * Golden results: the committed expected native result of each bundled workload, and of
 * each synthetic workload with small parameters, in long4, pae and legacy32. A test runs each and diffs it
 * against the file; a change to a file is a reviewed change of the guest's behaviour.
 *
 * The files are the output of the machinery, never written by hand. To regenerate them after an intended
 * change (then review the diff):
 *
 *     cd packages/guest && UPDATE_GOLDEN=1 npx vitest run test/golden/golden.test.ts
 */
const HERE = path.dirname(fileURLToPath(import.meta.url));
const UPDATE = process.env['UPDATE_GOLDEN'] === '1';

/** What a golden result pins: everything deterministic in a RunResult (not the wall time, not the rate). */
function golden(r: RunResult): Record<string, unknown> {
  const g = r.guest;
  return {
    input: r.workload.input,
    params: r.workload.params,
    mode: r.variant.mode,
    vcpus: r.variant.vcpus,
    memory: r.variant.memory,
    seed: r.seed,
    accesses: g.accesses,
    processes: g.processes,
    contextSwitches: g.contextSwitches,
    faults: g.faults,
    sigsegv: g.sigsegv,
    syscalls: g.syscalls,
    tlb: g.tlb,
    pageTables: g.pageTables,
    pteWrites: g.pteWrites,
    pageCacheMisses: g.pageCacheMisses,
    ...(g.trace === undefined ? {} : { trace: g.trace }),
    ...(r.measured === undefined ? {} : { measured: r.measured }),
    counters: r.counters,
    memoryDigest: r.memoryDigest,
  };
}

/** Runs `runs`, then compares each with the committed file `name` (or rewrites it with UPDATE_GOLDEN=1). */
function checkGolden(name: string, runs: readonly RunOptions[]): void {
  const file = path.join(HERE, name);
  const actual = runs.map((o) => golden(runWorkload(o).result));
  if (UPDATE) {
    fs.writeFileSync(file, `${JSON.stringify(actual, null, 2)}\n`);
    return;
  }
  const expected = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>[];
  expect(actual.map((a) => `${a.input} ${a.mode} seed ${a.seed}`)).toEqual(expected.map((e) => `${e.input} ${e.mode} seed ${e.seed}`));
  actual.forEach((a, i) => expect(a, `${a.input} ${a.mode} seed ${a.seed}`).toEqual(expected[i]));
}

/** Small configurations of every synthetic workload (a few seconds for all three modes). */
const SMALL = [
  'demand-fault:pages=300',
  'fork-cow:pages=64,forks=2,write=0.25',
  'exec-storm:execs=4',
  'mprotect-storm:pages=8,rounds=4,writes=4',
  'pt-recycle:dirs=4',
  'scan:pages=128,passes=2',
  'random-ws:pages=128,accesses=3000',
  'zipf:pages=128,accesses=3000',
  'dirty-log-test:pages=64,iterations=4,writes=16',
];

describe('golden results', () => {
  describe('.kbuild', () => {
    it('replays the bundled kbuild trace natively in long4 exactly as committed (seed 7 and the default seed)', () => {
      checkGolden('kbuild.long4.json', [
        { workload: 'kbuild', mode: 'long4', seed: 7 },
        { workload: 'kbuild', mode: 'long4' },
      ]);
    });
  });

  describe('.synthetic', () => {
    for (const mode of ['long4', 'pae', 'legacy32'] as const) {
      it(`runs every synthetic workload natively in ${mode} exactly as committed`, () => {
        checkGolden(
          `synthetic.${mode}.json`,
          SMALL.map((workload) => ({ workload, mode, vcpus: 2, seed: 3, memory: 16 * 1024 * 1024 })),
        );
      });
    }
  });
});
