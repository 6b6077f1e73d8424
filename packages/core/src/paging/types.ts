import type { PagingModeId } from '../arch/modes.js';

/**
 * Everything one page walk depends on (SDM Vol. 3A §4.1-4.6): the mode, the root, and the control bits
 * that decide rights. A vCPU keeps one of these for its guest state; a shadow MMU builds one for the shadow
 * tables it makes the hardware walk. Mutable on purpose: it is updated in place on CR writes.
 *
 * Linear addresses are numbers in signed-canonical form: an upper-half address such as
 * 0xffff_8880_0000_0000 is the negative number -0x7780_0000_0000 (`Number(BigInt.asIntN(64, va))`). Every
 * 4-level canonical address is exact; in 5-level mode addresses of magnitude up to 2^53 are exact.
 * 32-bit modes take 0 <= va < 2^32.
 */
export interface PagingContext {
  mode: PagingModeId;
  /** CR3: physical address of the top table (legacy32, long4, long5); for PAE, where the PDPTEs came from. */
  cr3: number;
  /** PAE only: the four PDPTE registers loaded at CR3 load (§4.4.1), as low/high halves. */
  readonly pdpteLo: Uint32Array; // length 4
  readonly pdpteHi: Uint32Array; // length 4
  /** CPUID.80000008H:EAX[7:0], 36..52. */
  maxPhyAddr: number;
  cr0Wp: boolean;
  cr4Pse: boolean;
  cr4Pge: boolean;
  cr4Smep: boolean;
  cr4Smap: boolean;
  cr4Pke: boolean;
  eferNxe: boolean;
  /** RFLAGS.AC, which lifts SMAP for explicit supervisor data accesses (§4.6.1). */
  eflagsAc: boolean;
  /** PKRU, protection-key rights for user pages (§4.6.2). */
  pkru: number;
  /** The second dimension (EPT/NPT) every guest-physical address goes through, or null (one dimension). */
  nested: SecondStage | null;
}

/** What a second-stage translation is for (the `kind` argument of `SecondStage.translate`). */
export const NESTED_FINAL = 0; // the final guest-physical address of the linear access
export const NESTED_TABLE = 1; // a guest paging-structure entry read during the walk
export const NESTED_PDPTE = 2; // a load of the PAE PDPTE registers (MOV to CR3 / CR0 / CR4)

/**
 * The second dimension of two-dimensional paging (EPT on VMX, NPT on SVM): translates each guest-physical
 * address the processor uses (the guest's paging-structure entries, and the final address) to a
 * host-physical address by walking second-stage tables that are real bytes in host memory. Implemented in
 * core by `EptStage` (SDM Vol. 3C ch. 29) and `NptStage` (AMD APM Vol. 2 §15.25); a backend makes one from
 * its control state (`Backend.createSecondStage`) and the TDP MMU builds the tables it walks.
 */
export interface SecondStage {
  /**
   * The processor's MAXPHYADDR (the host's): the guest's paging structures are walked by the processor, so
   * their reserved address bits are bits 51:this, whatever MAXPHYADDR CPUID reports to the guest.
   */
  readonly maxPhyAddr: number;
  /**
   * Translates `gpa` for an access of kind `access` (ACC_* bits; only read for NESTED_FINAL: for a guest
   * paging-structure access the stage applies its own rule) made for `kind` (NESTED_FINAL, NESTED_TABLE or
   * NESTED_PDPTE). With `flags & WALK_SIDE_EFFECTS` it sets the second stage's accessed/dirty flags where it
   * has them. Adds the entries it read to `out.refs`. On success returns the host-physical address and leaves
   * the rights of the translation in `out.nestedRights` (NESTED_R | NESTED_W | NESTED_X) and whether a write
   * may complete without setting a dirty flag in `out.nestedDirty`. On a refusal returns -1 after filling
   * `out.nestedGpa`, `nestedFinal`, `nestedCode`, `nestedRights`, `nestedAccess` and `nestedMisconfig`.
   */
  translate(gpa: number, access: number, kind: number, flags: number, out: WalkResult): number;
}

/** `WalkResult.nestedRights` bits: the second stage allows reads, writes, instruction fetches. */
export const NESTED_R = 1;
export const NESTED_W = 2;
export const NESTED_X = 4;

/** Outcome of a walk. */
export const WALK_OK = 0;
/** #PF: errorCode is the SDM §4.7 error code. */
export const WALK_PAGE_FAULT = 1;
/** #GP: non-canonical address (§3.3.7.1), or PAE PDPTE load failure. */
export const WALK_GP = 2;
/** The second stage failed (EPT violation/misconfig, NPF) */
export const WALK_NESTED_FAULT = 3;

/**
 * The result of one walk, reused across walks so the hot path allocates nothing. Per-level arrays are
 * indexed by level: 1 = PT, 2 = PD, 3 = PDPT (PAE: the PDPTE register), 4 = PML4, 5 = PML5.
 */
export class WalkResult {
  status = WALK_OK;
  /** The #PF error code (valid when status is WALK_PAGE_FAULT). */
  errorCode = 0;
  /** The final physical address (valid when status is WALK_OK). */
  pa = 0;
  /** The size of the page that maps the address: 4096, 2 MiB, 4 MiB or 1 GiB. */
  pageSize = 4096;
  /** The level of the leaf entry (1 for a 4 KiB page). */
  leafLevel = 1;
  /** The top level walked (2 for legacy32, 3 for PAE, 4 or 5). */
  topLevel = 0;
  /** Rights of the translation, ANDed over the levels (§4.6): */
  writable = false; // R/W=1 on every level
  user = false; // U/S=1 on every level
  executable = false; // XD=0 on every level (or NXE=0)
  /** Leaf attributes: */
  global = false;
  dirty = false; // the leaf's D bit after the walk
  pkey = 0;
  /** The paging-structure entries used, per level: physical address, and value as low/high halves. */
  readonly entryPa = new Float64Array(6);
  readonly entryLo = new Uint32Array(6);
  readonly entryHi = new Uint32Array(6);
  /**
   * Memory references a two-dimensional walk made (guest paging-structure entries plus second-stage
   * entries; 24 for a 4 KiB page with 4-level guest and 4-level second-stage tables). One-dimensional walks
   * leave it alone: their count is (top level - level where the walk ended + 1), see `Vcpu.walkRefs`.
   */
  refs = 0;
  /** Two-dimensional walks: the guest-physical address of each guest paging-structure entry used, per level. */
  readonly entryGpa = new Float64Array(6);
  /**
   * Second-stage details. After a successful two-dimensional walk: the rights the second stage grants to the
   * final address (`nestedRights`, NESTED_* bits) and whether a write may complete from the TLB (the dirty
   * flag of the second-stage leaf is set, or the stage has none: `nestedDirty`). After WALK_NESTED_FAULT:
   * the guest-physical address refused, whether it was the final address (else a guest paging-structure
   * access), the error code in #PF format (P = the refusing entry was present, W, U, RSVD = a reserved bit or
   * an EPT misconfiguration, I/D; APM §15.25.6 EXITINFO1[31:0]), the NESTED_* rights of the entries used
   * (SDM Table 28-7 bits 5:3: the AND of bits 2:0 of the EPT entries, 0 when one was not present), the
   * ACC_* kind of the access as the second stage saw it, and whether it was an EPT misconfiguration.
   */
  nestedGpa = 0;
  nestedFinal = false;
  nestedCode = 0;
  nestedRights = 0;
  nestedDirty = false;
  nestedAccess = 0;
  nestedMisconfig = false;
  /**
   * The refused address was read to load the PAE PDPTE registers (MOV to CR0/CR3/CR4 under two-dimensional
   * paging, SDM Vol. 3C §29.3.3.2): no linear address is being translated (Table 28-7 bit 7 is clear).
   */
  nestedPdpteLoad = false;
  /**
   * The walk stopped at a PML-full event (SDM Vol. 3C §29.3.6): it had to set an EPT dirty flag and log the
   * address, and the PML index was out of range. A VM exit (reason 62), not a violation; nothing was set.
   */
  nestedPmlFull = false;
}

/** Options of one walk. */
export const WALK_SIDE_EFFECTS = 1; // set A/D bits (a real access). Without it the walk only inspects.
