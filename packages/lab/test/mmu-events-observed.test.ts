import { describe, expect, it } from 'vitest';
import type { MmuEventKind } from '@vmexit/core';
import { parseVariantSpec, runOnVariant } from '../src/index.js';

// core's VcpuMmuEvents: with no policy deciding a kind and no tracer or recorder, the MMU counts that kind's events
// (mmu_events.<kind>) without building them; while the VM's mmuEvents$ has a subscriber when the MMU asks
// (`decidesByDefault`, at each kind's first event), it builds every event and sends it through the pipeline, where
// nobody decides it and the MMU's own choice stands. Either way the run must be the same: every counter, per vCPU
// and in total, and the guest's memory. Only the subscriber's view differs.

/** A run of `workload` on `spec`, with or without a subscriber to mmuEvents$ from before the guest boots. */
async function run(spec: string, workload: string, observe: boolean) {
  const variant = await parseVariantSpec(spec, { vcpus: '2', memory: '8M' });
  const seen = new Map<MmuEventKind, number>();
  const { result } = await runOnVariant({
    workload,
    mode: 'long4',
    seed: 3,
    personalities: [],
    variant,
    onVm: observe ? (vm) => vm.mmuEvents$.subscribe((ev) => seen.set(ev.kind, (seen.get(ev.kind) ?? 0) + 1)) : undefined,
  });
  return { counters: result.counters, digest: result.memoryDigest, seen };
}

describe('mmuEvents$ observed or not', () => {
  // No policy (every kind counted only when unobserved), one kind decided by a policy (write-flood: flood), two.
  for (const spec of ['vmx shadow', 'vmx shadow write-flood', 'svm shadow pte-update,unsync']) {
    it(`${spec}: the same counters (per vCPU and total) and memory digest, fork-cow on 2 vCPUs`, async () => {
      const workload = 'fork-cow:pages=32,forks=2';
      const plain = await run(spec, workload, false);
      const observed = await run(spec, workload, true);
      expect(plain.counters.vcpus).toHaveLength(2);
      expect(observed.counters).toEqual(plain.counters);
      expect(observed.digest).toBe(plain.digest);
      // Not vacuous: the MMU made decisions of a kind no policy takes (prefetch), counted in both runs, and the
      // subscriber saw them built (more than the counters show: it saw the boot too, which the counters' window leaves out).
      const total = plain.counters.total;
      expect(total['mmu_events.prefetch'] ?? 0).toBeGreaterThan(0);
      expect(observed.seen.get('prefetch')).toBeGreaterThanOrEqual(total['mmu_events.prefetch']!);
    }, 60_000);
  }
});
