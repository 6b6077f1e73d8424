import { mkdtempSync, mkdirSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { from, lastValueFrom, toArray } from 'rxjs';
import {
  composeVariant,
  createVm,
  CR0_PE,
  CR0_PG,
  CR4_PAE,
  EFER_LME,
  Machine,
  PFERR_USER,
  PFERR_WRITE,
  PT_PRESENT,
  PT_USER,
  PT_WRITABLE,
  type ModuleSources,
  type PolicyVcpuContext,
  type VmExit,
} from '@vmexit/core';
import vmxModule from '@vmexit/backend-vmx';
import { runWorkload } from '@vmexit/guest';
import { shadowMmuModule } from '@vmexit/mmu-shadow';
import { describe, expect, it } from 'vitest';
import { reflectRange, type ReflectRangeOptions } from '../src/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const packageDir = resolve(here, '..');
/** No backend or MMU modules: only the policy's own problems (paths under 'policies') are looked at. */
const SOURCES: ModuleSources = { backends: {}, mmus: {}, policies: [] };

const pf = (seq: number, address: number): VmExit => ({
  kind: 'exception',
  vcpu: 0,
  seq,
  hw: { backend: 'vmx', code: 0, name: 'EXCEPTION_NMI', fields: {} },
  vector: 14,
  errorCode: PFERR_USER | PFERR_WRITE,
  address,
  access: PFERR_USER | PFERR_WRITE,
  resolution: null,
  resolvedBy: null,
});

/** A vCPU in 4-level paging whose tables map only 0x1000 (user, writable); every other address is not present. */
function guestVcpu() {
  const m = new Machine({ memoryBytes: 1 << 20 });
  const v = m.vcpus[0]!;
  const link = (at: number, to: number) => m.memory.write32(at, to | PT_PRESENT | PT_WRITABLE | PT_USER);
  link(0x10000, 0x11000); // PML4[0] -> PDPT
  link(0x11000, 0x12000); // PDPT[0] -> PD
  link(0x12000, 0x13000); // PD[0] -> PT
  link(0x13000 + 8, 0x20000); // PT[1]: va 0x1000 -> 0x20000
  v.writeEfer(EFER_LME);
  v.movToCr4(CR4_PAE);
  v.movToCr3(0x10000);
  v.movToCr0((CR0_PG | CR0_PE) >>> 0);
  return v;
}

describe('reflectRange', () => {
  describe('.exits', () => {
    it("injects the #PFs of its range that the guest's tables do not allow, with the guest walk's error code, and passes on the others", async () => {
      const counted: string[] = [];
      const ctx = {
        options: { from: 0x1000, to: 0x3000 },
        vcpu: guestVcpu(),
        count: (n: string) => counted.push(n),
      } as unknown as PolicyVcpuContext<ReflectRangeOptions>;
      // 0x2800: in range, not present in the guest -> injected, error code W|U (P=0). 0x1800: in range, but the
      // guest maps it (a shadow fault for the MMU) -> passed on. 0x3000: out of range -> passed on.
      const out = await lastValueFrom(from([pf(1, 0x2800), pf(2, 0x1800), pf(3, 0x3000)]).pipe(reflectRange.exits!(ctx), toArray()));
      expect(out.map((e) => e.resolvedBy)).toEqual(['reflect-range', null, null]);
      expect(out[0]!.resolution).toEqual({ kind: 'inject', vector: 14, errorCode: PFERR_USER | PFERR_WRITE });
      expect(counted).toEqual(['reflect_range.injected']);
    });
  });

  describe('on a VM (createVm, the guest OS model)', () => {
    // As packages/policies/README.md asks of a policy: a run on a real VM that states the counts it expects.
    // demand-fault:pages=64 on VMX shadow paging: each of the 64 user pages is touched once. Each demand fault
    // exits (every #PF exits on VMX shadow paging: exit 1); its address is in the range and the guest pte is
    // not present, so reflect-range injects it (64 injected) before the MMU's handler, which would have
    // injected it too. The guest's pte store (exit 2, emulated) and the re-executed access (exit 3: the guest
    // pte is present now, so the policy passes it on and the MMU builds the spte) are the MMU's as before.
    const run = async (options: ReflectRangeOptions | null) => {
      const memory = 16 * 1024 * 1024;
      const vm = await createVm(
        { backend: 'vmx', mmu: 'shadow', memory, policies: options === null ? [] : [{ use: 'reflect-range', options }] },
        { sources: { backends: { vmx: vmxModule }, mmus: { shadow: shadowMmuModule() }, policies: [(await import('../src/index.js')).default] } },
      );
      const out = runWorkload({ workload: 'demand-fault:pages=64', memory, machine: vm.machine, seed: 1 });
      return { c: vm.counters().total, out };
    };
    it('injects the 64 demand faults itself, with the same exits and the same guest outcome', async () => {
      const base = await run(null);
      const mine = await run({ from: 0, to: 2 ** 47 }); // all of user space (4-level paging: canonical low half)
      expect(base.c['pf_guest']).toBe(64);
      expect(mine.c['reflect_range.injected']).toBe(64);
      // Every other counter is the run's without the policy: the same 64 injections (pf_guest counts each
      // #PF injected, whoever decided it), the same exits, fixes and emulated writes.
      expect(Object.keys({ ...base.c, ...mine.c }).filter((k) => base.c[k] !== mine.c[k])).toEqual(['reflect_range.injected']);
      expect(mine.c['pf_guest']).toBe(64);
      expect(mine.out.result.memoryDigest).toBe(base.out.result.memoryDigest);
      expect(JSON.stringify(mine.out.events)).toBe(JSON.stringify(base.out.events));
      // An empty range changes nothing.
      const none = await run({ from: 0, to: 0 });
      expect(none.c['reflect_range.injected'] ?? 0).toBe(0);
      expect(none.c['pf_guest']).toBe(64);
    });
  });

  describe('loading', () => {
    it('is found by package name through the composition API, with its options validated', async () => {
      // node_modules/vmexit-policy-template in a scratch directory, as `npm install` makes it for a user.
      const dir = mkdtempSync(join(tmpdir(), 'vmexit-template-'));
      mkdirSync(join(dir, 'node_modules'));
      symlinkSync(packageDir, join(dir, 'node_modules', 'vmexit-policy-template'), 'dir');
      const ok = await composeVariant({ backend: 'vmx', policies: [{ use: 'vmexit-policy-template', options: { to: 4096 } }], resolveFrom: dir }, SOURCES);
      const mine = ok.problems.filter((p) => p.path.startsWith('policies'));
      expect(mine).toEqual([]);
      expect(ok.policies.map((p) => [p.policy.name, p.options])).toEqual([['reflect-range', { from: 0, to: 4096 }]]);
      const bad = await composeVariant({ backend: 'vmx', policies: [{ use: 'vmexit-policy-template', options: { to: 'x' } }], resolveFrom: dir }, SOURCES);
      expect(bad.problems.map((p) => p.path)).toContain('policies.0.options.to');
    });
  });
});
