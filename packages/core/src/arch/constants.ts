/**
 * Architectural constants, named as the Intel SDM Vol. 3A and KVM name them.
 * Every value here is a plain number: the hot path never sees a BigInt.
 */

/** Page-fault error code bits, SDM Vol. 3A §4.7 (Figure 4-12); KVM `PFERR_*_MASK`. */
export const PFERR_PRESENT = 1 << 0; // P: 0 = not-present page, 1 = protection violation
export const PFERR_WRITE = 1 << 1; // W/R: the access was a write
export const PFERR_USER = 1 << 2; // U/S: a user-mode access (CPL = 3)
export const PFERR_RSVD = 1 << 3; // RSVD: a reserved bit was set in some paging-structure entry
export const PFERR_FETCH = 1 << 4; // I/D: an instruction fetch
export const PFERR_PK = 1 << 5; // PK: a protection-key violation
export const PFERR_SS = 1 << 6; // SS: a shadow-stack access (KVM PFERR_SHSTK_MASK); never set by this walker
export const PFERR_SGX = 1 << 15; // SGX: a violation of SGX access-control requirements (KVM PFERR_SGX_MASK); never set here
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
export const ACC_WRITE = PFERR_WRITE;
export const ACC_FETCH = PFERR_FETCH;
export const ACC_USER = PFERR_USER;
/** Mask of the access bits that a caller may pass to the walker. */
export const ACC_MASK = PFERR_WRITE | PFERR_USER | PFERR_FETCH;

/** Paging-structure entry bits, SDM Vol. 3A §4.3-4.5 (Tables 4-4..4-20). Low 32 bits of an entry. */
export const PT_PRESENT = 1 << 0;
export const PT_WRITABLE = 1 << 1;
export const PT_USER = 1 << 2;
export const PT_PWT = 1 << 3;
export const PT_PCD = 1 << 4;
export const PT_ACCESSED = 1 << 5;
export const PT_DIRTY = 1 << 6;
export const PT_PAGE_SIZE = 1 << 7; // PS in a PDE/PDPTE; PAT in a 4 KiB PTE
export const PT_GLOBAL = 1 << 8;
export const PT_PAT_LARGE = 1 << 12; // PAT bit of a 2 MiB / 4 MiB / 1 GiB leaf
/** XD (execute-disable), bit 63 of a 64-bit entry = bit 31 of its high half. */
export const PT_HI_XD = 1 << 31;
/** Protection key, bits 62:59 of a 64-bit leaf entry = bits 30:27 of the high half. */
export const PT_HI_PKEY_SHIFT = 27;

/** CR0 bits, SDM Vol. 3A §2.5. */
export const CR0_PE = 1 << 0;
export const CR0_WP = 1 << 16;
export const CR0_PG = 1 << 31;

/** CR4 bits, SDM Vol. 3A §2.5. */
export const CR4_PSE = 1 << 4;
export const CR4_PAE = 1 << 5;
export const CR4_PGE = 1 << 7;
export const CR4_LA57 = 1 << 12;
export const CR4_PCIDE = 1 << 17;
export const CR4_SMEP = 1 << 20;
export const CR4_SMAP = 1 << 21;
export const CR4_PKE = 1 << 22;

/** IA32_EFER bits, SDM Vol. 3A §2.2.1. */
export const EFER_LME = 1 << 8;
export const EFER_LMA = 1 << 10;
export const EFER_NXE = 1 << 11;

/** RFLAGS.AC, SDM Vol. 1 §3.4.3. */
export const RFLAGS_AC = 1 << 18;

/** Exception vectors, SDM Vol. 3A §6.3.1 (Table 6-1). */
export const DE_VECTOR = 0;
export const UD_VECTOR = 6;
export const DF_VECTOR = 8;
export const GP_VECTOR = 13;
export const PF_VECTOR = 14;

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const PAGE_MASK = 0xfff;
export const SIZE_2M = 2 * 1024 * 1024;
export const SIZE_4M = 4 * 1024 * 1024;
export const SIZE_1G = 1024 * 1024 * 1024;

/** 2^32 as a double, for joining the halves of a 64-bit value that fits in 53 bits. */
export const TWO_POW_32 = 4294967296;
