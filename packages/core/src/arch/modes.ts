/**
 * Paging modes, SDM Vol. 3A §4.1.1 (Table 4-1). Numeric constants so the hot path compares integers;
 * the names are for configs, output and errors.
 */
export const MODE_LEGACY32 = 0; // 32-bit paging: CR0.PG=1, CR4.PAE=0
/** PAE paging: CR0.PG=1, CR4.PAE=1, IA32_EFER.LME=0. */
export const MODE_PAE = 1;
/** 4-level paging: CR0.PG=1, CR4.PAE=1, IA32_EFER.LME=1, CR4.LA57=0. */
export const MODE_LONG4 = 2;
/** 5-level paging: as 4-level with CR4.LA57=1. */
export const MODE_LONG5 = 3;

/** A paging mode as the hot path holds it: MODE_LEGACY32, MODE_PAE, MODE_LONG4 or MODE_LONG5. */
export type PagingModeId = 0 | 1 | 2 | 3;
/** A paging mode as configs, flags and output name it (`--mode`). */
export type PagingModeName = 'legacy32' | 'pae' | 'long4' | 'long5';

/** The paging-mode names, indexed by PagingModeId. */
export const PAGING_MODE_NAMES: readonly PagingModeName[] = ['legacy32', 'pae', 'long4', 'long5'];

/** The id of a paging-mode name; throws a RangeError naming the expected values for an unknown one. */
export function pagingModeId(name: PagingModeName): PagingModeId {
  const i = PAGING_MODE_NAMES.indexOf(name);
  if (i < 0) throw new RangeError(`unknown paging mode '${String(name)}' (expected one of ${PAGING_MODE_NAMES.join(', ')})`);
  return i as PagingModeId;
}

/** The name of a paging-mode id. */
export function pagingModeName(id: PagingModeId): PagingModeName {
  return PAGING_MODE_NAMES[id]!;
}

/** Number of paging-structure levels walked from CR3 (PAE: the PDPTE registers are level 3, not walked). */
export function pagingLevels(id: PagingModeId): number {
  return id === MODE_LEGACY32 ? 2 : id === MODE_PAE ? 3 : id === MODE_LONG4 ? 4 : 5;
}

/** Size of one paging-structure entry in bytes. */
export function entrySize(id: PagingModeId): 4 | 8 {
  return id === MODE_LEGACY32 ? 4 : 8;
}
