import { mkdtempSync, mkdirSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { from, lastValueFrom, toArray } from 'rxjs';
import { composeVariant, PFERR_USER, PFERR_WRITE, type ModuleSources } from '@vmexit/core';
import { pagedVcpu, pageFaultExit, policyVcpuContext, runPolicyVm } from '@vmexit/core/testing';
import { describe, expect, it } from 'vitest';
import containerModule, { reflectRange, type ReflectRangeOptions } from '../src/index.js';

const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** No backend or MMU modules: only the policy's own problems (paths under 'policies') are looked at. */
const SOURCES: ModuleSources = { backends: {}, mmus: {}, policies: [] };

describe('reflectRange', () => {
  describe('.exits', () => {
    it("injects the #PFs of its range that the guest's tables do not allow, with the guest walk's error code, and passes on the others", async () => {
      // A vCPU in 4-level paging whose own tables map only 0x1000 (user, writable).
      const ctx = policyVcpuContext<ReflectRangeOptions>({ from: 0x1000, to: 0x3000 }, { vcpu: pagedVcpu([{ va: 0x1000, gpa: 0x20000 }]) });
      // 0x2800: in range, not present in the guest -> injected, error code W|U (P=0). 0x1800: in range, but the
      // guest maps it (a shadow fault for the MMU) -> passed on. 0x3000: out of range -> passed on.
      const exits = [0x2800, 0x1800, 0x3000].map((address, i) => pageFaultExit({ address, seq: i + 1 }));
      const out = await lastValueFrom(from(exits).pipe(reflectRange.exits!(ctx), toArray()));
      expect(out.map((e) => e.resolvedBy)).toEqual(['reflect-range', null, null]);
      expect(out[0]!.resolution).toEqual({ kind: 'inject', vector: 14, errorCode: PFERR_USER | PFERR_WRITE });
      expect(ctx.counts).toEqual({ 'reflect_range.injected': 1 });
    });
  });

  describe('on a VM (runPolicyVm: createVm and the guest OS model)', () => {
    // demand-fault:pages=64 on VMX shadow paging: 193 exits, all #PF (EXCEPTION_NMI: under shadow paging KVM
    // sets bit 14 of the exception bitmap, so every #PF exits, SDM Vol. 3C §26.2 with §25.6.3). Each of the 64
    // user pages is touched once and costs 3 exits: (1) the demand fault: its address is in the range and the
    // guest pte is not present, so reflect-range injects it (64 injected) before the MMU's handler, which would
    // have injected it too; (2) the guest kernel's pte store into its write-protected (shadowed) page table,
    // emulated (64 emulated writes); (3) the re-executed access: the guest pte is present now, so the policy
    // passes it on and the MMU builds the spte. One more: the guest kernel's first read of the process's
    // top-level table through its direct map, which the new shadow root does not map yet (a shadow fault the
    // MMU fixes: pf_fixed = 64 + 1). 64 x 3 + 1 = 193, with the policy and without it.
    const run = (options: ReflectRangeOptions | null) =>
      runPolicyVm({
        variant: { backend: 'vmx', mmu: 'shadow', memory: '16M', policies: options === null ? [] : [{ use: 'reflect-range', options }] },
        modules: [containerModule],
        workload: 'demand-fault:pages=64',
      });

    it('injects the 64 demand faults itself, with the same exits and the same guest outcome', async () => {
      const base = await run(null);
      const mine = await run({ from: 0, to: 2 ** 47 }); // all of user space (4-level paging: canonical low half)
      expect(base.counters['exits']).toBe(193);
      expect(base.counters['exits.EXCEPTION_NMI']).toBe(193);
      expect(base.counters['pf_fixed']).toBe(65);
      expect(base.counters['pf_guest']).toBe(64);
      expect(mine.counters['reflect_range.injected']).toBe(64);
      // Every other counter is the run's without the policy: the same 64 injections (pf_guest counts each
      // #PF injected, whoever decided it), the same exits, fixes and emulated writes; but the MMU's handler
      // took 64 faults fewer (pf_taken: KVM counts the faults its page-fault handler takes, and these never
      // reached it).
      expect(base.counters['pf_taken']! - mine.counters['pf_taken']!).toBe(64);
      const all = Object.keys({ ...base.counters, ...mine.counters });
      expect(all.filter((k) => base.counters[k] !== mine.counters[k]).sort()).toEqual(['pf_taken', 'reflect_range.injected']);
      // What it declares in `counters` (what `vmexit run` shows for it) is the counter its work moved.
      expect(reflectRange.counters).toEqual(['reflect_range.injected']);
      expect(mine.memoryDigest).toBe(base.memoryDigest);
      expect(mine.guestEvents).toBe(base.guestEvents);
      // An empty range changes nothing.
      const none = await run({ from: 0, to: 0 });
      expect(none.counters['reflect_range.injected'] ?? 0).toBe(0);
      expect(none.counters['pf_guest']).toBe(64);
    });
  });

  describe('loading', () => {
    it('is found by package name through the composition API, with its options validated', async () => {
      // node_modules/<this package> in a scratch directory, as `npm install` makes it for a user.
      const dir = mkdtempSync(join(tmpdir(), 'vmexit-policy-'));
      const link = join(dir, 'node_modules', ...'vmexit-policy-template'.split('/'));
      mkdirSync(dirname(link), { recursive: true });
      symlinkSync(packageDir, link, 'dir');
      const use = 'vmexit-policy-template';
      const ok = await composeVariant({ backend: 'vmx', policies: [{ use, options: { to: 4096 } }], resolveFrom: dir }, SOURCES);
      expect(ok.problems.filter((p) => p.path.startsWith('policies'))).toEqual([]);
      expect(ok.policies.map((p) => [p.policy.name, p.options])).toEqual([['reflect-range', { from: 0, to: 4096 }]]);
      const bad = await composeVariant({ backend: 'vmx', policies: [{ use, options: { to: 'x' } }], resolveFrom: dir }, SOURCES);
      expect(bad.problems.map((p) => p.path)).toContain('policies.0.options.to');
    });
  });
});
