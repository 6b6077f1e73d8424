import { createHash } from 'node:crypto';
import { PAGE_SHIFT, PAGE_SIZE } from '../arch/constants.js';
import type { PhysicalMemory } from '../memory/physical.js';

/** A memslot: guest-physical pages [baseGfn, baseGfn + pages) backed by RAM at `offset` (KVM `kvm_memory_slot`). */
export interface Memslot {
  readonly id: number;
  readonly baseGfn: number;
  readonly pages: number;
  /** Byte offset of the slot's first page in the RAM buffer. */
  readonly offset: number;
  /** Read-only RAM (a ROM): reads are RAM, writes are MMIO (KVM_MEM_READONLY). */
  readonly readonly: boolean;
}

/** One memslot of the guest-physical layout as a variant or `MachineOptions` gives it (KVM's `kvm_userspace_memory_region`). */
export interface MemslotSpec {
  /** Guest-physical base address (4 KiB aligned). */
  readonly base: number;
  /** Size in bytes (a multiple of 4 KiB). */
  readonly size: number;
  readonly readonly?: boolean;
}

/** The largest piece of RAM `GuestMemory.digest` hands to one hash update (256 MiB). */
const DIGEST_CHUNK = 256 * 1024 * 1024;

/** Largest RAM this simulator backs: TLB entries hold host page offsets in 32 bits. */
export const MAX_GUEST_RAM = 3 * 1024 * 1024 * 1024;

/**
 * Guest-physical memory: one ArrayBuffer holding all RAM, mapped into the guest-physical address space by
 * memslots. A guest-physical address with no slot is MMIO. The host mapping is the identity on slots:
 * host-physical addresses of guest RAM equal guest-physical addresses.
 */
export class GuestMemory implements PhysicalMemory {
  readonly buffer: ArrayBuffer;
  readonly u8: Uint8Array;
  readonly u32: Uint32Array;
  readonly view: DataView;
  readonly slots: readonly Memslot[];
  /** Total RAM bytes. */
  readonly size: number;
  private lastSlot: Memslot;

  /** `specs` default to one RAM slot [0, ramBytes). */
  constructor(ramBytes: number, specs?: readonly MemslotSpec[]) {
    const list = specs ?? [{ base: 0, size: ramBytes }];
    let total = 0;
    const slots: Memslot[] = [];
    for (const [id, s] of list.entries()) {
      if (s.base % PAGE_SIZE !== 0 || s.size % PAGE_SIZE !== 0 || s.size <= 0) {
        throw new RangeError(`memslot ${id}: base ${s.base} and size ${s.size} must be positive multiples of 4096`);
      }
      slots.push({ id, baseGfn: s.base / PAGE_SIZE, pages: s.size / PAGE_SIZE, offset: total, readonly: s.readonly === true });
      total += s.size;
    }
    slots.sort((x, y) => x.baseGfn - y.baseGfn);
    for (let i = 1; i < slots.length; i++) {
      const p = slots[i - 1]!;
      if (p.baseGfn + p.pages > slots[i]!.baseGfn) throw new RangeError(`memslots ${p.id} and ${slots[i]!.id} overlap`);
    }
    if (total > MAX_GUEST_RAM) throw new RangeError(`guest RAM of ${total} bytes is over the limit of ${MAX_GUEST_RAM}`);
    if (slots.length === 0) throw new RangeError('guest memory needs at least one memslot');
    this.size = total;
    this.buffer = new ArrayBuffer(total);
    this.u8 = new Uint8Array(this.buffer);
    this.u32 = new Uint32Array(this.buffer);
    this.view = new DataView(this.buffer);
    this.slots = slots;
    this.lastSlot = slots[0]!;
  }

  /** The memslot holding `gfn`, or null (MMIO). */
  slotForGfn(gfn: number): Memslot | null {
    const l = this.lastSlot;
    if (gfn >= l.baseGfn && gfn < l.baseGfn + l.pages) return l;
    for (const s of this.slots) {
      if (gfn >= s.baseGfn && gfn < s.baseGfn + s.pages) {
        this.lastSlot = s;
        return s;
      }
    }
    return null;
  }

  /** The RAM buffer offset of guest-physical address `gpa`, or -1 when no memslot backs it. */
  gpaToOffset(gpa: number): number {
    const gfn = Math.floor(gpa / PAGE_SIZE);
    const s = this.slotForGfn(gfn);
    if (s === null) return -1;
    return s.offset + (gpa - s.baseGfn * PAGE_SIZE);
  }

  /** Whether `gpa` is read-only RAM (writes to it are MMIO). */
  isReadonly(gpa: number): boolean {
    const s = this.slotForGfn(Math.floor(gpa / PAGE_SIZE));
    return s !== null && s.readonly;
  }

  /** The guest-physical address of RAM buffer offset `offset`. */
  offsetToGpa(offset: number): number {
    for (const s of this.slots) {
      if (offset >= s.offset && offset < s.offset + s.pages * PAGE_SIZE) return s.baseGfn * PAGE_SIZE + (offset - s.offset);
    }
    throw new RangeError(`offset ${offset} is outside guest RAM`);
  }

  read32(pa: number): number {
    const off = this.gpaToOffset(pa);
    return off < 0 ? 0 : this.u32[off >>> 2]!;
  }

  write32(pa: number, value: number): void {
    const off = this.gpaToOffset(pa);
    if (off >= 0) this.u32[off >>> 2] = value;
  }

  /** The number of guest pages of RAM. */
  get pages(): number {
    return this.size >>> PAGE_SHIFT;
  }

  /**
   * SHA-256 of all guest RAM, slot by slot in guest-physical order: the run's memory digest. Fed to the hash
   * in pieces of at most DIGEST_CHUNK bytes (node:crypto refuses one update of 2 GiB or more); SHA-256 of a
   * byte sequence does not depend on how it is split, so the digest is that of the whole sequence.
   */
  digest(): string {
    const h = createHash('sha256');
    for (const s of this.slots) {
      const end = s.offset + s.pages * PAGE_SIZE;
      for (let at = s.offset; at < end; at += DIGEST_CHUNK) h.update(this.u8.subarray(at, Math.min(end, at + DIGEST_CHUNK)));
    }
    return h.digest('hex');
  }
}
