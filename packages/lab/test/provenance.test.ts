import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseVariant, type Variant } from '@vmexit/core';
import { afterAll, describe, expect, it } from 'vitest';
import { provenance } from '../src/index.js';

// A project (with a package.json of its own) that holds a policy in a plain directory, a loose policy file, and
// a policy package of its own (package.json with exports) in a sub-directory.
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-provenance-'));
const POLICY = 'export default { load() {}, id: 1 };\n'; // never imported here: provenance reads files, it loads nothing
const write = (rel: string, text: string): void => {
  fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
  fs.writeFileSync(path.join(root, rel), text);
};
write('package.json', JSON.stringify({ name: 'some-project', version: '9.9.9' }));
write('policies/flood/index.mjs', POLICY);
write('loose.mjs', `${POLICY}// loose\n`);
write(
  'my-policy/package.json',
  JSON.stringify({ name: 'my-policy', version: '1.2.3', type: 'module', exports: { '.': './dist/index.mjs', './extra': './dist/extra.mjs' } }),
);
write('my-policy/dist/index.mjs', POLICY);
write('my-policy/dist/extra.mjs', POLICY);
write('my-policy/dist/internal.mjs', POLICY);
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const sha = (rel: string): string =>
  `unpackaged sha256:${createHash('sha256')
    .update(fs.readFileSync(path.join(root, rel)))
    .digest('hex')
    .slice(0, 16)}`;

function variantWith(...uses: string[]): Variant {
  const r = parseVariant({ backend: 'vmx', mmu: 'shadow', policies: uses.map((use) => ({ use })), resolveFrom: root });
  if (r.variant === null) throw new Error(JSON.stringify(r.problems));
  return r.variant;
}

describe('provenance', () => {
  describe('.packages of a policy given as a path', () => {
    it('a plugin in a plain directory is unpackaged, with the hash of its module, not the package.json of the project around it', () => {
      const p = provenance(variantWith('./policies/flood', './loose.mjs')).packages;
      expect(p['./policies/flood']).toBe(sha('policies/flood/index.mjs'));
      expect(p['./loose.mjs']).toBe(sha('loose.mjs'));
      expect(Object.values(p).some((v) => v.startsWith('some-project'))).toBe(false);
    });

    it('a packaged plugin, given as its directory, its entry file or an exports target, is name@version', () => {
      const p = provenance(variantWith('./my-policy', './my-policy/dist/index.mjs', `${root}/my-policy/dist/extra.mjs`)).packages;
      expect(p['./my-policy']).toBe('my-policy@1.2.3');
      expect(p['./my-policy/dist/index.mjs']).toBe('my-policy@1.2.3');
      expect(p[`${root}/my-policy/dist/extra.mjs`]).toBe('my-policy@1.2.3');
    });

    it('a file inside a package that the package does not export is not that package: unpackaged', () => {
      expect(provenance(variantWith('./my-policy/dist/internal.mjs')).packages['./my-policy/dist/internal.mjs']).toBe(sha('my-policy/dist/internal.mjs'));
    });

    it('a path that names nothing is recorded as not found', () => {
      expect(provenance(variantWith('./no-such-policy')).packages['./no-such-policy']).toBe('not found');
    });
  });
});
