import { SptePool, SPTES_PER_PAGE } from './pool.js';
import { SpteList } from './rmap.js';
import { roleDirect, roleLevel } from './role.js';

/**
 * One MMU page (the part of KVM's `struct kvm_mmu_page`, arch/x86/kvm/mmu/mmu_internal.h, that every MMU
 * has): a host frame of 512 sptes, the gfn it stands for (the guest table it shadows, or the first gfn of
 * the range it maps directly), its role, the parent sptes that point at it, and how many vCPU roots use it.
 * An MMU adds its own fields in a subclass (mmu-shadow's `ShadowPage`: unsync, write-flood count).
 *
 * KVM keeps `gfns[512]` (the gfn behind each leaf spte). Here host-physical addresses of guest RAM equal
 * guest-physical ones, so a leaf spte's address already is its gfn and no array is needed.
 */
export class MmuPage {
  readonly frame: number;
  readonly hpa: number;
  /** Low and high halves of `hpa`, for linking (`link_shadow_page`). */
  readonly hpaLo: number;
  readonly hpaHi: number;
  /** The first spte location of this page (`frame * 512`). */
  readonly base: number;
  readonly gfn: number;
  /** The page's role (role.ts). Only ROLE_INVALID is ever set after construction. */
  role: number;
  /** The role's level and direct bit, fixed at construction (plain fields: read on every exit's hot path). */
  readonly level: number;
  readonly direct: boolean;
  /** The non-leaf sptes that point here (KVM `parent_ptes`). Roots are pointed at by vCPU root slots instead. */
  readonly parentPtes = new SpteList();
  /** vCPU root slots (CR3 roots, PAE roots, cached previous roots) using this page (KVM `root_count`). */
  rootCount = 0;
  /** Set once the page was zapped (it is being freed, or it is an invalid root waiting for its last user). */
  zapped = false;

  /** `hpa` is the frame's host-physical address (default: in a pool at POOL_BASE, `SptePool.frameHpa`). */
  constructor(frame: number, gfn: number, role: number, hpa: number = SptePool.frameHpa(frame)) {
    this.frame = frame;
    this.hpa = hpa;
    this.hpaLo = (this.hpa % 4294967296) >>> 0;
    this.hpaHi = Math.floor(this.hpa / 4294967296);
    this.base = frame * SPTES_PER_PAGE;
    this.gfn = gfn;
    this.role = role;
    this.level = roleLevel(role);
    this.direct = roleDirect(role);
  }
}
