import { mkdtempSync, mkdirSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { from, lastValueFrom, toArray } from 'rxjs';
import { composeVariant, type ModuleSources, type PolicyVcpuContext, type VmExit } from '@vmexit/core';
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
  errorCode: 4,
  address,
  access: 4,
  resolution: null,
  resolvedBy: null,
});

describe('reflectRange', () => {
  describe('.exits', () => {
    it('injects the #PFs of its range and passes on the others, counting what it injected', async () => {
      const counted: string[] = [];
      const ctx = { options: { from: 0x1000, to: 0x2000 }, count: (n: string) => counted.push(n) } as unknown as PolicyVcpuContext<ReflectRangeOptions>;
      const out = await lastValueFrom(from([pf(1, 0x1800), pf(2, 0x2000)]).pipe(reflectRange.exits!(ctx), toArray()));
      expect(out.map((e) => e.resolvedBy)).toEqual(['reflect-range', null]);
      expect(out[0]!.resolution).toEqual({ kind: 'inject', vector: 14, errorCode: 4 });
      expect(counted).toEqual(['reflect_range.injected']);
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
