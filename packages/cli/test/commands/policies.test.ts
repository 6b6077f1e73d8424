import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/program.js';

const FIXTURE = resolve(import.meta.dirname, '../fixtures/third-party-policy');

let out = '';
let err = '';
beforeEach(() => {
  out = '';
  err = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => ((out += String(s)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((err += String(s)), true));
  process.exitCode = undefined;
});
afterEach(() => {
  vi.restoreAllMocks();
  process.exitCode = undefined;
});

describe('vmexit policies', () => {
  it('lists a third-party policy beside the built-in ones, with what each needs and who provides it', async () => {
    expect(await main(['policies', '--policy', FIXTURE])).toBe(0);
    expect(out).toContain(`exit-census\n  from:  ${FIXTURE}\n  needs: nothing\n`);
    expect(out).toContain('bypass-guest-pf\n  from:  @vmexit/policies\n  needs: PageFaultFilter (backend vmx), NonPresentSpteEncoding (mmu shadow)\n');
  });

  it('prints JSON with --json', async () => {
    expect(await main(['policies', '--json', '--policy', FIXTURE])).toBe(0);
    const j = JSON.parse(out) as { policies: { name: string; source: string; needs: { capability: string; providedBy: string[] }[] }[] };
    expect(j.policies.find((p) => p.name === 'exit-census')).toMatchObject({ source: FIXTURE, needs: [] });
    expect(j.policies.find((p) => p.name === 'bypass-guest-pf')?.needs).toEqual([
      { capability: 'PageFaultFilter', providedBy: ['backend vmx'] },
      { capability: 'NonPresentSpteEncoding', providedBy: ['mmu shadow'] },
    ]);
  });

  it('fails with exit 2 and the capability error on a backend that cannot support the policy', async () => {
    expect(await main(['policies', '--backend', 'svm', '--policy', `bypass-guest-pf,${FIXTURE}`])).toBe(2);
    expect(err).toBe(
      "vmexit: invalid variant:\n  policies.0.use: policy 'bypass-guest-pf' needs PageFaultFilter (error-code filtering of #PF exits (VMX PFEC_MASK/PFEC_MATCH)), which backend 'svm' does not provide\n",
    );
    expect(out).toBe('');
  });

  it('checks a --config file: exit 2 with the path of every bad field', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmexit-policies-'));
    const file = join(dir, 'vmexit.config.json');
    writeFileSync(file, JSON.stringify({ backend: 'vmx', mmu: 'shadow', vcpus: 0, extra: true }));
    expect(await main(['policies', '--config', file])).toBe(2);
    expect(err).toContain('vcpus: ');
    expect(err).toContain('extra: unknown key');
    writeFileSync(file, JSON.stringify({ backend: 'vmx', mmu: 'shadow', policies: [{ use: './fixture' }] }));
    expect(await main(['policies', '--config', file])).toBe(2);
    expect(err).toMatch(/policies\.0\.use: cannot load policy from '\.\/fixture'/);
  });

  it('accepts a valid --config naming the third-party policy', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmexit-policies-'));
    const file = join(dir, 'vmexit.config.json');
    writeFileSync(file, JSON.stringify({ backend: 'vmx', mmu: 'shadow', policies: [{ use: FIXTURE, options: { prefix: 'mine' } }] }));
    expect(await main(['policies', '--config', file])).toBe(0);
    expect(out).toContain('exit-census');
  });
});
