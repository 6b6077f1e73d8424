/**
 * Architectural constants, named as the Intel SDM Vol. 3A and KVM name them.
 * Every value here is a plain number: the hot path never sees a BigInt.
 */

/** Page-fault error code bits, SDM Vol. 3A §4.7 (Figure 4-12); KVM `PFERR_*_MASK`. */
export const PFERR_PRESENT = 1 << 0; // P: 0 = not-present page, 1 = protection violation
/** W/R: the access was a write. */
export const PFERR_WRITE = 1 << 1;
/** U/S: a user-mode access (CPL = 3) */
export const PFERR_USER = 1 << 2;
/** RSVD: a reserved bit was set in some paging-structure entry. */
export const PFERR_RSVD = 1 << 3;
/** I/D: an instruction fetch. */
export const PFERR_FETCH = 1 << 4;
/** PK: a protection-key violation. */
export const PFERR_PK = 1 << 5;
/** SS: a shadow-stack access (KVM PFERR_SHSTK_MASK); never set by this walker. */
export const PFERR_SS = 1 << 6;
/** SGX: a violation of SGX access-control requirements (KVM PFERR_SGX_MASK); never set here. */
export const PFERR_SGX = 1 << 15;
/**
 * Every error-code bit the SDM defines (§4.7, Figure 4-12): P, W/R, U/S, RSVD, I/D, PK, SS, SGX. The others
 * are reserved (0); VMX's PFEC_MASK/MATCH and SVM's intercept still see whatever 32-bit value they get.
 */
export const PFERR_DEFINED = PFERR_PRESENT | PFERR_WRITE | PFERR_USER | PFERR_RSVD | PFERR_FETCH | PFERR_PK | PFERR_SS | PFERR_SGX;

/**
 * The kind of an access, in the error code's own bit positions (as KVM's `access` argument):
 * a read is 0, a write PFERR_WRITE, a fetch PFERR_FETCH, each OR-ed with PFERR_USER when CPL = 3.
 */
export const ACC_READ = 0;
/** A write access: the walker's `access` argument and the error code's W/R bit (bit 1). */
export const ACC_WRITE = PFERR_WRITE;
/** An instruction fetch: the error code's I/D bit (bit 4), checked against XD only when EFER.NXE or SMEP applies (SDM Vol. 3A §4.6). */
export const ACC_FETCH = PFERR_FETCH;
/** OR-ed into an access made at CPL 3: the error code's U/S bit (bit 2). */
export const ACC_USER = PFERR_USER;
/** Mask of the access bits that a caller may pass to the walker. */
export const ACC_MASK = PFERR_WRITE | PFERR_USER | PFERR_FETCH;

/** Paging-structure entry bits, SDM Vol. 3A §4.3-4.5 (Tables 4-4..4-20). Low 32 bits of an entry. */
export const PT_PRESENT = 1 << 0;
/** R/W, bit 1: writes allowed through this entry (for supervisor accesses only if CR0.WP=0 when clear; SDM Vol. 3A §4.6.1). */
export const PT_WRITABLE = 1 << 1;
/** U/S, bit 2: user-mode (CPL 3) accesses allowed through this entry. */
export const PT_USER = 1 << 2;
/** PWT, bit 3: page-level write-through (memory type; not modelled beyond the bit). */
export const PT_PWT = 1 << 3;
/** PCD, bit 4: page-level cache disable (memory type; not modelled beyond the bit). */
export const PT_PCD = 1 << 4;
/** A, bit 5: set by the processor in every entry a successful walk uses (SDM Vol. 3A §4.8). */
export const PT_ACCESSED = 1 << 5;
/** D, bit 6 of a leaf: set by the processor on a successful write through it (SDM Vol. 3A §4.8). */
export const PT_DIRTY = 1 << 6;
/** PS in a PDE/PDPTE; PAT in a 4 KiB PTE. */
export const PT_PAGE_SIZE = 1 << 7;
/** G, bit 8 of a leaf: the translation survives a CR3 load when CR4.PGE=1 (SDM Vol. 3A §4.10.2.4). */
export const PT_GLOBAL = 1 << 8;
/** PAT bit of a 2 MiB / 4 MiB / 1 GiB leaf. */
export const PT_PAT_LARGE = 1 << 12;
/** XD (execute-disable), bit 63 of a 64-bit entry = bit 31 of its high half. */
export const PT_HI_XD = 1 << 31;
/** Protection key, bits 62:59 of a 64-bit leaf entry = bits 30:27 of the high half. */
export const PT_HI_PKEY_SHIFT = 27;

/** CR0 bits, SDM Vol. 3A §2.5. */
export const CR0_PE = 1 << 0;
/** CR0.WP, bit 16: supervisor writes obey R/W (SDM Vol. 3A §2.5, §4.6.1). */
export const CR0_WP = 1 << 16;
/** CR0.PG, bit 31: paging on (SDM Vol. 3A §2.5). */
export const CR0_PG = 1 << 31;

/** CR4 bits, SDM Vol. 3A §2.5. */
export const CR4_PSE = 1 << 4;
/** CR4.PAE, bit 5: 64-bit entries (PAE, or IA-32e with EFER.LME; SDM Vol. 3A §4.1.1). */
export const CR4_PAE = 1 << 5;
/** CR4.PGE, bit 7: global pages (SDM Vol. 3A §4.10.2.4). */
export const CR4_PGE = 1 << 7;
/** CR4.LA57, bit 12: 5-level paging in IA-32e mode (SDM Vol. 3A §4.5). */
export const CR4_LA57 = 1 << 12;
/** CR4.PCIDE, bit 17: process-context identifiers tag TLB entries (SDM Vol. 3A §4.10.1). */
export const CR4_PCIDE = 1 << 17;
/** CR4.SMEP, bit 20: supervisor fetches from user pages fault (SDM Vol. 3A §4.6.1). */
export const CR4_SMEP = 1 << 20;
/** CR4.SMAP, bit 21: supervisor data accesses to user pages fault unless EFLAGS.AC=1 (SDM Vol. 3A §4.6.1). */
export const CR4_SMAP = 1 << 21;
/** CR4.PKE, bit 22: protection keys for user pages (SDM Vol. 3A §4.6.2). */
export const CR4_PKE = 1 << 22;

/** IA32_EFER bits, SDM Vol. 3A §2.2.1. */
export const EFER_LME = 1 << 8;
/** IA32_EFER.LMA, bit 10: IA-32e mode active (set by the processor when paging is enabled with LME=1). */
export const EFER_LMA = 1 << 10;
/** IA32_EFER.NXE, bit 11: the XD bit of 64-bit entries is honoured (else reserved; SDM Vol. 3A §4.6.1). */
export const EFER_NXE = 1 << 11;

/** RFLAGS.AC, SDM Vol. 1 §3.4.3. */
export const RFLAGS_AC = 1 << 18;

/** Exception vectors, SDM Vol. 3A §6.3.1 (Table 6-1). */
export const DE_VECTOR = 0;
/** #UD, invalid opcode: vector 6. */
export const UD_VECTOR = 6;
/** #DF, double fault: vector 8 (SDM Vol. 3A §6.15, "Interrupt 8"). */
export const DF_VECTOR = 8;
/** #GP, general protection: vector 13 (a non-canonical address, a bad PDPTE at a PAE CR3 load). */
export const GP_VECTOR = 13;
/** #PF, page fault: vector 14 (SDM Vol. 3A §4.7). */
export const PF_VECTOR = 14;

/** log2 of the 4 KiB page size: a linear or physical address shifted right by it is a page (frame) number. */
export const PAGE_SHIFT = 12;
/** Bytes in a 4 KiB page, the smallest translation. */
export const PAGE_SIZE = 4096;
/** The offset bits of an address within its 4 KiB page. */
export const PAGE_MASK = 0xfff;

/**
 * The 4 KiB page (frame) number of an integer address: `Math.floor(a / PAGE_SIZE)` for any integer `a` with
 * |a| < 2^53 (a signed-canonical linear address or a physical one; a fraction is not an address, and gives
 * another value), computed as `(a - (a & 0xfff)) / 4096`: `& 0xfff` takes
 * the low 12 bits of the two's complement (exact below 2^53), and the division of a multiple of 4096 by a
 * power of two is exact. Hot paths use it: V8 (Node 20) computes `Math.floor(a / PAGE_SIZE)` with a lookup of
 * Math.floor, of the imported PAGE_SIZE and a true division, where this is a few integer and float operations.
 * From 0 to 2^32 - 1 it is `a >>> 12` (-0 gives 0 there, no address being -0): V8 then keeps the page number an
 * integer, as do the fields and maps it goes to, where the division would leave a double in them (a guest page
 * number kept by the shadow MMU was a heap number).
 */
export function pageNumber(a: number): number {
  return a >= 0 && a < 4294967296 ? a >>> 12 : (a - (a & 0xfff)) / 4096;
}
/** Bytes in a 2 MiB page (a PDE leaf in PAE and IA-32e paging). */
export const SIZE_2M = 2 * 1024 * 1024;
/** Bytes in a 4 MiB page (a PDE leaf in 32-bit paging with CR4.PSE). */
export const SIZE_4M = 4 * 1024 * 1024;
/** Bytes in a 1 GiB page (a PDPTE leaf in IA-32e paging). */
export const SIZE_1G = 1024 * 1024 * 1024;

/** 2^32 as a double, for joining the halves of a 64-bit value that fits in 53 bits. */
export const TWO_POW_32 = 4294967296;
