import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatFailure, loadVectorFile, runVector, type ConformanceVector } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { parseVariantSpec } from '../src/commands/compare.js';
import { createVmVectorMachine } from '../src/conformance-vm.js';
import { WrongErrorCodeMmu, sourcesWith } from './helpers/broken-mmu.js';

/** Every bundled conformance fixture (@vmexit/core's conformance/*.jsonl). */
const DIR = fileURLToPath(new URL('../../core/conformance/', import.meta.url));
const FILES = readdirSync(DIR)
  .filter((f) => f.endsWith('.jsonl'))
  .sort();
const VECTORS: ConformanceVector[] = FILES.flatMap((f) => loadVectorFile(join(DIR, f)));

describe('createVmVectorMachine', () => {
  // 9 sample files (240 vectors) and extended.jsonl (55: core's extended cases).
  it('finds every bundled fixture: 10 files, 295 vectors', () => {
    expect(FILES.length).toBe(10);
    expect(VECTORS.length).toBe(295);
  });

  // Conformance under a variant: each vector runs as a guest access on vCPU 0 of a VM of the
  // variant (the shadow MMU builds its sptes, the backend decides which #PFs exit) and must give exactly the
  // outcome the vector expects natively: the same #PF error code, #GP, or physical page reached.
  describe.each(['vmx', 'svm'] as const)('%s shadow', (backend) => {
    it('passes every bundled vector', async () => {
      const variant = await parseVariantSpec(`${backend} shadow`, {});
      const failed: string[] = [];
      for (const vector of VECTORS) {
        const machine = await createVmVectorMachine(vector, variant);
        const r = runVector(vector, () => machine);
        if (!r.passed) failed.push(formatFailure(r));
      }
      expect(failed).toEqual([]);
    });
  });

  it('fails the vectors whose outcome an MMU gets wrong (reads injected with a write error code)', async () => {
    const variant = await parseVariantSpec('svm shadow', {});
    const sources = sourcesWith(() => new WrongErrorCodeMmu());
    // A read that must fault: the expected error code has W = 0, the broken MMU injects it with W = 1.
    const reads = VECTORS.filter((v) => v.expect.fault && (v.expect.errorCode! & 2) === 0 && v.preAccess === null);
    expect(reads.length).toBeGreaterThan(10);
    let failed = 0;
    for (const vector of reads) {
      const r = runVector(vector, await vmMachine(vector, variant, sources));
      if (!r.passed) failed++;
    }
    expect(failed).toBe(reads.length);
  });
});

async function vmMachine(
  vector: ConformanceVector,
  variant: Parameters<typeof createVmVectorMachine>[1],
  sources: Parameters<typeof createVmVectorMachine>[2],
) {
  const machine = await createVmVectorMachine(vector, variant, sources);
  return () => machine;
}
