import { pageNumber, type Memslot, type PhysicalMemory } from '@vmexit/core';
import { SPTE_W } from '@vmexit/core/mmu';
import { remoteFlush } from './page-cache.js';
import type { ShadowMmuState } from './state.js';

/**
 * Dirty logging on the shadow MMU (KVM arch/x86/kvm/mmu/mmu.c): the write protection of a logged slot's
 * leaf sptes, which keeps MMU-writable (bit 10) so that the fast page fault (fast-fault.ts) may set W again
 * without `mmu_lock`. Marking pages dirty happens where a writable leaf is installed (page-cache.ts
 * `installLeaf`, as KVM's `make_spte` calls `mark_page_dirty_in_slot`), in the fast path, and for every
 * emulated store (mmu.ts `trackWrite`, as `emulator_write_phys` writes through `kvm_vcpu_write_guest`).
 */

/**
 * KVM `spte_write_protect(sptep, pt_protect = false)` over the rmap of `gfn`: clear W in each leaf that maps
 * it, keep MMU-writable. Returns whether an spte lost W.
 */
function writeProtectForLog(s: ShadowMmuState, gfn: number): boolean {
  const head = s.rmaps.head(gfn, 1, false);
  if (head === null) return false;
  const pool = s.pool;
  let flush = false;
  for (const loc of head.toArray()) {
    const lo = pool.lo(loc);
    if ((lo & SPTE_W) === 0) continue;
    pool.set(loc, (lo & ~SPTE_W) >>> 0, pool.hi(loc));
    flush = true;
  }
  return flush;
}

/** KVM `kvm_mmu_slot_remove_write_access(kvm, slot, PG_LEVEL_4K)`: every page of the slot (shadow leaves are 4 KiB). */
export function slotRemoveWriteAccess(s: ShadowMmuState, slot: Memslot): boolean {
  let flush = false;
  for (let i = 0; i < slot.pages; i++) if (writeProtectForLog(s, slot.baseGfn + i)) flush = true;
  return flush;
}

/** KVM `kvm_mmu_write_protect_pt_masked`: the pages `slot.baseGfn + offset + i` for each bit i of `mask`. */
export function writeProtectMasked(s: ShadowMmuState, slot: Memslot, offset: number, mask: number): boolean {
  let flush = false;
  let m = mask >>> 0;
  while (m !== 0) {
    const b = 31 - Math.clz32(m & -m);
    if (writeProtectForLog(s, slot.baseGfn + offset + b)) flush = true;
    m = (m & (m - 1)) >>> 0;
  }
  return flush;
}

/** KVM `kvm_flush_remote_tlbs_memslot`: all vCPUs' TLBs (the shadow MMU flushes them all). */
export function flushForLog(s: ShadowMmuState, initiator: number): void {
  const prev = s.initiator;
  // The host's ioctls count their flushes on vCPU 0 (the counters are per vCPU).
  s.initiator = initiator < 0 ? 0 : initiator;
  remoteFlush(s);
  s.initiator = prev;
}

/** KVM `kvm_vcpu_mark_page_dirty` of the page at `gpa`, on behalf of vCPU `vcpu` (default: the vCPU whose exit the MMU is handling). */
export function markGpaDirty(s: ShadowMmuState, gpa: number, vcpu = s.initiator): void {
  if (s.dirtyLog !== null) s.dirtyLog.markPageDirty(pageNumber(gpa), vcpu);
}

/**
 * Guest memory as the shadow MMU's guest walk writes it while a slot logs: the accessed and dirty bits that
 * the walk sets in guest ptes mark the page table's page dirty (KVM paging_tmpl.h
 * `FNAME(update_accessed_dirty_bits)`: `kvm_vcpu_mark_page_dirty(vcpu, table_gfn)`).
 */
export class DirtyMarkingMemory implements PhysicalMemory {
  constructor(
    private readonly s: ShadowMmuState,
    private readonly inner: PhysicalMemory,
  ) {}

  read32(pa: number): number {
    return this.inner.read32(pa);
  }

  write32(pa: number, value: number): void {
    this.inner.write32(pa, value);
    markGpaDirty(this.s, pa);
  }

  isReadonly(pa: number): boolean {
    return this.inner.isReadonly !== undefined && this.inner.isReadonly(pa);
  }
}
