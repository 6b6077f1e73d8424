import { PAGE_SIZE } from '../arch/constants.js';
import { hexU64 } from '../arch/hex.js';
import type { GuestMemory, Memslot } from '../machine/guest-memory.js';
import { PML_ENTRIES } from '../paging/pml.js';
import type { MmuLock } from '../race/lock.js';
import { DirtyRing, DirtyRingError, KVM_DIRTY_RING_RSVD_ENTRIES, ResetDirtyRingsOp } from './dirty-ring.js';

/**
 * Dirty logging, the VM's (virt/kvm/kvm_main.c; Documentation/virt/kvm/api.rst, KVM_SET_USER_MEMORY_REGION
 * with KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2):
 * a bitmap per logged memslot, one bit per page, set by `markPageDirty` (KVM `mark_page_dirty_in_slot`) for
 * every page that becomes writable to the guest and every page the hypervisor writes. Each MMU write-protects
 * and re-protects its own sptes through the `DirtyLogMmu` capability. The bitmap words are 32 bits here
 * (KVM's are `unsigned long`, 64 bits: KVM_CLEAR_DIRTY_LOG's `first_page` must be a multiple of 64, and so it is here).
 */

/** The host's thread id for `mmu_lock` (vCPUs are 0..n-1): the thread that runs the dirty-log ioctls. */
export const HOST_THREAD = -2;

/** What an MMU does for dirty logging. The shadow MMU and the TDP MMU implement it (the `DirtyLogMmu` capability). */
export interface DirtyLogMmu {
  /** Binds the VM's dirty log: the MMU marks the pages it makes writable, and calls `log.attach(this)`. */
  attachDirtyLog(log: DirtyLog): void;
  /** The MMU's `mmu_lock`: the dirty-log ioctls write-protect under it. */
  readonly mmuLock: MmuLock;
  /**
   * KVM `kvm_mmu_slot_remove_write_access` (PG_LEVEL_4K): clear W in every leaf spte that maps a page of
   * `slot`, keeping MMU-writable so that the fast page fault may restore W. Returns whether an spte lost W
   * (the caller flushes the TLBs).
   */
  slotRemoveWriteAccess(slot: Memslot): boolean;
  /**
   * KVM `kvm_arch_mmu_enable_log_dirty_pt_masked` (`kvm_mmu_write_protect_pt_masked`): write-protect, as
   * above, the pages `slot.baseGfn + offset + i` for every bit i set in the 32-bit `mask`. Returns whether an spte lost W.
   */
  writeProtectMasked(slot: Memslot, offset: number, mask: number): boolean;
  /** KVM `kvm_flush_remote_tlbs_memslot`: every vCPU's TLB, on behalf of `initiator` (a vCPU id or HOST_THREAD). */
  flushRemoteTlbs(initiator: number): void;
  /**
   * KVM `kvm_mmu_recover_huge_pages`, when KVM_MEM_LOG_DIRTY_PAGES is cleared on `slot` (which no longer logs):
   * the page tables that logging left where the host backing allows a huge leaf become huge leaves again, under
   * the MMU's own locking, with the flush it needs. Absent where the MMU never maps huge leaves (the shadow MMU).
   */
  recoverHugePages?(slot: Memslot): void;
  /**
   * Whether the processor logs dirty pages itself (PML: KVM `kvm_x86_ops.cpu_dirty_log_size`): then the MMU
   * clears dirty flags where it would write-protect, and `syncDirtyLog` empties the processor's logs.
   */
  readonly cpuDirtyLog?: boolean;
  /**
   * KVM `kvm_arch_sync_dirty_log`: before a harvest, every vCPU is kicked out of the guest, and each exit empties
   * its PML log into the dirty log (`vmx_flush_pml_buffer`). Absent (or a no-op) without PML.
   */
  syncDirtyLog?(): void;
}

/** How one memslot's dirty log is kept (`DirtyLog.enable`): KVM's capabilities for it. */
export interface DirtyLogSlotOptions {
  /**
   * KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: `getDirtyLog` returns the bitmap without clearing it or re-protecting;
   * `clearDirtyLog` does both for the pages the caller names.
   */
  readonly manualProtect?: boolean;
  /** KVM_DIRTY_LOG_INITIALLY_SET (with manualProtect): the bitmap starts all set and nothing is write-protected yet. */
  readonly initiallySet?: boolean;
}

class SlotLog {
  readonly bitmap: Uint32Array;
  constructor(
    readonly slot: Memslot,
    readonly manualProtect: boolean,
  ) {
    this.bitmap = new Uint32Array(Math.ceil(slot.pages / 32));
  }
}

/** A misuse of the dirty log (a slot that does not log, a range outside the slot): the request names the slot. */
export class DirtyLogError extends Error {
  readonly code = 'E_DIRTY_LOG';
}

/** The dirty logs of a VM's memslots (KVM `memslot->dirty_bitmap`) and the ioctls over them. */
export class DirtyLog {
  private readonly logs: (SlotLog | undefined)[] = [];
  private mmu: DirtyLogMmu | null = null;
  /** How many slots log (the hot check: 0 = `markPageDirty` returns at once, and the fast page fault is off). */
  loggingSlots = 0;
  /** Pages marked (a bit that went from 0 to 1). */
  marked = 0;
  /** The vCPUs' dirty rings (KVM_CAP_DIRTY_LOG_RING, `enableRing`), or null: marks go to the bitmap. */
  rings: DirtyRing[] | null = null;
  /**
   * User space's handler of KVM_EXIT_DIRTY_RING_FULL for vCPU `vcpu` (`enterGuest`): it harvests the rings
   * (`DirtyRing.collect`) and calls `resetDirtyRings`, as QEMU's `kvm_dirty_ring_reap` does.
   */
  onRingFull: ((vcpu: number) => void) | null = null;

  constructor(readonly memory: GuestMemory) {}

  /** The MMU that write-protects for the log (bound once, when the VM is built). */
  attach(mmu: DirtyLogMmu): void {
    this.mmu = mmu;
  }

  private slotById(slotId: number): Memslot {
    const s = this.memory.slots.find((m) => m.id === slotId);
    if (s === undefined) throw new DirtyLogError(`memslot ${slotId} does not exist (the VM has ${this.memory.slots.map((m) => m.id).join(', ')})`);
    return s;
  }

  private requireMmu(): DirtyLogMmu {
    if (this.mmu === null) throw new DirtyLogError('dirty logging needs an MMU that implements DirtyLogMmu; none is attached');
    return this.mmu;
  }

  private logOf(slotId: number, what: string): SlotLog {
    const l = this.logs[slotId];
    if (l === undefined) throw new DirtyLogError(`${what}: memslot ${slotId} does not log dirty pages (set KVM_MEM_LOG_DIRTY_PAGES first)`);
    return l;
  }

  /**
   * Sets KVM_MEM_LOG_DIRTY_PAGES on `slotId` (KVM `kvm_mmu_slot_apply_flags`): a fresh bitmap, and every
   * writable spte of the slot write-protected and the TLBs flushed (always, even when no spte was writable),
   * except with manual protect and initially-set, where every bit starts set and the write protection (and
   * the flush) waits for `clearDirtyLog`, and on a read-only slot, where nothing is to protect.
   */
  enable(slotId: number, options: DirtyLogSlotOptions = {}): void {
    const slot = this.slotById(slotId);
    if (this.logs[slotId] !== undefined) throw new DirtyLogError(`memslot ${slotId} already logs dirty pages`);
    if (options.initiallySet === true && options.manualProtect !== true)
      throw new DirtyLogError('initiallySet (KVM_DIRTY_LOG_INITIALLY_SET) needs manualProtect');
    const mmu = this.requireMmu();
    const log = new SlotLog(slot, options.manualProtect === true);
    this.logs[slotId] = log;
    this.loggingSlots++;
    if (options.initiallySet === true) {
      log.bitmap.fill(0xffffffff);
      const tail = slot.pages % 32;
      if (tail !== 0) log.bitmap[log.bitmap.length - 1] = (2 ** tail - 1) >>> 0;
      return;
    }
    // KVM takes KVM_MEM_LOG_DIRTY_PAGES with KVM_MEM_READONLY (check_memory_region_flags), and
    // kvm_mmu_slot_apply_flags then does "Nothing more to do for RO slots (which can't be dirtied and can't be
    // made writable)": nothing protected, no flush (the slot is mapped at 4 KiB while it logs, PML on).
    if (slot.readonly) return;
    mmu.mmuLock.acquire(HOST_THREAD);
    mmu.slotRemoveWriteAccess(slot);
    mmu.mmuLock.release(HOST_THREAD);
    // kvm_mmu_slot_apply_flags: "Unconditionally flush the TLBs after enabling dirty logging" (whether or not an
    // spte lost W: the helpers do not track MMU-writable), once, after mmu_lock is dropped.
    mmu.flushRemoteTlbs(HOST_THREAD);
  }

  /**
   * Clears KVM_MEM_LOG_DIRTY_PAGES: the bitmap goes, then KVM `kvm_mmu_slot_apply_flags` ->
   * `kvm_mmu_recover_huge_pages` (v6.13; `kvm_mmu_zap_collapsible_sptes` before): the MMU maps huge again where the
   * host backing allows (`DirtyLogMmu.recoverHugePages`). Other 4 KiB sptes stay write-protected, MMU-writable
   * kept: a write makes them writable again.
   */
  disable(slotId: number): void {
    const slot = this.logOf(slotId, 'disable').slot;
    this.logs[slotId] = undefined;
    this.loggingSlots--;
    this.mmu?.recoverHugePages?.(slot);
  }

  /** Whether `slot` logs (KVM `kvm_slot_dirty_track_enabled`). */
  isLogging(slot: Memslot): boolean {
    return this.logs[slot.id] !== undefined;
  }

  /**
   * KVM_CAP_DIRTY_LOG_RING: a ring of `entries` per vCPU (ids 0..vcpus-1); `cpuDirtyLogSize` adds to the
   * reserved entries as KVM's `kvm_cpu_dirty_log_size()` (`kvm_dirty_ring_get_rsvd_entries`): by default PML's 512
   * entries when the attached MMU logs through PML (`cpuDirtyLog`; one PML flush may push that many past the soft
   * limit), else 0. KVM allows it only before any vCPU
   * is created; here, before any slot logs. The bitmaps stay, for the pages no vCPU dirties (the host's own
   * writes), as with KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP.
   */
  enableRing(vcpus: number, entries: number, cpuDirtyLogSize = this.cpuDirtyLog ? PML_ENTRIES : 0): void {
    if (this.rings !== null) throw new DirtyRingError('KVM_CAP_DIRTY_LOG_RING is already enabled (KVM allows it once)');
    if (this.loggingSlots > 0) throw new DirtyRingError('KVM_CAP_DIRTY_LOG_RING must be enabled before any memslot logs dirty pages');
    if (!Number.isInteger(vcpus) || vcpus < 1) throw new DirtyRingError(`dirty ring: ${vcpus} vCPUs (expected at least 1)`);
    const rings: DirtyRing[] = [];
    for (let i = 0; i < vcpus; i++) rings.push(new DirtyRing(i, entries, KVM_DIRTY_RING_RSVD_ENTRIES + cpuDirtyLogSize));
    this.rings = rings;
  }

  /**
   * Before vCPU `vcpu` enters the guest again (KVM `vcpu_enter_guest` -> `kvm_dirty_ring_check_request`): when
   * its ring is soft-full it exits with KVM_EXIT_DIRTY_RING_FULL, user space's `onRingFull` harvests and resets,
   * and the vCPU runs again. Returns whether it exited (the MMU counts `dirty_ring_full_exits`). A ring still
   * soft-full after the handler would exit at once again on every KVM_RUN: that is an error, not a hang.
   */
  enterGuest(vcpu: number): boolean {
    const ring = this.rings?.[vcpu];
    if (ring === undefined || !ring.checkRequest()) return false;
    if (this.onRingFull === null)
      throw new DirtyRingError(`vCPU ${vcpu}: KVM_EXIT_DIRTY_RING_FULL (${ring.used()} entries not reset) and no user space handler to harvest the ring`);
    this.onRingFull(vcpu);
    if (ring.checkRequest())
      throw new DirtyRingError(
        `vCPU ${vcpu}: the ring is still soft-full (${ring.used()} of ${ring.softLimit}) after user space handled KVM_EXIT_DIRTY_RING_FULL`,
      );
    return true;
  }

  /** User space's harvest of every vCPU's ring (`DirtyRing.collect`): visits (slot id, gfn) per harvested entry; returns their number. */
  collectRings(visit: (slotId: number, gfn: number) => void): number {
    if (this.rings === null) throw new DirtyRingError('collectRings: KVM_CAP_DIRTY_LOG_RING is not enabled');
    this.mmu?.syncDirtyLog?.();
    let n = 0;
    for (const r of this.rings) n += r.collect((slot, offset) => visit(slot, this.slotById(slot).baseGfn + offset));
    return n;
  }

  /** KVM_RESET_DIRTY_RINGS, run to completion (`ResetDirtyRingsOp`): returns the entries reset. */
  resetDirtyRings(): number {
    if (this.rings === null) throw new DirtyRingError('KVM_RESET_DIRTY_RINGS: KVM_CAP_DIRTY_LOG_RING is not enabled (-EINVAL)');
    const op = new ResetDirtyRingsOp(this, this.rings, HOST_THREAD);
    while (!op.done) if (op.runnable()) op.step();
    return op.cleared;
  }

  /**
   * KVM `mark_page_dirty_in_slot`: when `gfn`'s slot logs, pushes it to the ring of `vcpu` (the running vCPU,
   * `kvm_get_running_vcpu()`) when rings are on, else sets its bit; the host's writes (`vcpu` HOST_THREAD) go to
   * the bitmap, as KVM does with `dirty_ring_with_bitmap`.
   */
  markPageDirty(gfn: number, vcpu = HOST_THREAD): void {
    if (this.loggingSlots === 0) return;
    const slot = this.memory.slotForGfn(gfn);
    if (slot === null) return;
    const log = this.logs[slot.id];
    if (log === undefined) return;
    const rel = gfn - slot.baseGfn;
    if (vcpu >= 0 && this.rings !== null) {
      const ring = this.rings[vcpu];
      if (ring === undefined) throw new DirtyRingError(`vCPU ${vcpu} has no dirty ring (KVM_CAP_DIRTY_LOG_RING was enabled for ${this.rings.length} vCPUs)`);
      ring.push(slot.id, rel);
      return;
    }
    const w = rel >>> 5;
    const bit = 1 << (rel & 31);
    if ((log.bitmap[w]! & bit) === 0) {
      log.bitmap[w]! |= bit;
      this.marked++;
    }
  }

  /** Whether `gfn`'s bit is set or a ring entry not yet reset names it (false when its slot does not log). */
  isDirty(gfn: number): boolean {
    const slot = this.memory.slotForGfn(gfn);
    const log = slot === null ? undefined : this.logs[slot.id];
    if (slot === null || log === undefined) return false;
    const rel = gfn - slot.baseGfn;
    if (this.rings !== null && this.rings.some((r) => r.holds(slot.id, rel))) return true;
    return (log.bitmap[rel >>> 5]! & (1 << (rel & 31))) !== 0;
  }

  /** The number of bitmap words of a logged slot. */
  words(slotId: number): number {
    return this.logOf(slotId, 'words').bitmap.length;
  }

  /** The slot a logged slot id names. */
  slotOf(slotId: number): Memslot {
    return this.logOf(slotId, 'slotOf').slot;
  }

  /** Whether a logged slot is in manual-protect mode. */
  isManual(slotId: number): boolean {
    return this.logOf(slotId, 'isManual').manualProtect;
  }

  /** The `xchg(&dirty_bitmap[i], 0)` of KVM_GET_DIRTY_LOG: word `i`'s bits, now cleared. One atomic step. */
  exchangeWord(slotId: number, i: number): number {
    const b = this.logOf(slotId, 'exchangeWord').bitmap;
    const v = b[i]!;
    b[i] = 0;
    return v;
  }

  /** The `atomic_long_fetch_andnot(mask, p)` of KVM_CLEAR_DIRTY_LOG: clears `mask` in word `i`, returns the bits of `mask` that were set. */
  fetchAndNotWord(slotId: number, i: number, mask: number): number {
    const b = this.logOf(slotId, 'fetchAndNotWord').bitmap;
    const v = b[i]!;
    b[i] = v & ~mask;
    return (v & mask) >>> 0;
  }

  /** A plain read of word `i` (manual-protect KVM_GET_DIRTY_LOG copies the bitmap as it is). */
  peekWord(slotId: number, i: number): number {
    return this.logOf(slotId, 'peekWord').bitmap[i]!;
  }

  /**
   * KVM_GET_DIRTY_LOG (KVM `kvm_get_dirty_log_protect`), run to completion: the slot's bitmap (a copy). Without
   * manual protect, each nonzero word is exchanged with 0 and its pages write-protected again, all under
   * `mmu_lock`, and the TLBs are flushed after the lock is dropped when any bit was set ("Between [write
   * protection] and [the flush], the guest may write to the page using the remaining TLB entry. This is not a
   * problem because the page is reported dirty using the snapshot taken before", kvm_main.c). With manual
   * protect the bitmap is copied as it is.
   */
  getDirtyLog(slotId: number): Uint32Array {
    this.requireMmu().syncDirtyLog?.();
    const op = new GetDirtyLogOp(this, slotId, HOST_THREAD);
    while (!op.done) if (op.runnable()) op.step();
    return op.result;
  }

  /**
   * KVM_CLEAR_DIRTY_LOG (KVM `kvm_clear_dirty_log_protect`): for the pages [first, first + count) of the slot
   * whose bits are set in `bitmap` (bit j = page first + j), clear the dirty bit and write-protect the page
   * again, under `mmu_lock`; flush the TLBs when any was. Needs manual protect. `first` must be a multiple of
   * 64 and `count` one too unless the range ends at the slot's end, as KVM checks.
   */
  clearDirtyLog(slotId: number, first: number, count: number, bitmap: Uint32Array): void {
    const log = this.logOf(slotId, 'clearDirtyLog');
    if (!log.manualProtect) throw new DirtyLogError(`clearDirtyLog: memslot ${slotId} is not in manual-protect mode (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)`);
    const pages = log.slot.pages;
    if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 0 || first % 64 !== 0 || first + count > pages) {
      throw new DirtyLogError(
        `clearDirtyLog: first ${first} and count ${count} must be non-negative integers, first a multiple of 64, within the slot's ${pages} pages`,
      );
    }
    if (count % 64 !== 0 && first + count !== pages)
      throw new DirtyLogError(`clearDirtyLog: count ${count} must be a multiple of 64 unless the range ends at page ${pages}`);
    if (bitmap.length * 32 < count) throw new DirtyLogError(`clearDirtyLog: the bitmap has ${bitmap.length * 32} bits for ${count} pages`);
    const mmu = this.requireMmu();
    // kvm_clear_dirty_log_protect calls kvm_arch_sync_dirty_log before it clears: the pages the vCPUs' PML logs
    // hold reach the bitmap first, so that the clear clears (and re-protects) them too.
    mmu.syncDirtyLog?.();
    let flush = false;
    mmu.mmuLock.acquire(HOST_THREAD);
    for (let j = 0; j < count; j += 32) {
      const n = Math.min(32, count - j);
      let mask = bitmap[j >>> 5]!;
      if (n < 32) mask &= (2 ** n - 1) >>> 0;
      if (mask === 0) continue;
      const w = (first + j) >>> 5;
      mask = this.fetchAndNotWord(slotId, w, mask);
      if (mask === 0) continue;
      flush = true;
      mmu.writeProtectMasked(log.slot, w * 32, mask);
    }
    mmu.mmuLock.release(HOST_THREAD);
    if (flush) mmu.flushRemoteTlbs(HOST_THREAD);
  }

  /** Whether the attached MMU logs through the processor's log (PML): see `DirtyLogMmu.cpuDirtyLog`. */
  get cpuDirtyLog(): boolean {
    return this.mmu?.cpuDirtyLog === true;
  }

  /** The MMU the log is attached to (the race scenarios step its operations). */
  get attachedMmu(): DirtyLogMmu {
    return this.requireMmu();
  }

  /** The gfns whose bits are set in `bitmap` of `slotId` (for copies, reports and tests). */
  static gfns(slot: Memslot, bitmap: Uint32Array): number[] {
    const out: number[] = [];
    for (let w = 0; w < bitmap.length; w++) {
      let m = bitmap[w]!;
      while (m !== 0) {
        const b = 31 - Math.clz32(m & -m);
        out.push(slot.baseGfn + w * 32 + b);
        m &= m - 1;
      }
    }
    return out;
  }

  /** Bytes of one guest page, for a migration's copy. */
  static readonly PAGE_SIZE = PAGE_SIZE;
}

/**
 * KVM_GET_DIRTY_LOG as steps at its racing points, so that the race scheduler can interleave it with vCPUs:
 * take `mmu_lock`; per nonzero word, exchange it with 0 and write-protect its pages (one step each); release
 * the lock; flush the TLBs. `getDirtyLog` runs it to completion. `skipFlush` leaves the flush out (a broken
 * harvester for the explorer's tests: a vCPU's writable TLB entry then outlives the re-protection).
 */
export class GetDirtyLogOp {
  readonly result: Uint32Array;
  done = false;
  private phase = 0;
  private word = 0;
  private flush = false;
  private readonly mmu: DirtyLogMmu;
  private readonly manual: boolean;

  constructor(
    readonly log: DirtyLog,
    readonly slotId: number,
    readonly thread: number,
    readonly skipFlush = false,
  ) {
    this.result = new Uint32Array(log.words(slotId));
    this.mmu = log.attachedMmu;
    this.manual = log.isManual(slotId);
  }

  /** Whether the op can take its next step now (its first step needs `mmu_lock` unless the slot is in manual-protect mode). */
  runnable(): boolean {
    return this.phase !== 0 || this.manual || this.mmu.mmuLock.available(this.thread);
  }

  /** Takes one step of KVM_GET_DIRTY_LOG and says what it did (the explorer's log line). */
  step(): string {
    const n = this.result.length;
    switch (this.phase) {
      case 0:
        if (this.manual) {
          for (let i = 0; i < n; i++) this.result[i] = this.log.peekWord(this.slotId, i);
          this.done = true;
          return 'copy bitmap';
        }
        if (!this.mmu.mmuLock.tryAcquire(this.thread)) return 'spin on mmu_lock';
        this.phase = 1;
        return 'mmu_lock';
      case 1: {
        while (this.word < n && this.log.peekWord(this.slotId, this.word) === 0) this.word++;
        if (this.word >= n) {
          this.mmu.mmuLock.release(this.thread);
          this.phase = 2;
          return 'mmu_unlock';
        }
        const i = this.word++;
        const mask = this.log.exchangeWord(this.slotId, i);
        this.result[i] = mask;
        this.flush = true;
        this.mmu.writeProtectMasked(this.log.slotOf(this.slotId), i * 32, mask);
        return `xchg word ${i} = ${hexU64(mask)}, write-protect`;
      }
      default:
        this.done = true;
        if (this.flush && !this.skipFlush) {
          this.mmu.flushRemoteTlbs(this.thread);
          return 'flush remote TLBs';
        }
        return this.flush ? 'no flush (broken)' : 'nothing to flush';
    }
  }
}
