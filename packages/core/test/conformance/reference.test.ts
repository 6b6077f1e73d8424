import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createReferenceVectorMachine, formatFailure, loadVectorFile, runConformance } from '../../src/conformance/index.js';

const DIR = fileURLToPath(new URL('../../conformance/', import.meta.url));
const FILES = readdirSync(DIR)
  .filter((f) => f.startsWith('sample-') && f.endsWith('.jsonl'))
  .sort();

describe('createReferenceVectorMachine', () => {
  // The reference is the oracle of generated vectors; the sample files were not made by it, so they check it:
  // every one of the 240 sample vectors (30+60+40 access, 15+40+15 ext, 10+20+10 twice) passes on it.
  it('passes all 240 sample vectors', () => {
    const vectors = FILES.flatMap((f) => loadVectorFile(DIR + f));
    const report = runConformance(vectors, createReferenceVectorMachine);
    expect(report.results.filter((r) => !r.passed).map(formatFailure)).toEqual([]);
    expect([report.passed, report.failed]).toEqual([240, 0]);
  });
});
