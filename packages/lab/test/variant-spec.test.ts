import { mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { absoluteSpec, parseVariantSpec } from '../src/variant-spec.js';

const root = resolve(import.meta.dirname, '..', '..', '..');

/** A policy module in a file of its own, as a plugin author has it before publishing (`./dist/index.js`). */
const POLICY = `import { ContainerModule } from 'inversify';
import { TYPES } from '@vmexit/core';
export default new ContainerModule(({ bind }) => {
  bind(TYPES.FaultPolicy).toConstantValue({ name: 'mine', description: 'passes every exit on', needs: [], exits: () => (s) => s });
});
`;

/** A scratch directory with the policy as ./dist/index.js and ./mine.mjs, a variant file, and this repository's node_modules. */
function project(prefix = 'vmexit-variant-spec-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'), 'dir');
  writeFileSync(join(dir, 'mine.mjs'), POLICY);
  writeFileSync(join(dir, 'index.js'), POLICY);
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'mine', type: 'module' }));
  writeFileSync(join(dir, 'v.json'), JSON.stringify({ backend: 'svm', mmu: 'shadow' }));
  return dir;
}

describe('parseVariantSpec', () => {
  it('takes a word that is a policy path ending in .js or .mjs for a policy; a spec of one such word is a config file', async () => {
    const dir = project();
    // "vmx shadow ./index.js" is three words: a backend, an MMU and a policy (the docs' `--variant "vmx shadow
    // ./dist/index.js"`), not a config file named "vmx shadow ./index.js".
    const v = await parseVariantSpec('vmx shadow ./index.js', {}, { cwd: dir });
    expect([v.backend, v.mmu, v.policies.map((p) => p.use)]).toEqual(['vmx', 'shadow', [join(dir, 'index.js')]]);
    const m = await parseVariantSpec('vmx shadow ./mine.mjs,.', {}, { cwd: dir });
    expect(m.policies.map((p) => p.use)).toEqual([join(dir, 'mine.mjs'), dir]);
    const c = await parseVariantSpec('v.json', {}, { cwd: dir });
    expect([c.backend, c.policies]).toEqual(['svm', []]);
    await expect(parseVariantSpec('nothing.json', {}, { cwd: dir })).rejects.toThrow('--variant nothing.json: no such config file');
  });

  it('reads a config file whose path has a space, and a policy path made absolute in a directory whose path has one', async () => {
    // A home directory such as "/home/a user" (or "C:\\Users\\A User"): a config file there is one file, not the
    // words "/home/a" and "user/v.json"; and absoluteSpec, which compare and sweep apply before a worker reads the
    // spec again, must not split a policy path there into two words.
    const dir = project('vmexit variant spec ');
    const c = await parseVariantSpec(join(dir, 'v.json'), {}, { cwd: tmpdir() });
    expect([c.backend, c.mmu]).toEqual(['svm', 'shadow']);
    expect(absoluteSpec('v.json', dir)).toBe(join(dir, 'v.json'));
    const again = await parseVariantSpec(absoluteSpec('v.json', dir), {}, { cwd: tmpdir() });
    expect(again.backend).toBe('svm');
    const abs = absoluteSpec('vmx shadow ./index.js#mine,pte-update', dir);
    expect(abs.split(' ')).toHaveLength(3);
    const v = await parseVariantSpec(abs, {}, { cwd: tmpdir() });
    expect([v.backend, v.mmu, v.policies.length, v.policies[1]!.use]).toEqual(['vmx', 'shadow', 2, 'pte-update']);
  });
});

describe('absoluteSpec', () => {
  it('makes a config file and every policy path of a spec absolute, and leaves names alone', () => {
    expect(absoluteSpec('v.json', '/p')).toBe('/p/v.json');
    expect(absoluteSpec('vmx shadow ./dist/index.js,pte-update my-policy', '/p')).toBe('vmx shadow /p/dist/index.js,pte-update my-policy');
    expect(absoluteSpec('vmx shadow .', '/p')).toBe('vmx shadow /p');
    expect(absoluteSpec('vmx tdp host-pages=2m', '/p')).toBe('vmx tdp host-pages=2m');
  });
});
