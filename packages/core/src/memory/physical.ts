/**
 * A physical address space as the page walker sees it (consumer-side interface, as rust-vmm vm-memory's
 * `Bytes`): little-endian 32-bit words at 4-byte-aligned addresses. Physical addresses are plain numbers
 * (exact up to 2^53, enough for MAXPHYADDR 52); a 64-bit entry is read as two halves, never as a BigInt.
 *
 * Implementations: `SparsePhysicalMemory` (conformance vectors: a few pages anywhere below 2^52) and
 * `DensePhysicalMemory` (one ArrayBuffer from 0). The machine's guest memory with memslots is a third.
 */
export interface PhysicalMemory {
  /** The unsigned 32-bit little-endian word at `pa` (4-byte aligned). Unbacked memory reads as 0. */
  read32(pa: number): number;
  /** Stores the low 32 bits of `value` at `pa` (4-byte aligned). */
  write32(pa: number, value: number): void;
  /**
   * Whether a store to `pa` by the guest has no effect: read-only memory (a read-only memslot, ROM). The page
   * walker leaves the accessed and dirty flags of an entry there as they are. Absent: all of it is writable.
   */
  isReadonly?(pa: number): boolean;
}

/**
 * A memory that holds a range of its words in one array the page walker may read without a call: the MMU
 * pool's frames (`SptePoolMemory`), where the shadow tables a vCPU walks under shadow paging live. Word `i`
 * of `directWords` is the word at physical address `directBase + 4 * i`, exactly what `read32` returns there.
 */
export interface DirectWords extends PhysicalMemory {
  /** The words (replaced when the range grows: read it again for every walk). */
  readonly directWords: Uint32Array;
  /** The physical address of word 0. */
  readonly directBase: number;
  /** Bits 51:32 of `directBase` when it is a multiple of 4 GiB, else -1 (the walker's integer arithmetic: it takes it `| 0`). */
  readonly directBaseHi: number;
}
