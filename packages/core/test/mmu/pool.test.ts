import { describe, expect, it } from 'vitest';
import { POOL_BASE, SptePool } from '../../src/mmu/index.js';

describe('SptePool', () => {
  it('keeps the base bits 51:32 as an integer, -1 off a 4 GiB boundary', () => {
    expect(new SptePool(4).baseHi).toBe(POOL_BASE / 2 ** 32);
    expect(new SptePool(4, 2 ** 51).baseHi).toBe(2 ** 19);
    expect(new SptePool(4, 2 ** 40 + 4096).baseHi).toBe(-1);
  });

  it('refuses a base that is not a positive 4 KiB-aligned address, or frames that do not end below 2^52', () => {
    expect(() => new SptePool(4, 0)).toThrow(/not a positive 4 KiB-aligned address/);
    expect(() => new SptePool(4, 4097)).toThrow(/not a positive 4 KiB-aligned address/);
    // 2^64 + 2^32 would make the base bits 2^32 + 1, which no int32 holds (the walker takes them `| 0`).
    expect(() => new SptePool(4, 2 ** 64 + 2 ** 32)).toThrow(/does not end below 2\^52/);
    expect(() => new SptePool(2, 2 ** 52 - 4096)).toThrow(/does not end below 2\^52/);
    expect(new SptePool(1, 2 ** 52 - 4096).capacity).toBe(1);
  });
});
