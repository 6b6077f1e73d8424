import svm from '@vmexit/backend-svm';
import vmx from '@vmexit/backend-vmx';
import { ACCESS_CASE_FLAGS, accessCaseVector, runVector, type AccessCaseFlag } from '@vmexit/core';
import shadow from '@vmexit/mmu-shadow';
import tdp from '@vmexit/mmu-tdp';
import policies from '@vmexit/policies';
import { describe, expect, it } from 'vitest';
import { parseVariantSpec } from '../src/commands/compare.js';
import { createVmVectorMachine } from '../src/conformance-vm.js';
import { runDifferentialSweep, SweepSpace, SWEEP_VARIANTS } from '../src/differential.js';

const sources = { backends: { vmx, svm }, mmus: { shadow, tdp }, policies: [policies] };
const flags = (names: AccessCaseFlag[]) => names.reduce((a, n) => a + 2 ** ACCESS_CASE_FLAGS.indexOf(n), 0);

describe('runDifferentialSweep', () => {
  const space = new SweepSpace();

  // The whole space is the script's (scripts/differential-sweep.mjs); these pin its shape.
  it('covers every mode and MAXPHYADDR, every backend with shadow and TDP, and the fault-path policies', () => {
    expect(space.strata.map((s) => `${s.mode}/m${s.maxPhyAddr}`)).toEqual(
      [36, 46, 52].flatMap((m) => ['legacy32', 'pae', 'long4', 'long5'].map((mode) => `${mode}/m${m}`)),
    );
    expect(space.size).toBe(2_445_990);
    expect(SWEEP_VARIANTS.map((v) => v.name)).toEqual([
      'vmx shadow',
      'svm shadow',
      'vmx tdp',
      'svm tdp',
      'vmx shadow bypass-guest-pf',
      'vmx shadow pte-update',
      'svm shadow pte-update',
      'vmx shadow unsync',
      'svm shadow unsync',
    ]);
    // shards partition the space
    expect([...space.shard(1, 110)].length + [...space.shard(110, 110)].length).toBe(Math.ceil(space.size / 110) + Math.floor(space.size / 110));
  });

  // The fixed CI sample: 6 cases evenly spaced through each of the 12 strata (72 vectors) x 9 variants.
  it('finds no difference between the native walker and any sweep variant on the fixed sample (648 cases)', async () => {
    const r = await runDifferentialSweep({ space, indices: space.sample(6), sources });
    expect(r.failures.map((f) => `#${f.index} [${f.variant}] ${f.detail}`)).toEqual([]);
    expect(r.cases).toBe(72 * SWEEP_VARIANTS.length);
  }, 60_000);

  // The two classes of generated vectors that once looped (MachineError fault-loop), now the native outcome under every variant.
  it.each([
    [
      'a WP=0 supervisor write to a user page whose key has PKRU.WD (4 KiB)',
      'long4',
      46,
      ['pte.p', 'pte.rw', 'pte.user', 'pte.a', 'pte.d', 'pte.pkey', 'pde.p', 'pde.rw', 'pde.user', 'pde.a', 'pku.wd', 'write', 'cr4.pke'],
    ],
    [
      'the same on a 2 MiB page, 5-level',
      'long5',
      52,
      ['pte.pkey', 'pde.p', 'pde.rw', 'pde.user', 'pde.a', 'pde.d', 'pde.pse', 'pku.wd', 'write', 'twice', 'cr4.pke'],
    ],
    ['a PAE leaf at a gpa with bit 51 set (MAXPHYADDR 52, outside guest RAM)', 'pae', 52, ['pte.p', 'pte.a', 'pte.51', 'pde.p', 'pde.a', 'write', 'twice']],
    ['a 4-level large page at a gpa with bit 51 set, fetched', 'long4', 52, ['pde.p', 'pde.user', 'pde.a', 'pde.pse', 'pde.51', 'user', 'fetch', 'efer.nx']],
  ] as const)('%s: the native outcome under every variant', async (_what, mode, maxPhyAddr, names) => {
    const vector = accessCaseVector({ mode, maxPhyAddr, flags: flags([...names]) });
    expect(vector.expect.fault).toBe(false); // natively the access completes
    for (const { name } of SWEEP_VARIANTS) {
      const machine = await createVmVectorMachine(vector, await parseVariantSpec(name, {}), sources);
      const r = runVector(vector, () => machine);
      expect({ variant: name, mismatches: r.mismatches }).toEqual({ variant: name, mismatches: [] });
    }
  });
});
