import { describe, expect, it } from 'vitest';
import { parseVariantSpec } from '../src/commands/compare.js';
import { runChecked } from '@vmexit/lab';

const FULL = process.env.VMEXIT_FULL_MATRIX === '1';

/**
 * The bundled kbuild trace (a real compile; its addresses need 4-level paging) in the matrix of backends and vCPU
 * counts that matrix.int.test.ts runs the synthetic workloads in (a file of its own, so that a second test worker
 * can run it beside that one). Without flood detection every store to a recycled page-table page exits and is emulated
 * (about 1.5 M exits, each audited): `vmexit run --workload kbuild --backend vmx --mmu shadow --check --audit`
 * passes in about 3 minutes, too long for every CI run. With `write-flood` (KVM's default behaviour since
 * 2007) the same shadow MMU runs every other path of kbuild, audited after each of its ~47,000 exits, in
 * about 26 s a cell on 1 vCPU and 60 s on 4 on a slow 2-core machine. CI runs the two 1-vCPU cells (one per
 * backend; the synthetic matrix runs both backends on 4 vCPUs); VMEXIT_FULL_MATRIX=1 runs all four.
 */
describe('kbuild (--check --audit, with write-flood)', () => {
  for (const backend of ['vmx', 'svm'] as const) {
    for (const vcpus of [1, 4]) {
      if (!FULL && vcpus !== 1) continue;
      it(`${backend} shadow write-flood, long4, ${vcpus} vCPU${vcpus > 1 ? 's' : ''}`, async () => {
        const variant = await parseVariantSpec(`${backend} shadow write-flood`, { vcpus: String(vcpus) });
        const { run, check } = await runChecked({ workload: 'kbuild', mode: 'long4', seed: 1, personalities: [], variant, audit: true });
        expect(check.divergence).toBeNull();
        expect(run.result.counters.total.mmu_flooded).toBeGreaterThan(0);
        expect(run.result.counters.total.exits).toBeGreaterThan(10_000);
      }, 300_000);
    }
  }
});
