import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { importContainerModule, isPathSpecifier, ModuleLoadError, resolveSpecifier } from '../../src/vm/modules.js';

/** A scratch directory holding `files` (path -> text). */
function scratch(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmexit-modules-'));
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(join(dir, f, '..'), { recursive: true });
    writeFileSync(join(dir, f), text);
  }
  return dir;
}

/** The error `p` rejects with (the test fails if it resolves). */
async function rejection(p: Promise<unknown>): Promise<ModuleLoadError> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(ModuleLoadError);
  return e as ModuleLoadError;
}

describe('isPathSpecifier', () => {
  it("takes '.' and '..' for directories (vmexit run --policy . in the policy's own package), as it takes ./x", () => {
    expect(isPathSpecifier('.')).toBe(true);
    expect(isPathSpecifier('..')).toBe(true);
    expect(isPathSpecifier('./dist/index.js')).toBe(true);
    expect(isPathSpecifier('my-policy')).toBe(false);
    expect(isPathSpecifier('@acme/my-policy')).toBe(false);
  });
});

describe('resolveSpecifier', () => {
  it("resolves '.' to the package entry of the directory it is resolved from", () => {
    const dir = scratch({ 'package.json': JSON.stringify({ name: 'p', exports: { '.': { default: './dist/index.js' } } }), 'dist/index.js': '' });
    // The package's own name resolves too (Node's self-reference); '.' must not be looked up in node_modules.
    expect(resolveSpecifier('.', dir)).toBe(resolveSpecifier('./dist/index.js', dir));
    expect(resolveSpecifier('p', dir)).toBe(resolveSpecifier('./dist/index.js', dir));
  });
});

describe('importContainerModule', () => {
  it('names the file once when the specifier is the file, and says what a module must export', async () => {
    const dir = scratch({ 'none.mjs': 'export const x = 1;\n' });
    const file = resolveSpecifier('./none.mjs', dir);
    const e = await rejection(importContainerModule(file, dir));
    expect(e.message).toBe(`'${file}' exports no inversify ContainerModule (expected a default export, or 'containerModule')`);
    // A relative path, or a package name, is followed by the file it resolved to.
    const rel = await rejection(importContainerModule('./none.mjs', dir));
    expect(rel.message).toBe(`'./none.mjs' (${file}) exports no inversify ContainerModule (expected a default export, or 'containerModule')`);
  });

  it('says so when the default export is a policy itself rather than a module that binds it', async () => {
    const dir = scratch({ 'policy.mjs': "export default { name: 'mine', description: 'd', needs: [], exits: () => (s) => s };\n" });
    const e = await rejection(importContainerModule('./policy.mjs', dir));
    expect(e.message).toContain("exports no inversify ContainerModule (expected a default export, or 'containerModule')");
    expect(e.message).toContain(
      "its default export is a policy ('mine'), not a module: export default new ContainerModule(({ bind }) => { bind(Symbol.for('vmexit.FaultPolicy')).toConstantValue(policy); })",
    );
  });

  it('names the file of a module that fails to import, with the error it threw', async () => {
    const dir = scratch({ 'throws.mjs': "throw new Error('boom');\n" });
    const file = resolveSpecifier('./throws.mjs', dir);
    const e = await rejection(importContainerModule('./throws.mjs', dir));
    expect(e.message).toBe(`cannot load './throws.mjs' (${file}): boom`);
    expect((await rejection(importContainerModule(file, dir))).message).toBe(`cannot load '${file}': boom`);
    const missing = await rejection(importContainerModule('./missing.mjs', dir));
    expect(missing.message).toBe(`no such file or directory: ${join(dir, 'missing.mjs')}`);
  });
});
