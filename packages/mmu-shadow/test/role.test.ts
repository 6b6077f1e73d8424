import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ACC_ALL, childRole, roleAccess, roleDirect, roleLevel, roleQuadrant, rootRole, SpteList } from '@vmexit/core';
import { defaultMaxMmuPages } from '../src/index.js';

describe('role', () => {
  describe('childRole', () => {
    it('steps one level down with its own access, and a quadrant only for 4-byte gptes', () => {
      const root32 = rootRole({ level: 2, fourByteGpte: true, quadrant: 3, eferNx: false, cr0Wp: true, smep: false, smap: false });
      const c = childRole(root32, 89, false, 5);
      expect(roleLevel(c)).toBe(1);
      expect(roleQuadrant(c)).toBe(1);
      expect(roleAccess(c)).toBe(5);
      const root64 = rootRole({ level: 4, fourByteGpte: false, quadrant: 0, eferNx: true, cr0Wp: true, smep: true, smap: false });
      expect(roleQuadrant(childRole(root64, 89, true, ACC_ALL))).toBe(0);
      expect(roleDirect(childRole(root64, 89, true, ACC_ALL))).toBe(true);
    });

    it('keeps every base bit of the parent (property)', () => {
      fc.assert(
        fc.property(
          fc.integer({ min: 2, max: 5 }),
          fc.boolean(),
          fc.integer({ min: 0, max: 511 }),
          fc.integer({ min: 0, max: 7 }),
          fc.boolean(),
          (level, wp, idx, acc, smep) => {
            const p = rootRole({ level, fourByteGpte: false, quadrant: 0, eferNx: true, cr0Wp: wp, smep, smap: false });
            const c = childRole(p, idx, false, acc);
            expect(c & ~0x7ff).toBe(p & ~0x7ff);
            expect(roleLevel(c)).toBe(level - 1);
          },
        ),
      );
    });
  });

  it('sets smep_andnot_wp only when CR0.WP is clear', () => {
    expect(rootRole({ level: 4, fourByteGpte: false, quadrant: 0, eferNx: false, cr0Wp: true, smep: true, smap: true }) & (3 << 14)).toBe(0);
    expect(rootRole({ level: 4, fourByteGpte: false, quadrant: 0, eferNx: false, cr0Wp: false, smep: true, smap: true }) & (3 << 14)).toBe(3 << 14);
  });

  it('budgets 20 per mille of guest pages, at least 64', () => {
    expect(defaultMaxMmuPages(4096)).toBe(81);
    expect(defaultMaxMmuPages(1000)).toBe(64);
  });
});

describe('SpteList', () => {
  it('is a multiset (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 5 })), { maxLength: 40 }), (ops) => {
        const l = new SpteList();
        const ref: number[] = [];
        for (const [add, v] of ops) {
          if (add) {
            l.add(v);
            ref.push(v);
          } else {
            const i = ref.indexOf(v);
            expect(l.remove(v)).toBe(i >= 0);
            if (i >= 0) ref.splice(i, 1);
          }
          expect(l.toArray().sort()).toEqual(ref.slice().sort());
        }
      }),
    );
  });
});
