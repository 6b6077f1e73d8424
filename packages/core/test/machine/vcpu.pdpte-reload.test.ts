import { describe, expect, it } from 'vitest';
import { CR0_PG, CR4_PAE, GP_VECTOR, GuestAbort, Machine } from '../../src/index.js';

const CR0_NW = 1 << 29;
const CR0_CD = 1 << 30;

/** PAE paging on a PDPT at 0x1000 with PDPTE 0 present (PD at 0x2000) and PDPTE 1 not present; 0x40400000 would map 0x11000 through a PD at 0x5000. */
function paeMachine() {
  const m = new Machine({ memoryBytes: 1 << 20 });
  const w = (a: number, v: number) => m.memory.write32(a, v);
  w(0x1000, 0x2001);
  w(0x2000 + 2 * 8, 0x3003);
  w(0x3000, 0x10003);
  w(0x5000 + 2 * 8, 0x6003);
  w(0x6000, 0x11003);
  w(0x11000, 0xbbbb);
  const v = m.vcpus[0]!;
  v.movToCr4(CR4_PAE);
  v.movToCr3(0x1000);
  v.movToCr0(CR0_PG | 1);
  return { m, v };
}

describe('Vcpu.movToCr0 in PAE paging: a change of CD or NW loads the PDPTE registers (SDM Vol. 3A §4.4.1)', () => {
  // NW is set only with CD set (NW=1 with CD=0 is a #GP, Vol. 2B MOV CR0).
  for (const [name, before, after] of [
    ['CD', 0, CR0_CD],
    ['NW', CR0_CD, CR0_CD | CR0_NW],
  ] as const) {
    it(`takes a PDPTE made present in memory when ${name} changes`, () => {
      const { m, v } = paeMachine();
      v.movToCr0(CR0_PG | 1 | before);
      m.memory.write32(0x1008, 0x5001);
      expect(v.ctx.pdpteLo[1]).toBe(0); // the registers are not memory: no reload yet
      v.movToCr0(CR0_PG | 1 | after);
      expect(v.ctx.pdpteLo[1]).toBe(0x5001);
      expect(v.read(0x40400000, 4)).toBe(0xbbbb);
    });
  }

  it('is a #GP, CR0 unchanged, when the reloaded PDPTEs have a reserved bit', () => {
    const { m, v } = paeMachine();
    m.memory.write32(0x1008, 0x5001 | 0x2); // bit 1 is reserved in a PDPTE (Table 4-8)
    const gp: number[] = [];
    v.setExceptionHandler(GP_VECTOR, (_v, vec) => {
      gp.push(vec);
      throw new GuestAbort('SIGSEGV');
    });
    expect(() => v.movToCr0(CR0_PG | 1 | CR0_CD)).toThrow(GuestAbort);
    expect(gp).toEqual([GP_VECTOR]);
    expect(v.cr0 & CR0_CD).toBe(0);
  });

  it('does not reload on a change of another bit (WP)', () => {
    const { m, v } = paeMachine();
    m.memory.write32(0x1008, 0x5001);
    v.movToCr0(CR0_PG | 1 | (1 << 16));
    expect(v.ctx.pdpteLo[1]).toBe(0);
  });
});
