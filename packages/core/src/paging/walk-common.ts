import { PT_ACCESSED, PT_DIRTY } from '../arch/constants.js';
import type { PhysicalMemory } from '../memory/physical.js';
import type { PagingContext, WalkResult } from './types.js';

/*
 * What the page walkers share (walker.ts, nested-walker.ts): the fault results, the rights check, the
 * table-address helpers and the A/D update (SDM Vol. 3A ch. 4; walker.ts explains the layout rules:
 * module-local constants in hot code, no allocation).
 */

/** Bits 8:5 and 2:1 of a PAE PDPTE are reserved (SDM Vol. 3A §4.4.1, Table 4-8). */
export const PDPTE_RSVD_LO = 0x1e6;
/*
 * Reserved bits of large leaves (literals in the walkers):
 * - bits 20:13 of a 2 MiB leaf, 0x001fe000 (address bits below the page's alignment; §4.4.2 Table 4-9,
 *   §4.5.4 Table 4-17);
 * - bits 29:13 of a 1 GiB leaf, 0x3fffe000 (§4.5.4, Table 4-15);
 * - PS (bit 7, 0x80) in a PML4E and a PML5E (§4.5.4).
 * The canonical ranges of 4-level and 5-level linear addresses (§4.5, Vol. 1 §3.3.7.1): -2^47 <= va < 2^47
 * (140737488355328) and -2^56 <= va < 2^56 (72057594037927936).
 */

/** The I/D error-code bit for `access` in `ctx` (§4.7: set for an instruction fetch only if CR4.SMEP = 1, or CR4.PAE = 1 and IA32_EFER.NXE = 1). */
export function idBit(ctx: PagingContext, access: number): number {
  const legacy32 = ctx.mode === 0; /* MODE_LEGACY32 */
  return (access & 0x10) /* ACC_FETCH */ !== 0 && (ctx.cr4Smep === true || (ctx.eferNxe === true && !legacy32)) ? 0x10 /* PFERR_FETCH */ : 0;
}

export function pageFault(out: WalkResult, errorCode: number): number {
  out.errorCode = errorCode;
  out.status = 1; // WALK_PAGE_FAULT
  return 1;
}

/** §4.7: a not-present entry: P=0, with W/R and U/S from the access, and I/D where the rule allows. */
export function notPresent(ctx: PagingContext, out: WalkResult, access: number, level: number): number {
  out.leafLevel = level;
  return pageFault(out, (access & 0x6) /* W/R | U/S */ | idBit(ctx, access));
}

/** §4.7: a reserved bit in a present entry: P=1 and RSVD=1 (RSVD only ever comes with P). */
export function reservedFault(ctx: PagingContext, out: WalkResult, access: number, level: number): number {
  out.leafLevel = level;
  return pageFault(out, 0x9 /* P | RSVD */ | (access & 0x6) /* W/R | U/S */ | idBit(ctx, access));
}

export function nestedFault(out: WalkResult): number {
  out.status = 3; // WALK_NESTED_FAULT
  return 3;
}

export function generalProtection(out: WalkResult): number {
  out.status = 2; // WALK_GP
  return 2;
}

/**
 * The error-code bits of a rights violation for an access of kind `access` (ACC_* bits) to a translation
 * whose accumulated rights are in `out` (`writable`, `user`, `executable`, `pkey`, as a successful walk left
 * them), under the control bits of `ctx`; 0 when the access is allowed. SDM Vol. 3A §4.6 (rights), §4.6.2
 * (protection keys), §4.7 (error code). Depends only on its arguments, so the vCPU can precompute the TLB's
 * permission bits with it.
 *
 * - A user access (CPL 3) needs U/S=1 on every level, R/W=1 on every level for a write (CR0.WP does not
 *   matter), and XD=0 on every level for a fetch (§4.6.1).
 * - A supervisor fetch faults on XD (with NXE) and, with CR4.SMEP, on a user-mode address.
 * - An explicit supervisor data access to a user-mode address faults with CR4.SMAP unless EFLAGS.AC=1; a
 *   supervisor write to a read-only translation faults only with CR0.WP=1 (§4.6.1).
 * - Protection keys (IA-32e paging with CR4.PKE, user-mode addresses, data accesses only; the key of the
 *   leaf): PKRU.ADk forbids any data access; PKRU.WDk forbids a write that is a user access or runs with
 *   CR0.WP=1 (§4.6.2). When the key forbids the access, PK is set even if other rights also fail (§4.7:
 *   the PK flag depends only on those conditions; KVM `permission_fault` does the same).
 */
export function rightsFault(ctx: PagingContext, out: WalkResult, access: number): number {
  return permissionFault(ctx, access, (out.writable === true ? 0x2 : 0) | (out.user === true ? 0x4 : 0) | (out.executable === true ? 0 : 0x80000000), out.pkey);
}

/**
 * `rightsFault` on rights given as entry bits: `rights & 0x2` is R/W=1 on every level, `rights & 0x4` is
 * U/S=1 on every level, `rights & 0x80000000` is XD=1 on some level (the high-half bit, where it is only
 * ever set with NXE: without NXE it is a reserved bit, §4.5.4); `pkey` is the leaf's protection key.
 */
export function permissionFault(ctx: PagingContext, access: number, rights: number, pkey: number): number {
  const write = (access & 0x2) /* ACC_WRITE */ !== 0;
  const userAccess = (access & 0x4) /* ACC_USER */ !== 0;
  const fetch = (access & 0x10) /* ACC_FETCH */ !== 0;
  const userPage = (rights & 0x4) /* U/S */ !== 0;
  const writable = (rights & 0x2) /* R/W */ !== 0;
  const executable = (rights & 0x80000000) /* XD */ === 0;
  let fault: boolean;
  if (userAccess) {
    fault = !userPage || (write && !writable) || (fetch && !executable);
  } else if (fetch) {
    fault = !executable || (ctx.cr4Smep === true && userPage);
  } else {
    fault = (ctx.cr4Smap === true && userPage && ctx.eflagsAc !== true) || (write && !writable && ctx.cr0Wp === true);
  }
  let pk = 0;
  if (ctx.cr4Pke === true && userPage && !fetch && (ctx.mode === 2 /* MODE_LONG4 */ || ctx.mode === 3) /* MODE_LONG5 */) {
    const keyRights = (ctx.pkru >>> (pkey * 2)) & 3; // PKRU.ADk = bit 2k (1), PKRU.WDk = bit 2k+1 (2), §4.6.2
    if ((keyRights & 1) !== 0 || ((keyRights & 2) !== 0 && write && (userAccess || ctx.cr0Wp === true))) pk = 0x20; // PFERR_PK
  }
  if (!fault && pk === 0) return 0;
  return 0x1 /* P */ | (access & 0x6) /* W/R | U/S */ | pk | idBit(ctx, access);
}

/** The physical address of the table an entry (lo, hi) points to: bits 51:12 (the bits from M up are reserved, and were checked clear). */
export function tableAt(elo: number, ehi: number): number {
  return ((elo & 0xfffff000) >>> 0) + (ehi & 0xfffff) * 4294967296;
}

/** The top table of 4-/5-level paging: CR3 bits M-1:12, with `m` = M - 32 (§4.5.2). */
export function longRoot(cr3: number, m: number): number {
  return (((cr3 >>> 0) & 0xfffff000) >>> 0) + longRootHi(cr3, m) * 4294967296;
}

/** Bits 63:32 of `longRoot(cr3, m)`, an int (the walker passes a table address as two int halves). */
export function longRootHi(cr3: number, m: number): number {
  return cr3 < 4294967296 ? 0 : Math.floor(cr3 / 4294967296) & ((1 << m) - 1);
}

/**
 * Sets A in every entry walked from `fromLevel` down to `out.leafLevel`, and D in the leaf for a write
 * (§4.8). Each update is a read-modify-write of the entry's low half that only sets bits, so that entries
 * seen twice in one walk (a recursive mapping) keep every bit set.
 */
export function setAccessedDirty(mem: PhysicalMemory, out: WalkResult, fromLevel: number, write: boolean): void {
  const leafLevel = out.leafLevel;
  for (let l = fromLevel; l >= leafLevel; l--) {
    const want = l === leafLevel && write ? PT_ACCESSED | PT_DIRTY : PT_ACCESSED;
    const seen = out.entryLo[l]!;
    if ((seen & want) !== want) {
      const epa = out.entryPa[l]!;
      // An entry in read-only memory keeps its flags: the processor's locked update of it (§4.8) goes to memory
      // that ignores stores. KVM's software walk skips it likewise (paging_tmpl.h
      // FNAME(update_accessed_dirty_bits): a gpte whose memslot is not writable, `pte_writable`).
      if (mem.isReadonly !== undefined && mem.isReadonly(epa)) continue;
      const now = (mem.read32(epa) | want) >>> 0;
      mem.write32(epa, now);
      out.entryLo[l] = now;
    }
  }
}

/**
 * The 9-bit index into the table of `level` (1: PT ... 5: PML5) of an address given as its uint32 halves
 * (lo: bits 31:0, hi: bits 63:32): bits 20:12, 29:21, 38:30, 47:39 and 56:48 (SDM Vol. 3A §4.5; the
 * same split for EPT, Vol. 3C §29.3.2, and for AMD's nested tables).
 */
export function tableIndex(level: number, lo: number, hi: number): number {
  switch (level) {
    case 1:
      return (lo >>> 12) & 0x1ff;
    case 2:
      return (lo >>> 21) & 0x1ff;
    case 3:
      return ((lo >>> 30) | (hi << 2)) & 0x1ff;
    case 4:
      return (hi >>> 7) & 0x1ff;
    default:
      return (hi >>> 16) & 0x1ff;
  }
}
