import { describe, expect, it } from 'vitest';
import { GuestAbort, PFERR_PRESENT, PFERR_WRITE, PF_VECTOR, PT_ACCESSED } from '../../src/index.js';
import { long4Machine } from './tables.js';

/** Runs `f`, which must end in a #PF the handler abandoned (GuestAbort). */
function abandoned(f: () => void): void {
  expect(f).toThrow(GuestAbort);
}

describe('Vcpu: a page fault invalidates the TLB entries of its page (SDM Vol. 3A §4.10.4.1)', () => {
  it('after a write #PF on a remapped read-only page, a read walks the new pte instead of the stale entry', () => {
    const { t, v, m } = long4Machine();
    m.memory.write32(0x200000, 0xaaaa);
    m.memory.write32(0x201000, 0xbbbb);
    t.map(0x400000, 0x200000, 0x5 | PT_ACCESSED); // P|U, read-only, D=0
    const codes: number[] = [];
    v.setExceptionHandler(PF_VECTOR, (_v, _vec, ec) => {
      codes.push(ec);
      throw new GuestAbort('SIGSEGV');
    });
    expect(v.read(0x400000, 4)).toBe(0xaaaa); // the TLB now holds frame 0x200000
    // The guest points the pte at another frame without INVLPG, then writes: a protection #PF.
    t.map(0x400000, 0x201000, 0x5 | PT_ACCESSED);
    abandoned(() => v.write(0x400000, 4, 1));
    expect(codes).toEqual([PFERR_PRESENT | PFERR_WRITE]);
    // The #PF invalidated the entry: this read walks and finds the new frame.
    expect(v.read(0x400000, 4)).toBe(0xbbbb);
  });

  it('after a write #PF on a page made not present, a read faults too', () => {
    const { t, v } = long4Machine();
    t.map(0x400000, 0x200000, 0x5 | PT_ACCESSED);
    const codes: number[] = [];
    v.setExceptionHandler(PF_VECTOR, (_v, _vec, ec) => {
      codes.push(ec);
      throw new GuestAbort('SIGSEGV');
    });
    v.read(0x400000, 4);
    t.set(t.pteAddr(0x400000), 0, 0); // not present, no INVLPG
    abandoned(() => v.write(0x400000, 4, 1));
    abandoned(() => v.read(0x400000, 4));
    expect(codes).toEqual([PFERR_WRITE, 0]);
  });

  it('also drops the stale entry of a global page, and counts no INVLPG', () => {
    const { t, v, m } = long4Machine();
    m.memory.write32(0x201000, 0xbbbb);
    t.map(0x400000, 0x200000, 0x105 | PT_ACCESSED); // global
    v.setExceptionHandler(PF_VECTOR, () => {
      throw new GuestAbort('SIGSEGV');
    });
    v.read(0x400000, 4);
    t.map(0x400000, 0x201000, 0x105 | PT_ACCESSED);
    abandoned(() => v.write(0x400000, 4, 1));
    expect(v.read(0x400000, 4)).toBe(0xbbbb);
    expect(v.tlb.invlpgs).toBe(0);
  });
});
