#!/usr/bin/env node
// The shape of the source tree, checked on every `npm test`:
// - no import cycle among the source files of a package (`src/**/*.ts`; type-only imports and re-exports
//   count, as they tie the files together for a reader as much as a value import does);
// - no source file over MAX_LINES lines;
// - in a package whose tests share their worker's modules (`isolate: false` in its vitest.config.ts), no test file
//   that mocks a module (vi.mock, vi.doMock) or counts garbage collections (GcWatch) unless the config lists it in
//   `isolated`, and no listed file that does not exist (a mock in a shared worker would meet modules that earlier
//   files already imported; a count of collections would depend on the heap that earlier files left).
// Imports are read with TypeScript's own pre-processor (`ts.preProcessFile`: import, import type, export
// ... from, import()), and relative specifiers are resolved as the compiler resolves them under NodeNext
// (`./x.js` -> `./x.ts`, a folder -> its `index.ts`). Every offender is printed; the exit code is 1 if any.
// Usage: node scripts/check-shape.mjs
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';

export const MAX_LINES = 800;

const root = new URL('..', import.meta.url).pathname;

/** Every `.ts` file under `dir` (declaration files excluded), sorted for a stable report. */
function sourceFiles(dir) {
  const out = [];
  const visit = (d) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) visit(p);
      else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(p);
    }
  };
  if (existsSync(dir)) visit(dir);
  return out;
}

/** The source file a relative specifier names, or null if it names none of `files`. */
function resolveImport(from, spec, files) {
  const base = resolve(dirname(from), spec);
  const candidates = [base, base.replace(/\.(m|c)?js$/, '.$1ts'), `${base}.ts`, join(base, 'index.ts')];
  return candidates.find((c) => files.has(c)) ?? null;
}

/** The import graph of one package's sources: file -> the files it imports. */
export function importGraph(files) {
  const set = new Set(files);
  const graph = new Map();
  for (const f of files) {
    const info = ts.preProcessFile(readFileSync(f, 'utf8'), true, true);
    const deps = new Set();
    for (const { fileName } of info.importedFiles) {
      if (!fileName.startsWith('.')) continue;
      const to = resolveImport(f, fileName, set);
      if (to !== null) deps.add(to);
    }
    graph.set(f, [...deps].sort());
  }
  return graph;
}

/**
 * The cycles of `graph`: one per strongly connected component with more than one file (or a file that
 * imports itself), given as a closed path through that component (Tarjan's algorithm, then a shortest
 * path back to the component's first file).
 */
export function findCycles(graph) {
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const stack = [];
  const onStack = new Set();
  const components = [];
  const strong = (v) => {
    idx.set(v, index);
    low.set(v, index);
    index++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        strong(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const c = [];
      let w;
      do {
        w = stack.pop();
        onStack.delete(w);
        c.push(w);
      } while (w !== v);
      if (c.length > 1 || (graph.get(v) ?? []).includes(v)) components.push(c.sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) strong(v);
  return components.map((c) => {
    const inC = new Set(c);
    const start = c[0];
    // Breadth-first from start's successors back to start, inside the component.
    const prev = new Map();
    const queue = [];
    for (const w of graph.get(start) ?? []) {
      if (inC.has(w) && !prev.has(w)) {
        prev.set(w, start);
        queue.push(w);
      }
    }
    while (queue.length > 0 && !prev.has(start)) {
      const v = queue.shift();
      for (const w of graph.get(v) ?? []) {
        if (inC.has(w) && !prev.has(w)) {
          prev.set(w, v);
          queue.push(w);
        }
      }
    }
    const path = [start];
    for (let v = prev.get(start); v !== start; v = prev.get(v)) path.unshift(v);
    path.unshift(start);
    return { files: c, path };
  });
}

function packages() {
  return ['packages', 'examples']
    .filter((d) => existsSync(join(root, d)))
    .flatMap((d) => readdirSync(join(root, d)).map((p) => join(root, d, p)))
    .filter((d) => existsSync(join(d, 'package.json')) && existsSync(join(d, 'src')))
    .sort();
}

/**
 * The test files that mock a module, or count garbage collections, in a package whose vitest config shares modules
 * between test files (`isolate: false`) without listing them in `isolated` (see vitest.shared.ts), and listed files
 * that are gone.
 */
export function isolationProblems(rel) {
  const problems = [];
  for (const pkg of packages()) {
    const config = join(pkg, 'vitest.config.ts');
    if (!existsSync(config)) continue;
    const text = readFileSync(config, 'utf8')
      .replace(/\/\*[\s\S]*?\*\//g, '')
      .replace(/\/\/.*$/gm, '');
    if (!/\bisolate:\s*false\b/.test(text)) continue;
    const listed = new Set([...text.matchAll(/'(test\/[^']+)'/g)].map((m) => m[1]));
    for (const f of listed) if (!existsSync(join(pkg, f))) problems.push(`${rel(config)} lists ${f} in \`isolated\`, which does not exist`);
    for (const f of sourceFiles(join(pkg, 'test'))) {
      if (!f.endsWith('.test.ts')) continue;
      const name = relative(pkg, f);
      if (listed.has(name)) continue;
      const code = readFileSync(f, 'utf8');
      if (/\bvi\.(mock|doMock)\(/.test(code)) {
        problems.push(`${rel(f)} mocks a module (vi.mock) but shares its worker's modules: list it in \`isolated\` in ${rel(config)}`);
      }
      if (/\bnew GcWatch\(/.test(code)) {
        problems.push(`${rel(f)} counts garbage collections (GcWatch) but shares its worker's heap: list it in \`isolated\` in ${rel(config)}`);
      }
    }
  }
  return problems;
}

function main() {
  const problems = [];
  const rel = (f) => relative(root, f);
  for (const pkg of packages()) {
    const files = sourceFiles(join(pkg, 'src'));
    for (const { files: c, path } of findCycles(importGraph(files))) {
      problems.push(`import cycle among ${c.length} files of ${rel(pkg)}: ${path.map((f) => relative(join(pkg, 'src'), f)).join(' -> ')}`);
    }
    for (const f of files) {
      const text = readFileSync(f, 'utf8');
      const lines = text.length === 0 ? 0 : text.split('\n').length - (text.endsWith('\n') ? 1 : 0);
      if (lines > MAX_LINES) problems.push(`${rel(f)}: ${lines} lines (at most ${MAX_LINES})`);
    }
  }
  problems.push(...isolationProblems(rel));
  if (problems.length === 0) {
    console.log(`shape: no import cycle, no source file over ${MAX_LINES} lines, no module mock or collection count in a shared test worker`);
    return 0;
  }
  console.error(`shape: ${problems.length} problem(s):`);
  for (const p of problems) console.error(`  ${p}`);
  return 1;
}

if (process.argv[1] && resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname)) process.exit(main());
