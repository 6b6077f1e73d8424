import { describe, expect, it } from 'vitest';
import { CR0_PG, CR4_LA57, CR4_PAE, CR4_PCIDE, EFER_LME, GP_VECTOR, GuestAbort, MODE_LONG4, Machine } from '../../src/index.js';

/** 4-level paging (IA-32e mode) with CR3 = 0x1000, MAXPHYADDR 40, and a #GP handler that counts and abandons. */
function long4Machine() {
  const m = new Machine({ memoryBytes: 1 << 20, maxPhyAddr: 40 });
  const v = m.vcpus[0]!;
  v.writeEfer(EFER_LME);
  v.movToCr4(CR4_PAE);
  v.movToCr3(0x1000);
  v.movToCr0(CR0_PG | 1);
  const gp: number[] = [];
  v.setExceptionHandler(GP_VECTOR, (_v, vec) => {
    gp.push(vec);
    throw new GuestAbort('SIGSEGV');
  });
  return { v, gp };
}

describe('Vcpu.movToCr3: reserved bits of the operand in IA-32e mode (SDM Vol. 3A §4.5.2, Vol. 2B MOV)', () => {
  it('is a #GP, CR3 unchanged, for an operand with a bit at or above MAXPHYADDR', () => {
    const { v, gp } = long4Machine();
    expect(() => v.movToCr3(2 ** 40 + 0x2000)).toThrow(GuestAbort);
    expect(gp).toEqual([GP_VECTOR]);
    expect(v.cr3).toBe(0x1000);
    expect(v.ctx.cr3).toBe(0x1000);
  });

  it('takes an operand just below 2^MAXPHYADDR', () => {
    const { v, gp } = long4Machine();
    v.movToCr3(2 ** 40 - 0x1000);
    expect(gp).toEqual([]);
    expect(v.cr3).toBe(2 ** 40 - 0x1000);
  });

  it('is a #GP for bit 63 (no flush) when CR4.PCIDE = 0, and not when PCIDE = 1', () => {
    const { v, gp } = long4Machine();
    expect(() => v.movToCr3(0x2000, true)).toThrow(GuestAbort);
    expect(v.cr3).toBe(0x1000);
    v.movToCr4(CR4_PAE | CR4_PCIDE);
    v.movToCr3(0x2005, true);
    expect(gp).toEqual([GP_VECTOR]);
    expect(v.pcid).toBe(5);
  });
});

describe('Vcpu.movToCr4: setting CR4.PCIDE (SDM Vol. 3A §4.10.1, Vol. 2B MOV)', () => {
  it('is a #GP, CR4 unchanged, while CR3[11:0] is not 0', () => {
    const { v, gp } = long4Machine();
    v.movToCr3(0x1005);
    expect(() => v.movToCr4(CR4_PAE | CR4_PCIDE)).toThrow(GuestAbort);
    expect(gp).toEqual([GP_VECTOR]);
    expect(v.cr4 & CR4_PCIDE).toBe(0);
  });

  it('is a #GP outside IA-32e mode', () => {
    const m = new Machine({ memoryBytes: 1 << 20 });
    const v = m.vcpus[0]!;
    const gp: number[] = [];
    v.setExceptionHandler(GP_VECTOR, (_v, vec) => {
      gp.push(vec);
      throw new GuestAbort('SIGSEGV');
    });
    expect(() => v.movToCr4(CR4_PAE | CR4_PCIDE)).toThrow(GuestAbort);
    expect(gp).toEqual([GP_VECTOR]);
    expect(v.cr4).toBe(0);
  });

  it('sets PCIDE in IA-32e mode with CR3[11:0] = 0 (PCID 0)', () => {
    const { v, gp } = long4Machine();
    v.movToCr4(CR4_PAE | CR4_PCIDE);
    expect(gp).toEqual([]);
    expect(v.cr4 & CR4_PCIDE).toBe(CR4_PCIDE);
    expect(v.pcid).toBe(0);
  });
});

describe('Vcpu.movToCr4 in IA-32e mode: PAE stays set and LA57 unchanged (SDM Vol. 3A §4.1.1, Vol. 2B MOV)', () => {
  for (const [name, cr4] of [
    ['clearing PAE', 0],
    ['setting LA57', CR4_PAE | CR4_LA57],
  ] as const) {
    it(`is a #GP, CR4 and the paging mode unchanged, for ${name}`, () => {
      const { v, gp } = long4Machine();
      expect(() => v.movToCr4(cr4)).toThrow(GuestAbort);
      expect(gp).toEqual([GP_VECTOR]);
      expect(v.cr4).toBe(CR4_PAE);
      expect(v.mode).toBe(MODE_LONG4);
    });
  }
});
