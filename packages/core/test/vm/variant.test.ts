import { describe, expect, it } from 'vitest';
import { parseVariant, VariantError } from '../../src/vm/variant.js';

describe('parseVariant', () => {
  it('fills the defaults', () => {
    expect(parseVariant({}).variant).toEqual({
      backend: 'vmx',
      mmu: 'shadow',
      policies: [],
      guest: { mode: 'long4', personality: 'linux' },
      vcpus: 1,
      memory: 256 * 1024 * 1024,
      costModel: 'server-2020s',
    });
  });

  it('takes memory as bytes or as a size with a unit', () => {
    expect(parseVariant({ memory: '1G' }).variant?.memory).toBe(2 ** 30);
    expect(parseVariant({ memory: '512KiB' }).variant?.memory).toBe(512 * 1024);
    expect(parseVariant({ memory: 8192 }).variant?.memory).toBe(8192);
  });

  it('reports every problem with the path of its field: unknown keys one each, wrong types, unknown names', () => {
    const r = parseVariant({
      backend: 'kvm',
      vcpus: 1.5,
      memory: 'lots',
      costModel: 'pentium',
      guest: { mode: 'long4', os: 'bsd' },
      policies: [{ use: '', opts: 1 }],
      x: 1,
      y: 2,
    });
    expect(r.variant).toBeNull();
    expect(r.problems.map((p) => p.path).sort()).toEqual([
      'backend',
      'costModel',
      'guest.os',
      'memory',
      'policies.0.opts',
      'policies.0.use',
      'vcpus',
      'x',
      'y',
    ]);
    expect(r.problems.find((p) => p.path === 'x')?.message).toBe('unknown key');
    expect(r.problems.find((p) => p.path === 'costModel')?.message).toBe(
      "unknown cost model 'pentium' (expected one of core2-2007, server-2020s, cloud-vm-measured); a custom model is a .json file (--cost-model) or a profile object",
    );
    // an own key only: every object has a toString
    expect(parseVariant({ costModel: 'toString' }).problems.map((p) => p.message)).toEqual([
      "unknown cost model 'toString' (expected one of core2-2007, server-2020s, cloud-vm-measured); a custom model is a .json file (--cost-model) or a profile object",
    ]);
  });
});

describe('VariantError', () => {
  it('has one line per problem, each with its path', () => {
    const e = new VariantError([
      { path: 'backend', message: 'bad' },
      { path: 'policies.1.use', message: 'worse' },
    ]);
    expect(e.message).toBe('backend: bad\npolicies.1.use: worse');
    expect(e.code).toBe('E_VARIANT');
  });
});
