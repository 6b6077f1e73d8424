// The one source of a new policy package: the files under template/, with its name and the @vmexit range
// filled in. `create-vmexit-policy` writes them for a user; examples/policy-template in the vmexit repository
// is the same output (scripts/gen-policy-template.mjs writes it, and a test checks that they are equal).
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { dirname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const templateDir = join(here, '..', 'template');
const ownPackage = JSON.parse(readFileSync(join(here, '..', 'package.json'), 'utf8'));

// npm leaves .gitignore files out of a package's tarball, so the template holds it as `gitignore`.
const RENAMED = new Map([['gitignore', '.gitignore']]);

export function vmexitRange() {
  // All @vmexit packages and this initializer share one version (a changesets "fixed" group). In 0.x a minor
  // release may break plugins, so the range admits patches of this minor only (^0.1.0 is >=0.1.0 <0.2.0).
  return `^${ownPackage.version}`;
}

// npm's rules for a new package's name (validate-npm-package-name, validForNewPackages): these two names are
// errors; a core module's name, capitals, more than 214 characters and ~'!()* after the scope are warnings,
// which a new package may not have either.
const EXCLUDED = new Set(['node_modules', 'favicon.ico']);

export function invalidPackageName(name) {
  if (typeof name !== 'string' || name.length === 0) return 'the name is empty';
  if (name.length > 214) return 'the name is longer than 214 characters';
  if (name !== name.toLowerCase()) return 'the name has capital letters';
  if (EXCLUDED.has(name)) return `'${name}' is not a valid package name`;
  if (builtinModules.includes(name)) return `'${name}' is the name of a Node.js core module`;
  if (!/^(@[a-z0-9][a-z0-9._~-]*\/)?[a-z0-9][a-z0-9._-]*$/.test(name))
    return 'a package name is lowercase letters, digits, and - . _ (optionally @scope/ first), and starts with a letter or digit';
  return null;
}

function walk(dir) {
  return readdirSync(dir)
    .sort()
    .flatMap((f) => (statSync(join(dir, f)).isDirectory() ? walk(join(dir, f)) : [join(dir, f)]));
}

export function renderPolicyPackage(options) {
  const bad = invalidPackageName(options.name);
  if (bad !== null) throw new Error(`invalid package name '${options.name}': ${bad}`);
  const files = new Map();
  for (const file of walk(templateDir)) {
    let rel = relative(templateDir, file).split(sep).join('/');
    const base = rel.split('/').pop();
    if (RENAMED.has(base)) rel = rel.slice(0, rel.length - base.length) + RENAMED.get(base);
    let text = readFileSync(file, 'utf8').replaceAll('__NAME__', options.name).replaceAll('__VMEXIT_RANGE__', vmexitRange());
    if (rel === 'package.json' && options.private === true) {
      const pkg = JSON.parse(text);
      text = `${JSON.stringify({ name: pkg.name, version: pkg.version, private: true, ...pkg }, null, 2)}\n`;
    }
    files.set(rel, text);
  }
  return files;
}

export function scaffold(dir, options) {
  const files = renderPolicyPackage(options);
  if (existsSync(dir) && !statSync(dir).isDirectory()) throw new Error(`${dir} is not a directory`);
  if (existsSync(dir) && readdirSync(dir).length > 0) throw new Error(`${dir} already exists and is not empty`);
  const written = [];
  for (const [rel, text] of files) {
    const out = join(dir, ...rel.split('/'));
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, text);
    written.push(rel);
  }
  return written;
}
