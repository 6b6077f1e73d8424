import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  createReferenceVectorMachine,
  EXTENDED_CASES,
  extendedCaseVector,
  extendedCaseVectors,
  observeVector,
  runVectorNative,
  validateVector,
  vectorToJson,
} from '../../src/conformance/index.js';

/*
 * The extended cases (conformance/extended.ts): state access.c's flag space keeps fixed (upper-level rights and
 * reserved bits, 1 GiB pages, MAXPHYADDR's edge, keys other than 1, PDPTE registers apart from memory, CR3's
 * low bits, 32-bit paging with CR4.PSE=0, EFER.NXE or a user fetch under SMEP). Each case carries the outcome
 * derived by hand from the SDM section it names.
 */
describe('EXTENDED_CASES', () => {
  it('has 55 cases with distinct ids', () => {
    expect(EXTENDED_CASES).toHaveLength(55);
    expect(new Set(EXTENDED_CASES.map((c) => c.id)).size).toBe(55);
  });

  it.each(EXTENDED_CASES.map((c) => [c.id, c] as const))('%s: the reference machine gives the hand-derived outcome', (_id, c) => {
    const v = extendedCaseVector(c);
    const main = observeVector(v, createReferenceVectorMachine).main;
    expect(main.result === 'ok' ? { pa: main.pa } : { ec: main.errorCode }).toEqual(c.want);
  });

  it.each(extendedCaseVectors().map((v) => [v.id, v] as const))('%s: valid input, and passes natively', (_id, v) => {
    const parsed = validateVector(JSON.parse(JSON.stringify(vectorToJson(v))), 'extended.jsonl', v.line);
    expect(parsed).toEqual({ ...v, file: 'extended.jsonl' });
    expect(runVectorNative(parsed).mismatches).toEqual([]);
  });

  // The same vectors as a file next to the samples, for `vmexit conformance` natively and under variants.
  it('are the vectors of conformance/extended.jsonl, line by line', () => {
    const text = readFileSync(new URL('../../conformance/extended.jsonl', import.meta.url), 'utf8');
    expect(text).toBe(
      `${extendedCaseVectors()
        .map((v) => JSON.stringify(vectorToJson(v)))
        .join('\n')}\n`,
    );
  });
});
