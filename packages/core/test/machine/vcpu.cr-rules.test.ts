import { describe, expect, it } from 'vitest';
import {
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  CR4_PCIDE,
  CR4_PSE,
  EFER_LMA,
  EFER_LME,
  EFER_NXE,
  GP_VECTOR,
  GuestAbort,
  MODE_LEGACY32,
  MODE_LONG4,
  MODE_PAE,
  Machine,
  type Vcpu,
} from '../../src/index.js';

const CR0_NW = 1 << 29;
const CR0_CD = 1 << 30;
/** CR4.OSFXSR (bit 9), CR4.VMXE (bit 13), CR4.OSXSAVE (bit 18), CR4.CET (bit 23); EFER.SCE (bit 0), EFER.SVME (bit 12). */
const CR4_OSFXSR = 1 << 9;
const CR4_VMXE = 1 << 13;
const CR4_OSXSAVE = 1 << 18;
const CR4_CET = 1 << 23;
const EFER_SCE = 1 << 0;
const EFER_SVME = 1 << 12;

/** A vCPU with paging off and a #GP handler that records the error code and abandons the instruction. */
function offMachine(): { m: Machine; v: Vcpu; gp: number[] } {
  const m = new Machine({ memoryBytes: 1 << 20, maxPhyAddr: 40 });
  const v = m.vcpus[0]!;
  const gp: number[] = [];
  v.setExceptionHandler(GP_VECTOR, (_v, _vec, ec) => {
    gp.push(ec);
    throw new GuestAbort('SIGSEGV');
  });
  return { m, v, gp };
}

/** IA-32e mode, 4-level paging (CR3 = 0x1000), entered as SDM Vol. 3A §9.8.5 says: PAE, LME, CR3, then PE|PG. */
function long4(): { v: Vcpu; gp: number[] } {
  const { v, gp } = offMachine();
  v.movToCr4(CR4_PAE);
  v.writeEfer(EFER_LME);
  v.movToCr3(0x1000);
  v.movToCr0(CR0_PG | CR0_PE);
  return { v, gp };
}

/** PAE paging (CR3 = 0x1000, all four PDPTEs not present, which loads without a #GP). */
function pae(): { v: Vcpu; gp: number[] } {
  const { v, gp } = offMachine();
  v.movToCr4(CR4_PAE);
  v.movToCr3(0x1000);
  v.movToCr0(CR0_PG | CR0_PE);
  return { v, gp };
}

/** `write` is #GP(0): the guest's handler ran once, with error code 0. */
function expectGp(gp: number[], write: () => void): void {
  const before = gp.length;
  expect(write).toThrow(GuestAbort);
  expect(gp.slice(before)).toEqual([0]);
}

describe('Vcpu.movToCr0: invalid bit combinations are #GP(0), CR0 unchanged (SDM Vol. 2B MOV; KVM kvm_is_valid_cr0)', () => {
  it('refuses PG with PE clear, and takes PE and PG in one write', () => {
    const { v, gp } = offMachine();
    v.movToCr3(0x1000);
    expectGp(gp, () => v.movToCr0(CR0_PG));
    expect([v.cr0, v.pagingEnabled]).toEqual([0, false]);
    v.movToCr0(CR0_PG | CR0_PE);
    expect([v.cr0, v.pagingEnabled, gp.length]).toEqual([(CR0_PG | CR0_PE) >>> 0, true, 1]);
  });

  it('refuses NW with CD clear, and takes NW with CD set', () => {
    const { v, gp } = pae();
    expectGp(gp, () => v.movToCr0(CR0_PG | CR0_PE | CR0_NW));
    expect(v.cr0).toBe((CR0_PG | CR0_PE) >>> 0);
    v.movToCr0(CR0_PG | CR0_PE | CR0_CD | CR0_NW);
    expect(v.cr0).toBe((CR0_PG | CR0_PE | CR0_CD | CR0_NW) >>> 0);
    expect(gp).toEqual([0]);
  });

  it('refuses PG with EFER.LME = 1 and CR4.PAE = 0: IA-32e mode needs PAE (§9.8.5); LMA stays clear', () => {
    const { v, gp } = offMachine();
    v.writeEfer(EFER_LME);
    v.movToCr3(0x1000);
    expectGp(gp, () => v.movToCr0(CR0_PG | CR0_PE));
    expect([v.cr0, v.efer, v.mode]).toEqual([0, EFER_LME, MODE_LEGACY32]);
    // PE alone is fine (no paging), and PG once PAE is set.
    v.movToCr0(CR0_PE);
    v.movToCr4(CR4_PAE);
    v.movToCr0(CR0_PG | CR0_PE);
    expect([v.efer, v.mode, gp.length]).toEqual([EFER_LME | EFER_LMA, MODE_LONG4, 1]);
  });

  it('refuses to clear PG in IA-32e mode, with or without CR4.PCIDE (Vol. 2B MOV 64-Bit Mode Exceptions)', () => {
    const { v, gp } = long4();
    expectGp(gp, () => v.movToCr0(CR0_PE));
    v.movToCr4(CR4_PAE | CR4_PCIDE);
    expectGp(gp, () => v.movToCr0(CR0_PE | CR0_WP));
    expect([v.cr0, v.efer & EFER_LMA, v.mode]).toEqual([(CR0_PG | CR0_PE) >>> 0, EFER_LMA, MODE_LONG4]);
  });

  it('lets PG be cleared outside IA-32e mode (PAE paging off, then on again)', () => {
    const { v, gp } = pae();
    v.movToCr0(CR0_PE);
    expect(v.pagingEnabled).toBe(false);
    v.movToCr0(CR0_PG | CR0_PE);
    expect([v.pagingEnabled, v.mode, gp.length]).toEqual([true, MODE_PAE, 0]);
  });

  it('refuses bits 63:32 of the operand in 64-bit mode (§2.5)', () => {
    const { v, gp } = long4();
    expectGp(gp, () => v.movToCr0(2 ** 32 + ((CR0_PG | CR0_PE | CR0_WP) >>> 0)));
    expectGp(gp, () => v.movToCr0(2 ** 63));
    expect(v.cr0).toBe((CR0_PG | CR0_PE) >>> 0);
  });

  it('takes the low 32 bits of the operand outside 64-bit mode (a 32-bit operand, Vol. 2B MOV)', () => {
    const { v, gp } = pae();
    v.movToCr0(2 ** 32 + ((CR0_PG | CR0_PE | CR0_WP) >>> 0));
    expect([v.cr0, gp.length]).toEqual([(CR0_PG | CR0_PE | CR0_WP) >>> 0, 0]);
  });

  it('ignores the reserved bits of CR0[31:0]: no #GP, they read as 0 (§2.5; KVM kvm_set_cr0)', () => {
    const { v, gp } = pae();
    // Bits 6-15, 17 and 19-28 are reserved.
    v.movToCr0(CR0_PG | CR0_PE | CR0_WP | (1 << 6) | (1 << 15) | (1 << 17) | (1 << 28));
    expect([v.cr0, gp.length]).toEqual([(CR0_PG | CR0_PE | CR0_WP) >>> 0, 0]);
  });
});

describe('Vcpu.movToCr3 outside 64-bit mode: a 32-bit operand (SDM Vol. 2B MOV)', () => {
  it('loads the low 32 bits, as an unsigned address', () => {
    // The operand of MOV to CR3 outside 64-bit mode is 32 bits: bit 32 of a wider number is not there, and an int32
    // with bit 31 set (what `x | 0` makes) is the address 0x80001000, not a negative one.
    const { v, gp } = offMachine();
    v.movToCr3(2 ** 32 + 0x1000);
    expect(v.cr3).toBe(0x1000);
    v.movToCr3(0x80001000 | 0);
    expect([v.cr3, gp.length]).toEqual([0x80001000, 0]);
  });
});

describe('Vcpu.movToCr4: reserved bits and bits of features the processor lacks are #GP(0), CR4 unchanged (§2.5; KVM kvm_is_valid_cr4)', () => {
  for (const [name, bit] of [
    ['bit 15 (reserved)', 1 << 15],
    ['bit 31 (reserved)', 1 << 31],
    ['VMXE (no nested VMX)', CR4_VMXE],
    ['CET (not modelled)', CR4_CET],
  ] as const) {
    it(`refuses ${name}`, () => {
      const { v, gp } = pae();
      expectGp(gp, () => v.movToCr4(CR4_PAE | bit));
      expect([v.cr4, v.mode]).toEqual([CR4_PAE, MODE_PAE]);
    });
  }

  it('refuses bits 63:32 in 64-bit mode, and takes the low 32 bits outside it', () => {
    const { v, gp } = long4();
    expectGp(gp, () => v.movToCr4(2 ** 32 + CR4_PAE));
    expect(v.cr4).toBe(CR4_PAE);
    const p = pae();
    p.v.movToCr4(2 ** 32 + (CR4_PAE | CR4_PSE));
    expect([p.v.cr4, p.gp.length]).toEqual([CR4_PAE | CR4_PSE, 0]);
  });

  it('takes the bits of features the processor has that paging does not use (OSFXSR, OSXSAVE)', () => {
    const { v, gp } = long4();
    v.movToCr4(CR4_PAE | CR4_OSFXSR | CR4_OSXSAVE);
    expect([v.cr4, gp.length]).toEqual([CR4_PAE | CR4_OSFXSR | CR4_OSXSAVE, 0]);
  });
});

describe('Vcpu.writeEfer: WRMSR IA32_EFER (SDM Vol. 2B WRMSR, Vol. 3A §2.2.1, §9.8.5; KVM set_efer)', () => {
  for (const [name, value] of [
    ['bit 1 (reserved)', EFER_SCE | (1 << 1)],
    ['bit 9 (reserved)', 1 << 9],
    ['SVME (an AMD bit the vCPU lacks)', EFER_SVME],
    ['bit 32 (EDX bit 0)', 2 ** 32 + EFER_NXE],
  ] as const) {
    it(`refuses ${name}: #GP(0), EFER unchanged`, () => {
      const { v, gp } = offMachine();
      v.writeEfer(EFER_NXE);
      expectGp(gp, () => v.writeEfer(value));
      expect(v.efer).toBe(EFER_NXE);
    });
  }

  it('takes SCE, LME and NXE with paging off; a written LMA is ignored (read-only)', () => {
    const { v, gp } = offMachine();
    v.writeEfer(EFER_SCE | EFER_LME | EFER_NXE | EFER_LMA);
    expect([v.efer, gp.length]).toEqual([EFER_SCE | EFER_LME | EFER_NXE, 0]);
  });

  it('refuses to set LME while paging is on (PAE paging)', () => {
    const { v, gp } = pae();
    expectGp(gp, () => v.writeEfer(EFER_LME));
    expect([v.efer, v.mode]).toEqual([0, MODE_PAE]);
    v.writeEfer(EFER_NXE); // NXE may change with paging on
    expect([v.efer, gp.length]).toEqual([EFER_NXE, 1]);
  });

  it('refuses to clear LME in IA-32e mode; LMA and the paging mode stay', () => {
    const { v, gp } = long4();
    expectGp(gp, () => v.writeEfer(EFER_NXE));
    expect([v.efer, v.mode]).toEqual([EFER_LME | EFER_LMA, MODE_LONG4]);
    v.writeEfer(EFER_LME | EFER_NXE); // LME unchanged: fine, LMA kept
    expect([v.efer, gp.length]).toEqual([EFER_LME | EFER_LMA | EFER_NXE, 1]);
  });
});
