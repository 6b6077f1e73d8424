import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { formatFailure, loadVectorFile, nativeVectorMachineFactory, runConformance, vectorDenseMemory, vectorMemory } from '../../src/conformance/index.js';

/** The package's sample vectors (conformance/*.jsonl; their format: conformance/FORMAT.md). */
const DIR = fileURLToPath(new URL('../../conformance/', import.meta.url));
const FILES = readdirSync(DIR)
  .filter((f) => f.endsWith('.jsonl'))
  .sort();

// Vectors per file (one per line): 30+60+40 access, 15+40+15 ext, 10+20+10 twice = 240 samples, and the 55
// extended cases (extended.jsonl, written from conformance/extended.ts; extended.test.ts keeps them equal).
const COUNTS: Record<string, number> = {
  'extended.jsonl': 55,
  'sample-access-legacy32.jsonl': 30,
  'sample-access-long4.jsonl': 60,
  'sample-access-pae.jsonl': 40,
  'sample-ext-legacy32.jsonl': 15,
  'sample-ext-long4.jsonl': 40,
  'sample-ext-pae.jsonl': 15,
  'sample-twice-legacy32.jsonl': 10,
  'sample-twice-long4.jsonl': 20,
  'sample-twice-pae.jsonl': 10,
};

describe('sample conformance vectors (SDM Vol. 3A ch. 4, kvm-unit-tests access.c matrix)', () => {
  it('are all present', () => {
    expect(FILES).toEqual(Object.keys(COUNTS).sort());
  });

  // The walker reads entries through the PhysicalMemory interface; each file runs over both implementations.
  for (const [name, memory] of [
    ['sparse', vectorMemory],
    ['dense', vectorDenseMemory],
  ] as const) {
    for (const file of FILES) {
      it(`${file}: every vector passes natively over ${name} memory`, () => {
        const vectors = loadVectorFile(DIR + file);
        expect(vectors).toHaveLength(COUNTS[file]!);
        const report = runConformance(vectors, nativeVectorMachineFactory(memory));
        expect(report.results.filter((r) => !r.passed).map(formatFailure)).toEqual([]);
        expect([report.passed, report.failed]).toEqual([COUNTS[file], 0]);
      });
    }
  }
});
