import { describe, expect, it } from 'vitest';
import { hexHiLo, hexU64 } from '../../src/arch/hex.js';

describe('hexU64', () => {
  it('writes a signed-canonical address as its unsigned 64-bit form (as BigInt.asUintN(64) would)', () => {
    for (const n of [0, 1, 0x1000, 2 ** 47 - 1, -1, -4096, -(2 ** 47), -0x7780_0000_0000, -(2 ** 32), -(2 ** 32) - 1, -(2 ** 53) + 1]) {
      expect(hexU64(n)).toBe(`0x${BigInt.asUintN(64, BigInt(n)).toString(16)}`);
    }
    expect(hexU64(-0x7780_0000_0000)).toBe('0xffff888000000000');
  });
});

describe('hexHiLo', () => {
  it('writes all 64 bits of a pte given as halves, with no precision lost', () => {
    // KVM's shadow_trap_nonpresent_pte, 0xfffffffffffff001: hi * 2^32 + lo as a double would round it.
    expect(hexHiLo(0xffffffff, 0xfffff001)).toBe('0xfffffffffffff001');
    expect(hexHiLo(0x80000000, 0x00000067)).toBe('0x8000000000000067');
    expect(hexHiLo(0, 0x1067)).toBe('0x1067');
    expect(hexHiLo(0, 0)).toBe('0x0');
    expect(hexHiLo(-1, -1)).toBe('0xffffffffffffffff');
  });
});
