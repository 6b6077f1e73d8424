import { PT_ACCESSED, PT_DIRTY, PT_GLOBAL, PT_PAGE_SIZE, PT_PRESENT, PT_USER, PT_WRITABLE } from '@vmexit/core';

/** Bit 10 of a not-present pte marks a PROT_NONE page that keeps its frame (Linux `_PAGE_PROTNONE` in spirit). */
export const PTE_PROTNONE = 1 << 10;
/** Flags of a user page-table entry that points to a table (Linux `_PAGE_TABLE`). */
export const USER_TABLE = PT_PRESENT | PT_WRITABLE | PT_USER | PT_ACCESSED | PT_DIRTY;
/** Flags of a kernel page-table entry that points to a table (Linux `_KERNPG_TABLE`). */
export const KERNEL_TABLE = PT_PRESENT | PT_WRITABLE | PT_ACCESSED | PT_DIRTY;
/** A direct-map large page (Linux `__PAGE_KERNEL_LARGE`): global, dirty, accessed. */
export const KERNEL_LARGE = PT_PRESENT | PT_WRITABLE | PT_ACCESSED | PT_DIRTY | PT_PAGE_SIZE | PT_GLOBAL;
/** XD, bit 63 = bit 31 of the high half. */
export const HI_XD = 0x80000000 | 0;
/** What Solaris leaves in a not-present PDPTE (sparse-pdptes): P=0, junk in reserved and address bits. */
export const JUNK_PDPTE_LO = 0xdeadbee6 | 0;
export const JUNK_PDPTE_HI = 0x0badf00d;

/**
 * A page-table entry as two 32-bit halves (bits 31:0 and 63:32; `hi` is 0 for 4-byte entries). Readers
 * fill one the caller owns, so that a 64-bit read allocates nothing and leaves nothing behind.
 */
export interface PteValue {
  lo: number;
  hi: number;
}

/** The frame number an entry points to (bits 51:12). */
export function pteFrame(lo: number, hi: number, esz: 4 | 8): number {
  return ((lo >>> 12) + (esz === 8 ? (hi & 0xfffff) * 0x100000 : 0)) | 0;
}
