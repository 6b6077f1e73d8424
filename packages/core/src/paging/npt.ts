import { PT_ACCESSED, PT_DIRTY, PT_PAGE_SIZE } from '../arch/constants.js';
import type { PhysicalMemory } from '../memory/physical.js';
import { NESTED_FINAL, NESTED_PDPTE, type SecondStage, type WalkResult } from './types.js';
import { isVersionedTables, MEMO_ALL_ACCESSED, MEMO_DIRTY, StageMemo } from './stage-memo.js';
import { tableIndex } from './walk-common.js';

/*
 * The pte bits of the hot path as module-local constants (nested tables have the format of the guest's long-mode
 * tables, AMD APM Vol. 2 §15.25.5; A = bit 5, D = bit 6, PS = bit 7): V8 (Node 20) reads an imported binding through its module cell on every use, where it reads a
 * module-local const as a literal.
 */
const PS = PT_PAGE_SIZE;
const ACCESSED = PT_ACCESSED;
const DIRTY = PT_DIRTY;

/** What an NPT second stage is built with: the host state at VMRUN that decides how nested tables are walked (APM Vol. 2 §15.25.5). */
export interface NptOptions {
  /** The processor's MAXPHYADDR, 36..52 (default 46): bits 51:M of every entry are reserved. */
  readonly maxPhyAddr?: number;
  /** The host's paging mode at VMRUN: 4-level (default) or 5-level (host CR4.LA57) nested tables. */
  readonly levels?: 4 | 5;
  /** The host's EFER.NXE (default true, as every 64-bit host runs): without it bit 63 is reserved. */
  readonly nxe?: boolean;
}

/**
 * AMD nested paging, APM Vol. 2 §15.25, as a `SecondStage` over host memory `mem`: the nested tables have
 * the host's long-mode format (§15.25.5: 4-level, or 5-level with the host's CR4.LA57; P, R/W, U/S, A, D,
 * PS, NX as in ordinary paging; 2 MiB and 1 GiB pages) rooted at nCR3, and:
 *
 * - every nested access is a user access (§15.25.5), so every nested entry used needs U/S = 1; a write
 *   needs R/W = 1 on every level (CR0.WP does not matter to a user access), a fetch NX = 0 (with NXE);
 * - the guest's paging-structure accesses are user writes: KVM's own nested walker translates them with
 *   `nested_access = PFERR_WRITE_MASK | PFERR_USER_MASK` (arch/x86/kvm/mmu/paging_tmpl.h,
 *   FNAME(walk_addr_generic)), and kvm-unit-tests' `npt_rw_pfwalk` (x86/svm_npt.c) expects EXITINFO1 =
 *   0x2_0000_0007 (P | W | U | guest page-table access) for a read-only nested entry over the guest's CR3
 *   page; loads of PAE PDPTEs are user reads;
 * - a fault is #VMEXIT(NPF) with EXITINFO1[31:0] the #PF-style error code (P, R/W, U/S, RSV, I/D; §15.25.6):
 *   `out.nestedCode`;
 * - reserved bits as §4.5.4 of the Intel SDM lists for 4-level paging (bits 51:M, bit 63 without NXE, PS
 *   in a PML4E/PML5E, bits 29:13 of a 1 GiB leaf, bits 20:13 of a 2 MiB leaf);
 * - with side effects, A is set on every entry used and D on the leaf for a write, when the translation
 *   succeeds (as the guest walker: a refused translation changes nothing).
 */
export class NptStage implements SecondStage {
  readonly maxPhyAddr: number;
  readonly levels: 4 | 5;
  readonly nxe: boolean;
  /** nCR3: the root table's host-physical address (bits 51:12). */
  root = 0;
  private readonly usedPa = new Float64Array(6);
  private readonly usedLo = new Uint32Array(6);
  /** Walks already made, while the tables have not changed (StageMemo); null when `mem` does not count its table writes. */
  private readonly memo: StageMemo | null;

  constructor(
    readonly mem: PhysicalMemory,
    nCr3: number,
    options: NptOptions = {},
  ) {
    const m = options.maxPhyAddr ?? 46;
    if (!Number.isInteger(m) || m < 36 || m > 52) throw new RangeError(`NptStage: MAXPHYADDR ${m} is outside 36..52`);
    const levels = options.levels ?? 4;
    if (levels !== 4 && levels !== 5) throw new RangeError(`NptStage: ${String(levels)} levels (4 or 5)`);
    this.maxPhyAddr = m;
    this.levels = levels;
    this.nxe = options.nxe ?? true;
    this.memo = isVersionedTables(mem) ? new StageMemo(mem) : null;
    this.load(nCr3);
  }

  /** Takes a new nCR3 (the VMCB's N_CR3 at VMRUN). Throws a RangeError for an address at or above MAXPHYADDR. */
  load(nCr3: number): void {
    if (!Number.isInteger(nCr3) || nCr3 < 0 || nCr3 >= 2 ** this.maxPhyAddr) {
      throw new RangeError(`NptStage: nCR3 ${nCr3} is not a physical address below 2^${this.maxPhyAddr}`);
    }
    this.root = nCr3 - (nCr3 % 4096);
    this.memo?.version.fill(-1); // another root: nothing walked before holds
  }

  translate(gpa: number, access: number, kind: number, flags: number, out: WalkResult): number {
    // ACC_* bits of the nested access: the final access as a user access; a guest page-table access a user
    // write (a PDPTE load a user read).
    const acc = kind === NESTED_FINAL ? (access & 0x12) | 0x4 : kind === NESTED_PDPTE ? 0x4 : 0x6;
    const fetchId = (acc & 0x10) !== 0 && this.nxe ? 0x10 : 0; // I/D (§4.7 of the SDM, with the host's NXE)
    const sideEffects = (flags & 1) /* WALK_SIDE_EFFECTS */ !== 0;
    const write = (acc & 0x2) !== 0;
    const memo = this.memo;
    if (memo !== null) {
      // The same page walked before, the tables unchanged since: the same entries, rights and flags (see
      // StageMemo). A successful walk had U=1 throughout (rights R); a write needs W, a fetch X. Taken only when
      // the walk would set no flag.
      const i = memo.find(gpa);
      if (i >= 0) {
        const info = memo.info[i]!;
        const need = write ? 2 : (acc & 0x10) !== 0 ? 4 : 1;
        const dirty = (info & MEMO_DIRTY) !== 0;
        if ((info & need) !== 0 && (!sideEffects || ((info & MEMO_ALL_ACCESSED) !== 0 && (!write || dirty)))) {
          out.refs += info >>> 8;
          out.nestedRights = info & 7;
          out.nestedDirty = dirty || (sideEffects && write);
          return memo.hpa[i]! + (gpa & 0xfff);
        }
      }
    }
    const mem = this.mem;
    const lo = gpa | 0; // bits 31:0 (ToInt32 is the value mod 2^32)
    const hi = Math.floor(gpa / 4294967296) | 0;
    if (this.levels === 4 && hi >>> 16 !== 0) return this.refuse(out, gpa, kind, acc, (acc & 0x6) | fetchId); // beyond a 4-level table: not present
    const m = this.maxPhyAddr - 32;
    const rsvdHi = ((0xfffff >>> m) << m) | (this.nxe ? 0 : 0x80000000);
    let table = this.root;
    let level: number = this.levels;
    let elo: number;
    let ehi: number;
    let both = -1;
    let xd = 0;
    let offsetMask = 0xfff;
    for (;;) {
      const index = tableIndex(level, lo, hi);
      const epa = table + index * 8;
      elo = mem.read32(epa);
      ehi = mem.read32(epa + 4);
      out.refs++;
      if ((elo & 0x1) /* P */ === 0) return this.refuse(out, gpa, kind, acc, (acc & 0x6) | fetchId);
      let leaf = level === 1;
      let rsvdLo = 0;
      if ((elo & PS) !== 0) {
        if (level >= 4) rsvdLo = PS;
        else if (level >= 2) {
          leaf = true;
          offsetMask = level === 3 ? 0x3fffffff : 0x1fffff;
          rsvdLo = level === 3 ? 0x3fffe000 : 0x001fe000;
        }
      }
      if ((elo & rsvdLo) !== 0 || (ehi & rsvdHi) !== 0) return this.refuse(out, gpa, kind, acc, 0x9 /* P | RSV */ | (acc & 0x6) | fetchId);
      both &= elo;
      xd |= ehi;
      this.usedPa[level] = epa;
      this.usedLo[level] = elo;
      if (leaf) break;
      table = ((elo & 0xfffff000) >>> 0) + (ehi & 0xfffff) * 4294967296;
      level--;
    }
    const user = (both & 0x4) !== 0;
    const writable = user && (both & 0x2) !== 0;
    const executable = user && (!this.nxe || (xd & 0x80000000) === 0);
    if (!user || (write && !writable) || ((acc & 0x10) !== 0 && !executable)) return this.refuse(out, gpa, kind, acc, 0x1 /* P */ | (acc & 0x6) | fetchId);
    if (sideEffects && ((both & ACCESSED) === 0 || (write && (elo & DIRTY) === 0))) {
      for (let l = this.levels; l >= level; l--) {
        const set = l === level && write ? ACCESSED | DIRTY : ACCESSED;
        if ((this.usedLo[l]! & set) !== set) {
          const epa = this.usedPa[l]!;
          mem.write32(epa, (mem.read32(epa) | set) >>> 0);
        }
      }
    }
    const rights = 1 /* R */ | (writable ? 2 /* W */ : 0) | (executable ? 4 /* X */ : 0);
    const dirty = (elo & DIRTY) !== 0 || (sideEffects && write);
    out.nestedRights = rights;
    out.nestedDirty = dirty;
    const hpa = ((elo & ~offsetMask & 0xfffff000) >>> 0) + (ehi & 0xfffff) * 4294967296 + (gpa & offsetMask);
    if (memo !== null) {
      // As the entries are now: with side effects every accessed flag is set, and the leaf's dirty flag for a write.
      const accessed = sideEffects || (both & ACCESSED) !== 0;
      memo.fillWalk(this.usedPa, this.levels, level, gpa, hpa, rights | (accessed ? MEMO_ALL_ACCESSED : 0) | (dirty ? MEMO_DIRTY : 0));
    }
    return hpa;
  }

  /** Records a nested page fault with the #PF-style error code `code` (EXITINFO1[31:0]). */
  private refuse(out: WalkResult, gpa: number, kind: number, acc: number, code: number): number {
    out.nestedGpa = gpa;
    out.nestedFinal = kind === NESTED_FINAL;
    out.nestedPdpteLoad = kind === NESTED_PDPTE;
    out.nestedAccess = acc;
    out.nestedRights = 0;
    out.nestedMisconfig = false;
    out.nestedPmlFull = false;
    out.nestedCode = code;
    return -1;
  }
}
