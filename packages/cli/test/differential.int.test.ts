import svm from '@vmexit/backend-svm';
import vmx from '@vmexit/backend-vmx';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ACCESS_CASE_FLAGS, accessCaseVector, loadVectorFile, runVector, type AccessCaseFlag } from '@vmexit/core';
import shadow from '@vmexit/mmu-shadow';
import tdp from '@vmexit/mmu-tdp';
import policies from '@vmexit/policies';
import { describe, expect, it } from 'vitest';
import { parseVariantSpec } from '../src/commands/compare.js';
import { createVmVectorMachine } from '../src/conformance-vm.js';
import { runDifferentialSweep, runVectorsDifferential, SweepSpace, SWEEP_VARIANTS } from '../src/differential.js';

const sources = { backends: { vmx, svm }, mmus: { shadow, tdp }, policies: [policies] };
/** @vmexit/core's vector files (conformance/*.jsonl). */
const FIXTURES = fileURLToPath(new URL('../../core/conformance/', import.meta.url));
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

  // The state access.c's space keeps fixed (core's extended cases, written to conformance/extended.jsonl:
  // upper-level rights and reserved bits, 1 GiB pages, PDPTE registers apart from memory, ...): 55 vectors x 9
  // variants, each the SDM outcome of core's reference machine.
  it('finds no difference on the extended cases under any sweep variant (495 cases)', async () => {
    const r = await runVectorsDifferential(loadVectorFile(join(FIXTURES, 'extended.jsonl')), { sources });
    expect(r.failures.map((f) => `#${f.index} [${f.variant}] ${f.detail}`)).toEqual([]);
    expect([r.vectors, r.cases]).toEqual([55, 55 * SWEEP_VARIANTS.length]);
  }, 60_000);

  // The sample files run under vmx/svm shadow (conformance-vm.int.test.ts) and TDP (commands/conformance.test.ts);
  // here under the fault-path policy variants too, which otherwise see only generated vectors.
  it('passes the 240 sample vectors under the fault-path policy variants (1,200 cases)', async () => {
    const vectors = readdirSync(FIXTURES)
      .filter((f) => f.startsWith('sample-') && f.endsWith('.jsonl'))
      .sort()
      .flatMap((f) => loadVectorFile(join(FIXTURES, f)));
    const variants = SWEEP_VARIANTS.filter((v) => v.variant.policies !== undefined);
    expect(variants).toHaveLength(5);
    const r = await runVectorsDifferential(vectors, { sources, variants });
    expect(r.failures.map((f) => `#${f.index} [${f.variant}] ${f.detail}`)).toEqual([]);
    expect(r.cases).toBe(240 * 5);
  }, 120_000);
});
