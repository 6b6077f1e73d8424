import type { PhysicalMemory } from '../memory/physical.js';
import type { PmlLog } from './pml.js';
import { NESTED_FINAL, NESTED_PDPTE, NESTED_TABLE, type SecondStage, type WalkResult } from './types.js';
import { isVersionedTables, MEMO_ALL_ACCESSED, MEMO_DIRTY, StageMemo } from './stage-memo.js';
import { tableIndex } from './walk-common.js';

/*
 * Intel EPT (extended page tables), SDM Vol. 3C ch. 29 ("VMX Support for Address Translation"), §29.3:
 * the second stage of VMX two-dimensional paging. The tables are real 64-bit little-endian entries in host
 * memory; an entry is read as two 32-bit halves, never as a BigInt.
 */

/** EPTP, SDM Vol. 3C §25.6.11 (Table 25-9): bits 2:0 memory type, 5:3 page-walk length - 1, bit 6 A/D enable. */
export const EPTP_MT_UC = 0;
export const EPTP_MT_WB = 6;
export const EPTP_PWL_SHIFT = 3;
export const EPTP_AD_ENABLE = 1 << 6;

/** EPT paging-structure entry bits, SDM Vol. 3C §29.3.2 (Tables 29-1 to 29-6). */
export const EPT_READ = 1 << 0;
export const EPT_WRITE = 1 << 1;
export const EPT_EXEC = 1 << 2;
/** Bits 5:3 of a leaf: the EPT memory type (0 UC, 1 WC, 4 WT, 5 WP, 6 WB; 2, 3 and 7 are reserved). */
export const EPT_MT_SHIFT = 3;
export const EPT_IGNORE_PAT = 1 << 6;
export const EPT_PAGE_SIZE = 1 << 7;
export const EPT_ACCESSED = 1 << 8;
export const EPT_DIRTY = 1 << 9;
/** The walk's own copy of EPT_PAGE_SIZE: V8 (Node 20) reads an exported binding through its module cell on every use. */
const PS = EPT_PAGE_SIZE;

/** What an EPT second stage is built with: the processor features that decide which EPT entries are valid (SDM Vol. 3C §29.3.2). */
export interface EptOptions {
  /** The processor's MAXPHYADDR, 36..52 (default 46): bits 51:M of every entry are reserved. */
  readonly maxPhyAddr?: number;
  /** IA32_VMX_EPT_VPID_CAP bit 0: execute-only translations (XWR = 100b) are supported (default true). */
  readonly executeOnly?: boolean;
}

/**
 * Why `eptp` is not a valid EPT pointer for VM entry (SDM Vol. 3C §27.2.1.1, "VM-Execution Control
 * Fields"), or null: memory type UC or WB; a page-walk length of 4 or 5 (5 only where supported: here
 * always); bits 11:7 zero (bit 7, supervisor shadow-stack control, is not modelled); no address bit at or
 * above MAXPHYADDR.
 */
export function eptpProblem(eptp: number, maxPhyAddr: number): string | null {
  if (!Number.isInteger(eptp) || eptp < 0 || eptp >= 2 ** 52) return `EPTP ${eptp} is not an integer below 2^52`;
  const low = eptp % 4096;
  const mt = low & 7;
  if (mt !== EPTP_MT_UC && mt !== EPTP_MT_WB) return `EPTP memory type ${mt} is neither UC (0) nor WB (6)`;
  const pwl = ((low >>> EPTP_PWL_SHIFT) & 7) + 1;
  if (pwl !== 4 && pwl !== 5) return `EPTP page-walk length ${pwl} is neither 4 nor 5`;
  if ((low & 0xf80) !== 0) return `EPTP bits 11:7 are not zero (${(low & 0xf80).toString(16)})`;
  if (eptp >= 2 ** maxPhyAddr) return `EPTP sets address bits at or above MAXPHYADDR ${maxPhyAddr}`;
  return null;
}

/**
 * The EPT walk (SDM Vol. 3C §29.3.2-29.3.3, §29.3.5), as a `SecondStage` over host memory `mem`:
 *
 * - 4- or 5-level tables from the EPTP (§29.3.2); 1 GiB pages in EPT PDPTEs and 2 MiB pages in EPT PDEs
 *   (bit 7). A 4-level walk translates 48-bit guest-physical addresses; a gpa with bits 51:48 set is refused
 *   as not mapped (an EPT violation with no rights).
 * - An entry is present when any of bits 2:0 (R, W, X) is set (§29.3.2; mode-based execute control is not
 *   modelled). A not-present entry is an EPT violation.
 * - A present entry is an EPT misconfiguration (§29.3.3.1) when: W without R (XWR = 010b or 110b);
 *   execute-only (100b) without the capability; a reserved bit is set: bits 51:M in every entry, bits 7:3 of
 *   an EPT PML5E/PML4E, bits 6:3 of a non-leaf EPT PDPTE/PDE, bits 29:12 of a 1 GiB leaf, bits 20:12 of a
 *   2 MiB leaf; or the leaf's memory type (bits 5:3) is 2, 3 or 7.
 * - Rights are the AND of R, W, X over every entry used (§29.3.3.2); a data read needs R, a data write W, a
 *   fetch X. A read of a guest paging-structure entry is a data read, or a write when EPTP bit 6 enables
 *   EPT A/D ("processor accesses to guest paging-structure entries are treated as writes", §29.3.5); a load
 *   of the PAE PDPTE registers is always a read.
 * - With EPTP bit 6 and side effects (§29.3.5): the accessed flag (bit 8) is set in every entry used and the
 *   dirty flag (bit 9) in the leaf for a write, when the translation succeeds (a refused translation changes
 *   nothing, as the guest walker's choice).
 */
export class EptStage implements SecondStage {
  readonly maxPhyAddr: number;
  readonly executeOnly: boolean;
  /** The EPTP in force, its root table, walk length and A/D enable. */
  eptp = 0;
  root = 0;
  levels = 4;
  accessedDirty = false;
  /**
   * The PML log when the "enable PML" control is on (§29.3.6; set by the backend's PML capability), else null:
   * each dirty flag the walk sets is logged first, and a full log stops the walk with a PML-full event.
   */
  pml: PmlLog | null = null;
  /** The entries of the last translation, per level (1..5): host-physical address and low half. */
  private readonly usedPa = new Float64Array(6);
  private readonly usedLo = new Uint32Array(6);
  /** Walks already made, while the tables have not changed (StageMemo); null when `mem` does not count its table writes. */
  private readonly memo: StageMemo | null;

  constructor(
    readonly mem: PhysicalMemory,
    eptp: number,
    options: EptOptions = {},
  ) {
    const m = options.maxPhyAddr ?? 46;
    if (!Number.isInteger(m) || m < 36 || m > 52) throw new RangeError(`EptStage: MAXPHYADDR ${m} is outside 36..52`);
    this.maxPhyAddr = m;
    this.executeOnly = options.executeOnly ?? true;
    this.memo = isVersionedTables(mem) ? new StageMemo(mem) : null;
    this.load(eptp);
  }

  /** Takes a new EPTP (VMX: a VMWRITE of the EPT pointer before VM entry). Throws a RangeError naming what is invalid. */
  load(eptp: number): void {
    const problem = eptpProblem(eptp, this.maxPhyAddr);
    if (problem !== null) throw new RangeError(`EptStage: ${problem}`);
    const low = eptp % 4096;
    this.eptp = eptp;
    this.root = eptp - low;
    this.levels = ((low >>> EPTP_PWL_SHIFT) & 7) + 1;
    this.accessedDirty = (low & EPTP_AD_ENABLE) !== 0;
    this.memo?.version.fill(-1); // another root: nothing walked before holds
  }

  translate(gpa: number, access: number, kind: number, flags: number, out: WalkResult): number {
    // What the access needs (NESTED_* bits = EPT R/W/X) and how it is reported (ACC_* bits).
    let want: number;
    let acc: number;
    if (kind === NESTED_FINAL) {
      acc = access & 0x12; // ACC_WRITE | ACC_FETCH (a read is 0); CPL does not matter to EPT
      want = (acc & 0x2) !== 0 ? 2 /* W */ : (acc & 0x10) !== 0 ? 4 /* X */ : 1; /* R */
    } else if (kind === NESTED_TABLE && this.accessedDirty) {
      acc = 0x2; // ACC_WRITE
      want = 2;
    } else {
      acc = 0;
      want = 1;
    }
    const sideEffects = (flags & 1) /* WALK_SIDE_EFFECTS */ !== 0;
    const write = want === 2;
    const memo = this.memo;
    if (memo !== null) {
      // The same page walked before, the tables unchanged since: the same entries, rights and flags. Taken only
      // when the walk would set no flag (every accessed flag set, and the leaf's dirty flag for a write).
      const i = memo.find(gpa);
      if (i >= 0) {
        const info = memo.info[i]!;
        const leafDirty = (info & MEMO_DIRTY) !== 0;
        if ((info & want) !== 0 && (!this.accessedDirty || !sideEffects || ((info & MEMO_ALL_ACCESSED) !== 0 && (!write || leafDirty)))) {
          out.refs += info >>> 8;
          out.nestedRights = info & 7;
          out.nestedDirty = !this.accessedDirty || leafDirty || (sideEffects && write);
          return memo.hpa[i]! + (gpa & 0xfff);
        }
      }
    }
    const mem = this.mem;
    const lo = gpa | 0; // bits 31:0 (ToInt32 is the value mod 2^32)
    const hi = Math.floor(gpa / 4294967296) | 0;
    if (this.levels === 4 && hi >>> 16 !== 0) return this.refuse(out, gpa, kind, acc, 0, false);
    const m = this.maxPhyAddr - 32;
    const rsvdHi = (0xfffff >>> m) << m; // bits 51:M
    let table = this.root;
    let rights = 7;
    let level = this.levels;
    let elo: number;
    let ehi: number;
    let offsetMask = 0xfff;
    for (;;) {
      const index = tableIndex(level, lo, hi);
      const epa = table + index * 8;
      elo = mem.read32(epa);
      ehi = mem.read32(epa + 4);
      out.refs++;
      const xwr = elo & 7;
      if (xwr === 0) return this.refuse(out, gpa, kind, acc, 0, false); // not present: no rights
      if ((xwr & 3) === 2 || (xwr === 4 && !this.executeOnly) || (ehi & rsvdHi) !== 0) return this.refuse(out, gpa, kind, acc, rights & xwr, true);
      let leaf = level === 1;
      if (level >= 4) {
        if ((elo & 0xf8) !== 0) return this.refuse(out, gpa, kind, acc, rights & xwr, true); // bits 7:3
      } else if (level >= 2 && (elo & PS) !== 0) {
        leaf = true;
        offsetMask = level === 3 ? 0x3fffffff : 0x1fffff;
        if ((elo & (level === 3 ? 0x3ffff000 : 0x1ff000)) !== 0) return this.refuse(out, gpa, kind, acc, rights & xwr, true); // bits 29:12 / 20:12
      } else if (!leaf && (elo & 0x78) !== 0) {
        return this.refuse(out, gpa, kind, acc, rights & xwr, true); // bits 6:3 of a non-leaf entry
      }
      if (leaf) {
        const mt = (elo >>> 3) & 7;
        if (mt === 2 || mt === 3 || mt === 7) return this.refuse(out, gpa, kind, acc, rights & xwr, true);
      }
      rights &= xwr;
      this.usedPa[level] = epa;
      this.usedLo[level] = elo;
      if (leaf) break;
      table = ((elo & 0xfffff000) >>> 0) + (ehi & 0xfffff) * 4294967296;
      level--;
    }
    if ((rights & want) === 0) return this.refuse(out, gpa, kind, acc, rights, false);
    let dirty = true;
    let accessed = EPT_ACCESSED;
    if (this.accessedDirty) {
      dirty = (elo & EPT_DIRTY) !== 0 || (sideEffects && write);
      if (sideEffects && write && (elo & EPT_DIRTY) === 0 && this.pml !== null && !this.pml.log(gpa)) {
        // §29.3.6: the dirty flag must be set and logged, and the PML index is out of range: a PML-full
        // event before any flag is set (the access is repeated after the hypervisor empties the log).
        this.refuse(out, gpa, kind, acc, rights, false);
        out.nestedPmlFull = true;
        return -1;
      }
      for (let l = this.levels; l >= level; l--) {
        const set = l === level && write ? EPT_ACCESSED | EPT_DIRTY : EPT_ACCESSED;
        if ((this.usedLo[l]! & set) !== set) {
          if (sideEffects) {
            const epa = this.usedPa[l]!;
            mem.write32(epa, (mem.read32(epa) | set) >>> 0);
          } else accessed &= this.usedLo[l]!;
        }
      }
    }
    out.nestedRights = rights;
    out.nestedDirty = dirty;
    const hpa = ((elo & ~offsetMask & 0xfffff000) >>> 0) + (ehi & 0xfffff) * 4294967296 + (gpa & offsetMask);
    if (memo !== null) {
      // As the entries are now (after the flags this walk set): a leaf's dirty flag is set when it was, or was just set.
      memo.fillWalk(this.usedPa, this.levels, level, gpa, hpa, rights | (accessed !== 0 ? MEMO_ALL_ACCESSED : 0) | (dirty ? MEMO_DIRTY : 0));
    }
    return hpa;
  }

  /** Records an EPT violation (rights = the AND of bits 2:0 of the entries used) or misconfiguration. */
  private refuse(out: WalkResult, gpa: number, kind: number, acc: number, rights: number, misconfig: boolean): number {
    out.nestedGpa = gpa;
    out.nestedFinal = kind === NESTED_FINAL;
    out.nestedPdpteLoad = kind === NESTED_PDPTE;
    out.nestedAccess = acc;
    out.nestedRights = misconfig ? 0 : rights;
    out.nestedMisconfig = misconfig;
    out.nestedPmlFull = false;
    out.nestedCode = misconfig ? 0x9 /* P | RSVD */ | acc : (rights !== 0 ? 0x1 /* P */ : 0) | acc;
    return -1;
  }
}
