import { hexU64 } from '../arch/hex.js';
import type { GuestMemory } from './guest-memory.js';

/** The value that a read of unbacked guest-physical memory returns (an open bus reads all ones). */
export const OPEN_BUS = 0xffffffff;

/** What a load of `size` bytes from unbacked guest-physical memory returns: every byte 0xff. */
export function openBus(size: number): number {
  return size === 1 ? 0xff : size === 2 ? 0xffff : OPEN_BUS;
}

/**
 * The bulk part of `rep movs` (Vcpu.repMovs): `bytes` bytes of RAM from offset `from` to offset `to`, in
 * elements of `size` bytes, ascending (EFLAGS.DF = 0). SDM Vol. 2B MOVS/REP: the instruction moves one
 * element at a time, so a destination that starts inside the source (to > from, overlapping) reads back the
 * elements it stored before: moving four elements of 1,2,3,4,5 one element up gives 1,1,1,1,1, where one
 * memmove (copyWithin) would give 1,1,2,3,4. Without that overlap the two are the same, and one copyWithin does it.
 */
export function copyElements(u8: Uint8Array, to: number, from: number, bytes: number, size: number): void {
  if (!(to > from && to < from + bytes)) u8.copyWithin(to, from, from + bytes);
  else for (let k = 0; k < bytes; k += size) u8.copyWithin(to + k, from + k, from + k + size);
}

/** Whether a store of `size` bytes of (lo, hi) writes only zero bytes (a store to the zero page, Vcpu.unzero). */
export function zeroStore(size: number, lo: number, hi: number): boolean {
  return size === 1 ? (lo & 0xff) === 0 : size === 2 ? (lo & 0xffff) === 0 : size === 8 ? (lo | hi) === 0 : (lo | 0) === 0;
}

/** The error of Vcpu's checkSpan, out of line (checkSpan runs on every access and should stay small enough to inline). */
export function badSpan(va: number, size: number): never {
  throw new RangeError(`an access of ${size} bytes at ${hexU64(va)} crosses a page boundary or has an unsupported size`);
}

/** An element of rep stos / rep movs must not cross a 4 KiB page (the guest model splits those); 1 to 16 bytes. */
export function checkSpan(va: number, size: number): void {
  // va & 0xfff: the offset in the page (bits 11:0 of the two's-complement address; `%` on a double would call fmod).
  if ((va & 0xfff) > 4096 - size || !(size === 1 || size === 2 || size === 4 || size === 8 || size === 16)) badSpan(va, size);
}

/** A load or store (read, write, fetch): 1, 2, 4 or 8 bytes, the most its value (lo, hi) holds, in one page. */
export function checkScalarSpan(va: number, size: number): void {
  if ((va & 0xfff) > 4096 - size || !(size === 1 || size === 2 || size === 4 || size === 8)) badSpan(va, size);
}

/** Stores `size` bytes at RAM offset `off`. */
export function storeAt(m: GuestMemory, off: number, size: number, lo: number, hi: number): void {
  switch (size) {
    case 1:
      m.u8[off] = lo;
      return;
    case 2:
      m.view.setUint16(off, lo, true);
      return;
    case 4:
      if ((off & 3) === 0) m.u32[off >>> 2] = lo;
      else m.view.setUint32(off, lo, true);
      return;
    default:
      if ((off & 3) === 0) {
        m.u32[off >>> 2] = lo;
        m.u32[(off >>> 2) + 1] = hi;
      } else {
        m.view.setUint32(off, lo, true);
        m.view.setUint32(off + 4, hi, true);
      }
  }
}

/**
 * `count` stores of `size` bytes of (lo, hi) from RAM offset `off` upwards, in one page: the bulk of `rep stos`
 * (Vcpu.repStos), with the bytes `count` `storeAt` calls leave. A byte value, an aligned 4-byte one, and an
 * aligned 8-byte one whose halves are equal (clear_page's zeros) are one `fill` of the page's words.
 */
export function fillElements(m: GuestMemory, off: number, count: number, size: number, lo: number, hi: number): void {
  if (size === 1) m.u8.fill(lo & 0xff, off, off + count);
  else if (size === 4 && (off & 3) === 0) m.u32.fill(lo, off >>> 2, (off >>> 2) + count);
  else if (size === 8 && (off & 3) === 0 && (lo ^ hi) === 0) m.u32.fill(lo, off >>> 2, (off >>> 2) + 2 * count);
  else for (let k = 0; k < count; k++) storeAt(m, off + k * size, size, lo, hi);
}
