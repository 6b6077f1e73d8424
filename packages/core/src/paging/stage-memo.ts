import type { PhysicalMemory } from '../memory/physical.js';

/**
 * Physical memory whose page tables in [tablesBase, tablesEnd) change only through writes it counts: the MMU
 * page pool (`SptePoolMemory`), whose sptes are written through `SptePool` and the stage's own A/D updates.
 * `tablesVersion` changes at every such write.
 */
export interface VersionedTables extends PhysicalMemory {
  readonly tablesVersion: number;
  readonly tablesBase: number;
  readonly tablesEnd: number;
}

/** Whether `mem` counts the writes to its tables (see VersionedTables). */
export function isVersionedTables(mem: PhysicalMemory): mem is VersionedTables {
  return typeof (mem as Partial<VersionedTables>).tablesVersion === 'number';
}

/** Entries of a StageMemo (direct-mapped by gfn). */
const MEMO_ENTRIES = 8192;
/** `info` bits: the rights (bits 2:0, NESTED_R/W/X), every entry used had its accessed flag, the leaf its dirty flag; bits 15:8 the entries read. */
export const MEMO_ALL_ACCESSED = 1 << 3;
export const MEMO_DIRTY = 1 << 4;

/**
 * The outcome of a second-stage walk per 4 KiB guest-physical page, as of a version of the tables: the
 * host-physical page, the rights, the accessed/dirty state of the entries used, and how many entries the walk
 * read. A later walk of the same page with the tables at the same version reads the same entries and finds
 * the same bits, so the stage answers from here and adds the same count of references to `out.refs`: it is
 * the simulator's shortcut, not a hardware cache (no reference, counter or flag comes out differently). Only
 * successful walks whose every entry lies in the versioned tables are kept; a walk that would set an
 * accessed or dirty flag takes the full path.
 */
export class StageMemo {
  readonly gfn = new Float64Array(MEMO_ENTRIES).fill(-1);
  readonly hpa = new Float64Array(MEMO_ENTRIES);
  readonly version = new Float64Array(MEMO_ENTRIES).fill(-1);
  readonly info = new Int32Array(MEMO_ENTRIES);
  readonly mask = MEMO_ENTRIES - 1;

  constructor(readonly tables: VersionedTables) {}

  /** The entry that holds the walk of the page of `gpa` at the tables' current version, or -1 when none does. */
  find(gpa: number): number {
    const gfn = Math.floor(gpa / 4096);
    const i = gfn & this.mask;
    return this.gfn[i] === gfn && this.version[i] === this.tables.tablesVersion ? i : -1;
  }

  /** Records the walk of page `gfn` to host page `hpaPage`, at the tables' current version. */
  fill(gfn: number, hpaPage: number, info: number): void {
    const i = gfn & this.mask;
    this.gfn[i] = gfn;
    this.hpa[i] = hpaPage;
    this.info[i] = info;
    this.version[i] = this.tables.tablesVersion;
  }

  /**
   * Records the successful walk of `gpa` to `hpa` that read the entries at `usedPa[levels]` down to
   * `usedPa[level]` (host-physical addresses, one per level), with the rights and MEMO_* bits in
   * `rightsAndFlags`, when every one of those entries lies in the versioned tables (only such walks are kept; see the class).
   * The count of entries read goes in `info` bits 15:8.
   */
  fillWalk(usedPa: Float64Array, levels: number, level: number, gpa: number, hpa: number, rightsAndFlags: number): void {
    const base = this.tables.tablesBase;
    const end = this.tables.tablesEnd;
    for (let l = levels; l >= level; l--) {
      const epa = usedPa[l]!;
      if (epa < base || epa >= end) return;
    }
    this.fill(Math.floor(gpa / 4096), hpa - (gpa & 0xfff), rightsAndFlags | ((levels - level + 1) << 8));
  }
}
