import { describe, expect, it } from 'vitest';
import { parseNumber, parseWorkloadRef, resolveParams, WorkloadError } from '../../src/workloads/params.js';

describe('parseWorkloadRef', () => {
  it('splits names, parameters, kbuild and .vxt paths', () => {
    expect(parseWorkloadRef('scan:pages=4,passes=2')).toMatchObject({ kind: 'synthetic', name: 'scan', raw: { pages: '4', passes: '2' } });
    expect(parseWorkloadRef('kbuild')).toMatchObject({ kind: 'trace', path: null });
    expect(parseWorkloadRef('/tmp/x.vxt')).toMatchObject({ kind: 'trace', path: '/tmp/x.vxt' });
    expect(() => parseWorkloadRef('scan:pages')).toThrow(WorkloadError);
    expect(() => parseWorkloadRef('kbuild:x=1')).toThrow(/takes no parameters/);
  });
  it("takes keys named like Object.prototype's members as keys (unknown ones), not as given twice", () => {
    // `'__proto__' in {}` is true, so these were "given twice" once, and `raw.__proto__ = '1'` set no key at all.
    for (const k of ['__proto__', 'toString', 'constructor']) {
      const ref = parseWorkloadRef(`scan:${k}=1`);
      expect(ref.kind === 'synthetic' && Object.keys(ref.raw), k).toEqual([k]);
      const defs = { pages: { default: 8, min: 1, max: 100, integer: true, doc: '' } };
      expect(() => resolveParams('scan', `scan:${k}=1`, defs, ref.kind === 'synthetic' ? ref.raw : {}), k).toThrow(WorkloadError);
    }
    expect(() => parseWorkloadRef('scan:pages=1,pages=2')).toThrow(/parameter 'pages' is given twice/);
  });
});

describe('resolveParams', () => {
  const defs = { pages: { default: 8, min: 1, max: 100, integer: true, doc: '' } };
  it('fills defaults and checks ranges', () => {
    expect(resolveParams('w', 'w', defs, {})).toEqual({ pages: 8 });
    expect(resolveParams('w', 'w', defs, { pages: '2' })).toEqual({ pages: 2 });
    expect(() => resolveParams('w', 'w', defs, { pages: '1000' })).toThrow(/out of range/);
    expect(() => resolveParams('w', 'w', defs, { pages: '1.5' })).toThrow(/whole number/);
  });
  it('takes a choice by name or index, its value the index, and names the choices when refused', () => {
    const c = { harvest: { default: 0, min: 0, max: 2, integer: true, doc: '', choices: ['none', 'bitmap', 'ring'] } };
    expect(resolveParams('w', 'w', c, {})).toEqual({ harvest: 0 });
    expect(resolveParams('w', 'w', c, { harvest: 'ring' })).toEqual({ harvest: 2 });
    expect(resolveParams('w', 'w', c, { harvest: '1' })).toEqual({ harvest: 1 });
    expect(() => resolveParams('w', 'w', c, { harvest: 'pml' })).toThrow(/parameter harvest=pml is not one of none, bitmap, ring/);
    expect(() => resolveParams('w', 'w', c, { harvest: '3' })).toThrow(/is not one of/);
  });
  it('reads suffixes', () => {
    expect(parseNumber('64k')).toBe(64000);
    expect(parseNumber('4Ki')).toBe(4096);
    expect(parseNumber('abc')).toBeNaN();
  });
});
