import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { runNative, runTdp } from './vm.js';

// Random guest programs (the guest model's synthetic workloads with random parameters, in a random paging
// mode and host page size) under TDP on VMX and SVM, the MMU audited after every exit: the guest must not
// tell it runs virtualized (the same guest-visible events and final memory as the native run), and the
// guest's own #PFs never exit.
const programs = fc.oneof(
  fc.record({ pages: fc.integer({ min: 1, max: 300 }), write: fc.integer({ min: 0, max: 1 }) }).map((p) => `demand-fault:pages=${p.pages},write=${p.write}`),
  fc.record({ pages: fc.integer({ min: 1, max: 64 }), forks: fc.integer({ min: 1, max: 3 }) }).map((p) => `fork-cow:pages=${p.pages},forks=${p.forks}`),
  fc.constantFrom('exec-storm', 'mprotect-storm:pages=24,rounds=4,writes=6', 'pt-recycle'),
);

describe('TDP against native (property)', () => {
  it('random programs: same guest-visible outcome, audit clean after every exit, no #PF exits', async () => {
    await fc.assert(
      fc.asyncProperty(
        programs,
        fc.constantFrom('vmx', 'svm') as fc.Arbitrary<'vmx' | 'svm'>,
        fc.constantFrom('legacy32', 'pae', 'long4', 'long5') as fc.Arbitrary<'legacy32' | 'pae' | 'long4' | 'long5'>,
        fc.constantFrom('4k', '2m', '1g') as fc.Arbitrary<'4k' | '2m' | '1g'>,
        async (workload, backend, mode, hostPages) => {
          const t = await runTdp({ backend, mmu: 'tdp', guest: { mode, personality: 'linux' } }, workload, { hostPages });
          const n = runNative(workload, mode);
          expect(t.out.result.memoryDigest).toBe(n.result.memoryDigest);
          expect(JSON.stringify(t.out.events)).toBe(JSON.stringify(n.events));
          expect(t.exits.filter((e) => e.kind === 'exception' || e.kind === 'invlpg').length).toBe(0);
          expect(t.exits.filter((e) => e.kind === 'cr-write' && e.cr === 3).length).toBe(0);
        },
      ),
      { numRuns: 8, seed: 12 },
    );
  });

  it('is deterministic: the same variant, workload and seed give the same counters and digest', async () => {
    const a = await runTdp({ backend: 'svm', mmu: 'tdp' }, 'fork-cow:pages=64,forks=2', { audit: false });
    const b = await runTdp({ backend: 'svm', mmu: 'tdp' }, 'fork-cow:pages=64,forks=2', { audit: false });
    expect(a.total).toEqual(b.total);
    expect(a.out.result.memoryDigest).toBe(b.out.result.memoryDigest);
  });
});
