import { type Backend, type DirtyLog, type GuestMemory, type HostPages, type MmuHost } from '@vmexit/core';
import { MmuRwLock, SptePoolMemory, SpteHalves, type PageCache, type SpteFormat, type SptePool } from '@vmexit/core/mmu';
import type { TdpPage } from './page.js';

/** Host page sizes that may back guest RAM (`--host-pages`): the largest TDP leaf the MMU may build (core's type). */
export type { HostPages };

/** The TDP leaf level a host page size allows: 1 (4 KiB), 2 (2 MiB) or 3 (1 GiB). */
export function hostPageLevel(p: HostPages): number {
  return p === '1g' ? 3 : p === '2m' ? 2 : 1;
}

/** Counter names of the leaf sptes per level (KVM `kvm_update_page_stats`: pages_4k, pages_2m, pages_1g). */
export const PAGES_STAT = ['', 'pages_4k', 'pages_2m', 'pages_1g'] as const;

/**
 * The state of the TDP MMU (KVM `struct kvm_arch` as tdp_mmu.c uses it): the page cache (pool, pages by
 * frame, active pages: core's `PageCache`), the one root, the spte format of the backend's second stage,
 * the memslot generation of MMIO sptes, and what a zap left to do (flush, free). The mechanisms are
 * functions over it (map.ts, zap.ts, audit.ts).
 */
export class TdpMmuState implements PageCache<TdpPage> {
  // PageCache<TdpPage>
  pool!: SptePool;
  maxPages = 0;
  usedPages = 0;
  pages: (TdpPage | null)[] = [];
  active = new Set<TdpPage>();
  hash: TdpPage[][] = [];
  freeFrames: number[] = [];
  nextFrame = 0;

  /** The most frames the pool may grow to (its host-physical window). */
  maxPoolFrames = 0;
  host!: MmuHost;
  backend!: Backend;
  memory!: GuestMemory;
  /** What the second stage walks: the pool's frames at POOL_BASE, guest RAM below. */
  poolMemory!: SptePoolMemory;
  format!: SpteFormat;
  /** The root's level: 4, or 5 (see TdpMmu.init). */
  rootLevel = 4;
  root!: TdpPage;
  /** The largest leaf level the host backing allows (`hostPages`). */
  maxLeafLevel = 1;
  /** MMIO spte value of the format, or null when MMIO caching is off (NPT with a host MAXPHYADDR of 52). */
  mmioValue: { lo: number; hi: number } | null = null;
  /** The memslot generation (KVM `kvm_memslots(kvm)->generation`), stamped into MMIO sptes. */
  generation = 0;
  /** Leaf sptes per level 1..3 (the gauges pages_4k / pages_2m / pages_1g count the same). */
  readonly leaves = [0, 0, 0, 0];
  /** MMIO sptes installed. */
  mmioSptes = 0;
  /** A zapped or changed spte still in the TLBs: flush before the operation ends (KVM `flush` of tdp_mmu_zap_leafs). */
  pendingFlush = false;
  /** Pages unlinked by a zap, freed after the flush (KVM frees them after an RCU grace period). */
  readonly zapped: TdpPage[] = [];
  /** The vCPU whose operation this is (counters go to it; 0 outside a vCPU's exit). */
  initiator = 0;
  readonly scratch = new SpteHalves();
  /** Frames whose sptes the MMU changed since the audit last ran (the audit re-reads only those). */
  readonly changedFrames = new Set<number>();
  /** KVM's `mmu_lock`, a reader-writer lock for the TDP MMU: faults take it for read, zaps and the dirty-log ioctls for write. */
  readonly mmuLock = new MmuRwLock();
  /** The VM's dirty log once attached (`attachDirtyLog`), or null. */
  dirtyLog: DirtyLog | null = null;
  /**
   * The CPU logs dirty pages itself (PML on VMX, KVM `kvm_x86_ops.cpu_dirty_log_size`): dirty logging clears
   * the D flags of 4 KiB leaves instead of write-protecting them (dirty-log.ts).
   */
  cpuDirtyLog = false;

  /** Writes spte `loc` (and notes its frame for the audit). */
  setSpte(loc: number, lo: number, hi: number): void {
    this.pool.set(loc, lo, hi);
    this.changedFrames.add(Math.floor(loc / 512));
  }

  /** The page that holds spte location `loc`. */
  pageOfLoc(loc: number): TdpPage {
    return this.pages[Math.floor(loc / 512)]!;
  }
}
