/**
 * `@vmexit/core/mmu`: the mechanisms an MMU implementation builds on (the shadow MMU, and a TDP MMU): the spte
 * layout and the one leaf constructor (KVM's `spte.c`), the host frame pool, the page role
 * (`kvm_mmu_page_role`), rmaps, the (gfn, role)-keyed page cache (KVM's `mmu.c`), and the emulation of the
 * access that trapped on a write-protected page (KVM's `x86_emulate_instruction` path). They are core's so
 * that MMUs share them without importing each other (leaf packages import only core, never one another). An extension API for MMU
 * authors: it follows KVM's shape and may change with it more often than `@vmexit/core`.
 *
 * @module
 */
export {
  EPT_SPTE_A,
  EPT_SPTE_D,
  EPT_SPTE_R,
  EPT_SPTE_W,
  EPT_SPTE_X,
  makeLeafSpte,
  makeNonLeafSpte,
  SPTE_A,
  SPTE_D,
  SPTE_FORMAT_EPT,
  SPTE_FORMAT_NPT,
  SPTE_FORMAT_SHADOW,
  SPTE_HI_ADDR_MASK,
  SPTE_HI_NX,
  SPTE_HI_PKEY_MASK,
  SPTE_HOST_WRITABLE,
  SPTE_LARGE,
  SPTE_LO_ADDR_MASK,
  SPTE_MMU_PRESENT,
  SPTE_MMU_WRITABLE,
  SPTE_NONLEAF_BITS,
  SPTE_P,
  SPTE_PERM_LO,
  SPTE_U,
  SPTE_W,
  type SpteFormat,
  SpteHalves,
  spteNeedsFlush,
  sptePa,
} from './spte.js';
export { POOL_BASE, SptePool, SptePoolMemory, SPTES_PER_PAGE } from './pool.js';
export {
  ACC_ALL,
  ACC_EXEC_MASK,
  ACC_USER_MASK,
  ACC_WRITE_MASK,
  childRole,
  describeRole,
  ROLE_4BYTE_GPTE,
  ROLE_ACCESS_MASK,
  ROLE_ACCESS_SHIFT,
  ROLE_BASE_MASK,
  ROLE_CR0_WP,
  ROLE_DIRECT,
  ROLE_EFER_NX,
  ROLE_INVALID,
  ROLE_LEVEL_MASK,
  ROLE_QUADRANT_MASK,
  ROLE_QUADRANT_SHIFT,
  ROLE_SMAP_ANDNOT_WP,
  ROLE_SMEP_ANDNOT_WP,
  roleAccess,
  roleDirect,
  type RoleInputs,
  roleLevel,
  roleQuadrant,
  rootRole,
  rootRoleOf,
} from './role.js';
export { GFNS_PER_ENTRY, RMAP_LEVELS, Rmaps, spanStart, SpteList } from './rmap.js';
export { MmuPage } from './page.js';
export {
  allocPage,
  createPageCache,
  findPage,
  freePage,
  growPageCache,
  KVM_MMU_HASH_SHIFT,
  pageBucket,
  type PageCache,
  pageOfLoc,
  unhashPage,
} from './page-cache.js';
export { createEmulationOutcome, emulatePendingAccess, EMULATION_FAILED, type EmulationOutcome } from '../machine/emulate.js';
export { GetDirtyLogOp, HOST_THREAD } from './dirty-log.js';
export { ResetDirtyRingsOp, type ResetDirtyRingsMutation } from './dirty-ring.js';
export {
  FAST_FIXED,
  FAST_MORE,
  FAST_PF_MAX_RETRY,
  FAST_PH_BEGIN,
  FAST_PH_CMPXCHG,
  FAST_PH_END,
  FAST_PH_IDLE,
  FAST_PH_MARK,
  FAST_PH_READ,
  FAST_SLOW,
  FAST_SPURIOUS,
  type FastFaultMutation,
  isWriteAllowed,
  LocklessFastFault,
  pageFaultCanBeFast,
  spteCmpxchg,
} from './fast-fault.js';
export { LockTimeline, MmuLock, MmuRwLock } from '../race/lock.js';
/**
 * The TLB entry's rights (a scenario that installs a translation by hand, as the race scenarios do after a
 * walk): supervisor read and write.
 */
export { TLB_READ_SUP, TLB_WRITE_SUP } from '../tlb/tlb.js';
