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

/**
 * The seam for two-dimensional paging: translates each guest-physical address the walker touches (paging
 * structures, and the final address) to a host-physical address. Filled by mmu-tdp.
 */
export interface SecondStage {
  /**
   * Translates `gpa` for an access of kind `access` (PFERR_* bits); `final` is false for a guest
   * paging-structure access (SDM Vol. 3C §29.3.3.2 / APM §15.25.6). Returns the host-physical address, or -1
   * after recording the nested fault in `out.nested*` fields.
   */
  translate(gpa: number, access: number, final: boolean, out: WalkResult): number;
}

/** Outcome of a walk. */
export const WALK_OK = 0;
export const WALK_PAGE_FAULT = 1; // #PF: errorCode is the SDM §4.7 error code
export const WALK_GP = 2; // #GP: non-canonical address (§3.3.7.1), or PAE PDPTE load failure
export const WALK_NESTED_FAULT = 3; // the second stage failed (EPT violation/misconfig, NPF)

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
  /** Second-stage fault details (WALK_NESTED_FAULT): the guest-physical address and whether it was final. */
  nestedGpa = 0;
  nestedFinal = false;
  nestedCode = 0;
}

/** Options of one walk. */
export const WALK_SIDE_EFFECTS = 1; // set A/D bits (a real access). Without it the walk only inspects.
