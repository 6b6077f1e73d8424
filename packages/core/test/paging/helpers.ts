import { SparsePhysicalMemory } from '../../src/memory/sparse.js';
import type { PhysicalMemory } from '../../src/memory/physical.js';

/** Table index of `va` at `level` (1 = PT) for 8-byte entries; `va` is a signed-canonical number. */
export function index64(va: number, level: number): number {
  const u = BigInt.asUintN(64, BigInt(va));
  return Number((u >> BigInt(12 + 9 * (level - 1))) & 0x1ffn);
}

/** Where `map64` puts the table of each level below the root: level L's table at 0x100000 + L * 0x1000. */
export const tableAt = (level: number): number => 0x100000 + level * 0x1000;

export interface Entry {
  lo: number;
  hi?: number;
}

/**
 * Writes the entries of one 8-byte-entry walk for `va`, top level first: `entries[0]` goes into the table at
 * `root` (level `top`), each non-leaf entry gets the next table's address OR-ed in, and the last entry is the
 * leaf, written as given (its frame included). Returns the entry addresses by level.
 */
export function map64(mem: SparsePhysicalMemory, root: number, top: number, va: number, entries: Entry[]): number[] {
  const at: number[] = [];
  let table = root;
  let level = top;
  entries.forEach((e, i) => {
    const pa = table + index64(va, level) * 8;
    const last = i === entries.length - 1;
    const next = tableAt(level - 1);
    mem.set64(pa, last ? e.lo : (e.lo | next) >>> 0, e.hi ?? 0);
    at[level] = pa;
    table = next;
    level--;
  });
  return at;
}

/** The same for 32-bit paging: PD at `root`, PT at 0x101000. Returns [pdePa, ptePa]. */
export function map32(mem: SparsePhysicalMemory, root: number, va: number, pde: number, pte: number | null): [number, number] {
  const pdePa = root + (va >>> 22) * 4;
  const ptePa = 0x101000 + ((va >>> 12) & 0x3ff) * 4;
  mem.write32(pdePa, pte === null ? pde : (pde | 0x101000) >>> 0);
  if (pte !== null) mem.write32(ptePa, pte);
  return [pdePa, ptePa];
}

/** A PhysicalMemory wrapper that records every write as [pa, old value, new value] (and counts reads). */
export class RecordingMemory implements PhysicalMemory {
  readonly writes: Array<[number, number, number]> = [];
  reads = 0;
  constructor(readonly inner: PhysicalMemory) {}
  read32(pa: number): number {
    this.reads++;
    return this.inner.read32(pa);
  }
  write32(pa: number, value: number): void {
    this.writes.push([pa, this.inner.read32(pa), value >>> 0]);
    this.inner.write32(pa, value);
  }
}
