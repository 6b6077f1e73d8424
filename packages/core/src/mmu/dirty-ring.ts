import type { Memslot } from '../machine/guest-memory.js';
import type { MmuLock } from '../race/lock.js';

/** What KVM_RESET_DIRTY_RINGS needs of the MMU (a `DirtyLogMmu` has it): its lock, the masked write-protect, the remote flush. */
export interface RingResetMmu {
  readonly mmuLock: MmuLock;
  writeProtectMasked(slot: Memslot, offset: number, mask: number): boolean;
  flushRemoteTlbs(initiator: number): void;
}

/** What KVM_RESET_DIRTY_RINGS needs of the dirty log (a `DirtyLog` has it): the MMU attached to it and the memslots. */
export interface RingResetLog {
  readonly attachedMmu: RingResetMmu;
  readonly memory: { readonly slots: readonly Memslot[] };
}

/**
 * The per-vCPU dirty ring (KVM_CAP_DIRTY_LOG_RING: virt/kvm/dirty_ring.c, include/linux/kvm_dirty_ring.h,
 * Documentation/virt/kvm/api.rst "KVM_CAP_DIRTY_LOG_RING"). Each vCPU owns a ring of `struct kvm_dirty_gfn`
 * entries (flags, slot, offset); `mark_page_dirty_in_slot` on a vCPU pushes (slot, offset) to that vCPU's ring
 * instead of setting a bit. An entry goes through three states: DIRTY (published by KVM), RESET (harvested by
 * user space, which sets the flag after reading it), invalid (0, once KVM_RESET_DIRTY_RINGS has re-protected the
 * page). When the ring holds `softLimit` entries not yet reset, the vCPU leaves KVM_RUN with
 * KVM_EXIT_DIRTY_RING_FULL before it enters the guest again, so that user space harvests and resets it.
 */

/** KVM_DIRTY_GFN_F_DIRTY (include/uapi/linux/kvm.h): the entry holds a dirty gfn published by KVM. */
export const KVM_DIRTY_GFN_F_DIRTY = 1;
/** KVM_DIRTY_GFN_F_RESET: user space has harvested the entry; KVM_RESET_DIRTY_RINGS may re-protect its page. */
export const KVM_DIRTY_GFN_F_RESET = 2;
/** KVM_DIRTY_RING_RSVD_ENTRIES (kvm_host.h): entries kept free above the soft limit for what one exit may still push. */
export const KVM_DIRTY_RING_RSVD_ENTRIES = 64;
/** KVM_DIRTY_RING_MAX_ENTRIES (kvm_host.h): the largest ring. */
export const KVM_DIRTY_RING_MAX_ENTRIES = 65536;
/** sizeof(struct kvm_dirty_gfn): u32 flags, u32 slot, u64 offset. KVM_CAP_DIRTY_LOG_RING's argument is the ring's size in bytes. */
export const KVM_DIRTY_GFN_BYTES = 16;

/** A misuse of the dirty ring (bad size, a ring that overflows, an exit nobody harvests): the message names what is wrong. */
export class DirtyRingError extends Error {
  readonly code = 'E_DIRTY_RING';
}

/**
 * Checks a ring size as `kvm_vm_ioctl_enable_dirty_log_ring` does (in entries here, KVM takes bytes): a power of
 * two, at least the reserved entries and one 4 KiB page of entries (256), at most KVM_DIRTY_RING_MAX_ENTRIES.
 * `reserved` is `kvm_dirty_ring_get_rsvd_entries()`: KVM_DIRTY_RING_RSVD_ENTRIES plus `kvm_cpu_dirty_log_size()`.
 */
export function checkDirtyRingEntries(entries: number, reserved: number): void {
  const bytes = entries * KVM_DIRTY_GFN_BYTES;
  if (!Number.isInteger(entries) || entries <= 0 || (entries & (entries - 1)) !== 0)
    throw new DirtyRingError(`dirty ring: ${entries} entries is not a power of two (KVM_CAP_DIRTY_LOG_RING: -EINVAL)`);
  if (entries < reserved || bytes < 4096)
    throw new DirtyRingError(
      `dirty ring: ${entries} entries (${bytes} bytes) is smaller than the ${reserved} reserved entries or one 4 KiB page (256 entries) (KVM_CAP_DIRTY_LOG_RING: -EINVAL)`,
    );
  if (entries > KVM_DIRTY_RING_MAX_ENTRIES)
    throw new DirtyRingError(`dirty ring: ${entries} entries is more than KVM_DIRTY_RING_MAX_ENTRIES (${KVM_DIRTY_RING_MAX_ENTRIES}) (-E2BIG)`);
}

/**
 * One vCPU's ring (KVM `struct kvm_dirty_ring`): `dirtyIndex` and `resetIndex` run freely, the entry of an index
 * is `index & (size - 1)`. User space's side is `fetchIndex` and `collect` (the selftest's
 * `dirty_ring_collect_one`, QEMU's `kvm_dirty_ring_reap_one`).
 */
export class DirtyRing {
  /** The entries' flags: 0 (invalid), KVM_DIRTY_GFN_F_DIRTY, KVM_DIRTY_GFN_F_RESET. */
  readonly flags: Uint8Array;
  /** The entries' memslot ids (KVM: `as_id << 16 | id`; one address space here). */
  readonly slots: Uint32Array;
  /** The entries' page offsets in their memslot. */
  readonly offsets: Uint32Array;
  /** The entries `used()` may reach before the vCPU exits: size - reserved (KVM `soft_limit`). */
  readonly softLimit: number;
  /** The next entry KVM fills. */
  dirtyIndex = 0;
  /** The next entry KVM_RESET_DIRTY_RINGS looks at. */
  resetIndex = 0;
  /** User space's next entry to harvest. */
  fetchIndex = 0;
  /** KVM_REQ_DIRTY_RING_SOFT_FULL: made by the push that reached the soft limit, checked before the next guest entry. */
  softFullRequest = false;
  /** Entries pushed in all. */
  pushes = 0;

  constructor(
    /** The vCPU that owns the ring. */
    readonly index: number,
    /** Entries (a power of two, checked by `checkDirtyRingEntries`). */
    readonly size: number,
    reserved = KVM_DIRTY_RING_RSVD_ENTRIES,
  ) {
    checkDirtyRingEntries(size, reserved);
    this.flags = new Uint8Array(size);
    this.slots = new Uint32Array(size);
    this.offsets = new Uint32Array(size);
    this.softLimit = size - reserved;
  }

  /** Entries pushed and not yet reset (KVM `kvm_dirty_ring_used`). */
  used(): number {
    return this.dirtyIndex - this.resetIndex;
  }

  /** KVM `kvm_dirty_ring_soft_full`. */
  softFull(): boolean {
    return this.used() >= this.softLimit;
  }

  /**
   * KVM `kvm_dirty_ring_push`: the entry at `dirtyIndex` gets (slot, offset) and then the DIRTY flag; the push
   * that reaches the soft limit makes the vCPU's soft-full request. A full ring "should never" be pushed to
   * (KVM WARNs and overwrites an entry, losing a page): here it is an error.
   */
  push(slot: number, offset: number): void {
    if (this.used() >= this.size)
      throw new DirtyRingError(`dirty ring of vCPU ${this.index}: full (${this.size} entries not reset); a push would overwrite a dirty entry`);
    const e = this.dirtyIndex & (this.size - 1);
    this.slots[e] = slot;
    this.offsets[e] = offset;
    this.flags[e] = KVM_DIRTY_GFN_F_DIRTY;
    this.dirtyIndex++;
    this.pushes++;
    if (this.used() >= this.softLimit) this.softFullRequest = true;
  }

  /**
   * KVM `kvm_dirty_ring_check_request`, before the vCPU enters the guest: with the soft-full request made and
   * the ring still soft-full, the vCPU exits with KVM_EXIT_DIRTY_RING_FULL (true) and the request stays; a
   * request whose ring was reset meanwhile is dropped.
   */
  checkRequest(): boolean {
    if (!this.softFullRequest) return false;
    if (this.softFull()) return true;
    this.softFullRequest = false;
    return false;
  }

  /**
   * User space's harvest: from `fetchIndex`, every entry with the DIRTY flag is visited and flagged RESET
   * (`dirty_gfn_set_collected`), until the first one without it. Returns how many were harvested.
   */
  collect(visit: (slot: number, offset: number) => void): number {
    let n = 0;
    for (;;) {
      const e = this.fetchIndex & (this.size - 1);
      if ((this.flags[e]! & KVM_DIRTY_GFN_F_DIRTY) === 0) return n;
      visit(this.slots[e]!, this.offsets[e]!);
      this.flags[e] = KVM_DIRTY_GFN_F_RESET;
      this.fetchIndex++;
      n++;
    }
  }

  /** Whether an entry not yet reset (DIRTY or RESET) names page `offset` of `slot` (for invariant checks; a scan). */
  holds(slot: number, offset: number): boolean {
    for (let i = this.resetIndex; i < this.dirtyIndex; i++) {
      const e = i & (this.size - 1);
      if (this.flags[e] !== 0 && this.slots[e] === slot && this.offsets[e] === offset) return true;
    }
    return false;
  }
}

/** Deliberately broken resets, for the race explorer's tests (a broken MMU must be caught). Never set in a run. */
export interface ResetDirtyRingsMutation {
  /** Reset the harvested entries without write-protecting their pages again. */
  readonly skipProtect?: boolean;
  /** Re-protect without the final remote TLB flush. */
  readonly skipFlush?: boolean;
}

const R_SCAN = 0;
const R_LOCK = 1;
const R_PROTECT = 2;
const R_FLUSH = 3;
const R_DONE = 4;

/**
 * KVM_RESET_DIRTY_RINGS (kvm_main.c `kvm_vm_ioctl_reset_dirty_pages`, dirty_ring.c `kvm_dirty_ring_reset`) as
 * steps at its racing points: for each vCPU's ring, the harvested entries from `resetIndex` are made invalid and
 * coalesced into (slot, offset, mask) runs (forward within a word, or backwards while the mask fits), and each run
 * is write-protected again under `mmu_lock` (`kvm_reset_dirty_gfn` -> `kvm_arch_mmu_enable_log_dirty_pt_masked`);
 * after every ring, one remote TLB flush when any entry was reset. KVM's masks are `unsigned long` (64 bits);
 * here they are 32 bits, as the bitmap words (`DirtyLogMmu.writeProtectMasked`), which only splits some runs in two.
 */
export class ResetDirtyRingsOp {
  /** Entries reset (the ioctl's return value). */
  cleared = 0;
  done = false;
  private phase = R_SCAN;
  private ring = 0;
  private slot = 0;
  private offset = 0;
  private mask = 0;
  private readonly mmu: RingResetMmu;

  constructor(
    readonly log: RingResetLog,
    readonly rings: readonly DirtyRing[],
    readonly thread: number,
    readonly mutation: ResetDirtyRingsMutation = {},
  ) {
    this.mmu = log.attachedMmu;
  }

  /** Whether the op can take its next step now (taking `mmu_lock` needs it free). */
  runnable(): boolean {
    return this.phase !== R_LOCK || this.mmu.mmuLock.available(this.thread);
  }

  /** Takes one step and says what it did (the explorer's log line). */
  step(): string {
    switch (this.phase) {
      case R_SCAN:
        return this.scan();
      case R_LOCK:
        if (!this.mmu.mmuLock.tryAcquire(this.thread)) return 'spin on mmu_lock';
        this.phase = R_PROTECT;
        return 'mmu_lock';
      case R_PROTECT: {
        const what = `slot ${this.slot} offset ${this.offset} mask 0x${this.mask.toString(16)}`;
        // kvm_reset_dirty_gfn: a memslot that is gone, or a run past its end, is skipped.
        const slot = this.log.memory.slots.find((s) => s.id === this.slot);
        const valid = slot !== undefined && this.offset + 31 - Math.clz32(this.mask) < slot.pages;
        if (valid && this.mutation.skipProtect !== true) this.mmu.writeProtectMasked(slot, this.offset, this.mask);
        this.mmu.mmuLock.release(this.thread);
        this.phase = R_SCAN;
        return `${this.mutation.skipProtect === true ? 'no write-protect (broken)' : valid ? 'write-protect' : 'skip'} ${what}, mmu_unlock`;
      }
      case R_FLUSH:
        this.done = true;
        this.phase = R_DONE;
        if (this.mutation.skipFlush === true) return 'no flush (broken)';
        this.mmu.flushRemoteTlbs(this.thread);
        return 'flush remote TLBs';
      default:
        throw new DirtyRingError('KVM_RESET_DIRTY_RINGS was stepped after its end');
    }
  }

  /** Gathers the next run of harvested entries (the coalescing of `kvm_dirty_ring_reset`). */
  private scan(): string {
    while (this.ring < this.rings.length) {
      const r = this.rings[this.ring]!;
      let n = 0;
      for (;;) {
        const e = r.resetIndex & (r.size - 1);
        if ((r.flags[e]! & KVM_DIRTY_GFN_F_RESET) === 0) break;
        const slot = r.slots[e]!;
        const offset = r.offsets[e]!;
        if (n > 0) {
          if (slot !== this.slot) break;
          const delta = offset - this.offset;
          if (delta >= 0 && delta < 32) this.mask = (this.mask | (1 << delta)) >>> 0;
          else if (delta < 0 && delta > -32 && (this.mask << -delta) >>> -delta === this.mask) {
            this.offset = offset;
            this.mask = ((this.mask << -delta) | 1) >>> 0;
          } else break;
        } else {
          this.slot = slot;
          this.offset = offset;
          this.mask = 1;
        }
        r.flags[e] = 0; // kvm_dirty_gfn_set_invalid
        r.resetIndex++;
        this.cleared++;
        n++;
      }
      if (n > 0) {
        this.phase = R_LOCK;
        return `ring ${r.index}: reset ${n} entries`;
      }
      this.ring++;
    }
    // kvm_vm_ioctl_reset_dirty_pages: "if (cleared) kvm_flush_remote_tlbs(kvm)".
    if (this.cleared > 0) {
      this.phase = R_FLUSH;
      return `${this.cleared} entries reset`;
    }
    this.done = true;
    this.phase = R_DONE;
    return 'nothing to reset';
  }
}
