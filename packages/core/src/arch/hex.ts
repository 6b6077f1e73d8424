/**
 * The one hex format of vmexit, for addresses and 64-bit values in error messages, traces and JSON: unsigned
 * hex ("0x…", lowercase, no padding).
 * Linear addresses are kept as signed-canonical numbers (bits 63..48 copies of bit 47, SDM Vol. 1 §3.3.7.1),
 * so a kernel address is negative; it is written as its 64-bit two's complement (0xffff8000…), as the
 * manuals and Linux write it. No BigInt: the high half is computed with floor division (exact for safe
 * integers).
 */
export function hexU64(n: number): string {
  if (n >= 0) return `0x${n.toString(16)}`;
  const hi = Math.floor(n / 4294967296);
  const lo = n - hi * 4294967296;
  return `0x${(hi >>> 0).toString(16)}${lo.toString(16).padStart(8, '0')}`;
}

/** A 64-bit value given as unsigned 32-bit halves (a pte), in the same format: exact for all 64 bits. */
export function hexHiLo(hi: number, lo: number): string {
  const h = hi >>> 0;
  return h === 0 ? `0x${(lo >>> 0).toString(16)}` : `0x${h.toString(16)}${(lo >>> 0).toString(16).padStart(8, '0')}`;
}
