import type { MmuPage } from './page.js';
import { POOL_BASE, SptePool, SPTES_PER_PAGE } from './pool.js';

/** KVM_MMU_HASH_SHIFT = 12: 4096 hash buckets keyed by gfn (arch/x86/include/asm/kvm_host.h). */
export const KVM_MMU_HASH_SHIFT = 12;

/**
 * The pages of one MMU, looked up by (gfn, role) (KVM `struct kvm_arch`: `mmu_page_hash`,
 * `active_mmu_pages`, `n_used_mmu_pages`, `n_max_mmu_pages`; arch/x86/kvm/mmu/mmu.c). Plain data: the
 * functions below are the mechanisms, and an MMU's own state embeds these fields (mmu-shadow's state
 * object is a `PageCache<ShadowPage>`), so that the hot path reads them directly.
 */
export interface PageCache<P extends MmuPage> {
  /** The host frames the pages live in. */
  pool: SptePool;
  /** n_max_mmu_pages. */
  maxPages: number;
  /** Pages in use, invalid roots included (KVM `n_used_mmu_pages`). */
  usedPages: number;
  /** Pages by pool frame (sptep -> page, KVM `sptep_to_sp`). */
  pages: (P | null)[];
  /** KVM `active_mmu_pages`: insertion order is age, so iteration starts at the oldest (the reclaim end). */
  readonly active: Set<P>;
  /** KVM `mmu_page_hash`: 4096 buckets by gfn. */
  readonly hash: P[][];
  /** The frames freed and not used again (a LIFO stack); frames from `nextFrame` up were never used. */
  readonly freeFrames: number[];
  /** The lowest frame never handed out: a new frame comes from `freeFrames` first, then from here up. */
  nextFrame: number;
}

/**
 * The fields of an empty cache of `maxPages` pages (every frame free), its pool's frame 0 at `poolBase`. Nothing is made per frame of the
 * budget: frames are handed out lowest first and their host memory is made as they are (SptePool.ensure).
 */
export function createPageCache<P extends MmuPage>(maxPages: number, poolBase: number = POOL_BASE): PageCache<P> {
  return {
    pool: new SptePool(maxPages, poolBase),
    maxPages,
    usedPages: 0,
    pages: [],
    active: new Set<P>(),
    hash: Array.from({ length: 1 << KVM_MMU_HASH_SHIFT }, () => []),
    freeFrames: [],
    nextFrame: 0,
  };
}

/** The hash bucket of `gfn` (KVM `kvm_page_table_hashfn`; a multiplicative hash over both halves of the gfn). */
export function pageHashOf(gfn: number): number {
  const lo = gfn >>> 0;
  const hi = lo === gfn ? 0 : Math.floor(gfn / 4294967296); // no division for a gfn below 2^32
  return (Math.imul(lo ^ Math.imul(hi, 0x85ebca6b), 0x9e3779b1) >>> (32 - KVM_MMU_HASH_SHIFT)) & ((1 << KVM_MMU_HASH_SHIFT) - 1);
}

/** The hash bucket that holds the pages of `gfn`. */
export function pageBucket<P extends MmuPage>(c: PageCache<P>, gfn: number): P[] {
  return c.hash[pageHashOf(gfn)]!;
}

/** The page for (gfn, role), or null (KVM `kvm_mmu_find_shadow_page`, without creating one). */
export function findPage<P extends MmuPage>(c: PageCache<P>, gfn: number, role: number): P | null {
  for (const sp of pageBucket(c, gfn)) if (sp.gfn === gfn && sp.role === role) return sp;
  return null;
}

/** Free pages (KVM `kvm_mmu_available_pages`). */
export function availablePages<P extends MmuPage>(c: PageCache<P>): number {
  return c.maxPages - c.usedPages;
}

/**
 * Takes a free frame for a new page made by `make` and enters it in the cache (KVM `kvm_mmu_alloc_shadow_page`:
 * the frame, `sptep_to_sp`, the hash bucket, `active_mmu_pages`, `n_used_mmu_pages`); null when no frame is
 * free within the budget (the caller reserved pages, so that is its error to report). The frame's sptes are
 * left for the caller to initialise.
 */
export function allocPage<P extends MmuPage>(c: PageCache<P>, gfn: number, role: number, make: (frame: number, gfn: number, role: number) => P): P | null {
  if (c.usedPages >= c.maxPages) return null;
  let frame = c.freeFrames.pop();
  if (frame === undefined) {
    if (c.nextFrame >= c.pool.capacity) return null;
    frame = c.nextFrame++;
    c.pool.ensure(frame);
    c.pages.push(null);
  }
  const sp = make(frame, gfn, role);
  c.pages[frame] = sp;
  c.usedPages++;
  pageBucket(c, gfn).push(sp);
  c.active.add(sp);
  return sp;
}

/** Takes a zapped page out of the hash and the active list (part of KVM `__kvm_mmu_prepare_zap_page`); it still uses its frame. */
export function unhashPage<P extends MmuPage>(c: PageCache<P>, sp: P): void {
  const bucket = pageBucket(c, sp.gfn);
  bucket.splice(bucket.indexOf(sp), 1);
  c.active.delete(sp);
}

/** Frees the frame of a zapped page, after the TLB flush (part of KVM `kvm_mmu_commit_zap_page`). */
export function freePage<P extends MmuPage>(c: PageCache<P>, sp: P): void {
  c.pool.clearFrame(sp.frame);
  c.pages[sp.frame] = null;
  c.freeFrames.push(sp.frame);
  c.usedPages--;
}

/**
 * Makes room for a budget of `n` pages (KVM_SET_NR_MMU_PAGES above the pool's size): more frames, every spte
 * kept. The new frames are handed out after every free frame below them, lowest first.
 */
export function growPageCache<P extends MmuPage>(c: PageCache<P>, n: number): void {
  c.pool.grow(n);
}

/** The page that holds spte location `loc`. */
export function pageOfLoc<P extends MmuPage>(c: PageCache<P>, loc: number): P {
  return c.pages[loc >>> 0 === loc ? loc >>> 9 : Math.floor(loc / SPTES_PER_PAGE)]!; // loc / 512, by a shift below 2^32
}
