import { describe, expect, it } from 'vitest';
import { parseVariantSpec } from '../src/commands/compare.js';
import { runChecked } from '@vmexit/lab';

/**
 * The guest must not be able to tell that it runs virtualized (the design's first rule: a guest cannot tell a hypervisor is there): every synthetic workload,
 * in legacy32, PAE and 4-level paging, on 1 and 4 vCPUs, under VMX and SVM shadow paging, must show the guest
 * exactly what a native run shows it: the same #PFs in the same order (address, error code, vCPU, process),
 * the same SIGSEGVs and the same final memory (`--check`); and the shadow MMU must keep every invariant of
 * its audit after every exit (`--audit`, incremental: see mmu-shadow/src/audit.ts). Sizes are small so the
 * matrix stays fast (about 50 s with the audit, 20 s without, on 2 cores); each still exercises its
 * workload's page-table behaviour (COW after fork, exec teardown, mprotect downgrades, freed page
 * directories reused as data, several processes per vCPU).
 */
const WORKLOADS = [
  'demand-fault:pages=96',
  'fork-cow:pages=48,forks=2',
  'exec-storm:execs=3',
  'mprotect-storm:pages=24,rounds=4,writes=6',
  'pt-recycle:dirs=3',
  'scan:pages=64,passes=2',
  'random-ws:pages=64,accesses=400',
  'zipf:pages=64,accesses=400',
];
const MODES = ['legacy32', 'pae', 'long4'] as const;
/**
 * CI runs a fixed third of the 96 cells: cell c (backend, mode, vCPUs, in that order) runs the workloads w with
 * (w + c) % 3 === 0, so every workload runs in four cells, two on each backend, in more than one mode and at
 * both vCPU counts. VMEXIT_FULL_MATRIX=1 runs every cell.
 */
const FULL = process.env.VMEXIT_FULL_MATRIX === '1';

describe('the guest cannot tell (--check), and the MMU keeps its invariants (--audit)', () => {
  let cell = 0;
  for (const backend of ['vmx', 'svm'] as const) {
    for (const mode of MODES) {
      for (const vcpus of [1, 4]) {
        const c = cell++;
        const workloads = WORKLOADS.filter((_, w) => FULL || (w + c) % 3 === 0);
        describe(`${backend} shadow, ${mode}, ${vcpus} vCPU${vcpus > 1 ? 's' : ''}`, () => {
          it.each(workloads)('%s', async (workload) => {
            const variant = await parseVariantSpec(`${backend} shadow`, { vcpus: String(vcpus), memory: String(16 * 1024 * 1024) });
            const { run, check } = await runChecked({ workload, mode, seed: 5, personalities: [], variant, audit: true });
            expect(check.divergence).toBeNull();
            expect(run.result.counters.total.exits).toBeGreaterThan(0);
          });
        });
      }
    }
  }
});
