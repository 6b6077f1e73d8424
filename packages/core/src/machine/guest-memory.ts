import { Buffer } from 'node:buffer';
import { createHash } from 'node:crypto';
import { PAGE_SIZE, pageNumber } from '../arch/constants.js';
import type { PhysicalMemory } from '../memory/physical.js';

/** A memslot: guest-physical pages [baseGfn, baseGfn + pages) of RAM (KVM `kvm_memory_slot`). */
export interface Memslot {
  readonly id: number;
  readonly baseGfn: number;
  readonly pages: number;
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

const GiB = 1024 * 1024 * 1024;

/**
 * The largest guest RAM (`--memory`) this simulator accepts: 4 TiB. Guest RAM is backed page by page on first
 * write, so the limit is not what the host has; it keeps every guest-physical address (RAM above the MMIO hole
 * included) below 2^43, well inside the default MAXPHYADDR of 46 and below the shadow MMU's pool of host frames.
 */
export const MAX_GUEST_RAM = 4 * 1024 * GiB;

/**
 * Guest-physical address where the MMIO hole below 4 GiB begins: RAM beyond this much goes above 4 GiB (the PC
 * layout; QEMU's i440fx machine puts RAM above 3 GiB above 4 GiB, hw/i386/pc_piix.c `pc_init1`, lowmem
 * 0xc0000000), and [3 GiB, 4 GiB) is left to devices: no memslot, so an access there is MMIO.
 */
export const MMIO_HOLE_START = 3 * GiB;
/** Where RAM above the MMIO hole begins. */
export const HIGH_RAM_START = 4 * GiB;

/**
 * The guest-physical layout of `ramBytes` of RAM: one slot [0, ramBytes) up to MMIO_HOLE_START, else
 * [0, 3 GiB) and the rest from 4 GiB up.
 */
export function defaultMemslots(ramBytes: number): MemslotSpec[] {
  if (ramBytes <= MMIO_HOLE_START) return [{ base: 0, size: ramBytes }];
  return [
    { base: 0, size: MMIO_HOLE_START },
    { base: HIGH_RAM_START, size: ramBytes - MMIO_HOLE_START },
  ];
}

/** The highest guest-physical address + 1 of the default layout of `ramBytes` (what a guest must address). */
export function guestPhysicalEnd(ramBytes: number): number {
  return ramBytes <= MMIO_HOLE_START ? ramBytes : HIGH_RAM_START + (ramBytes - MMIO_HOLE_START);
}

/**
 * Most distinct pages a run may write: backed pages live in one host buffer whose offsets the TLB keeps in 32
 * bits (core/src/tlb), and page 0 of it is the shared zero page.
 */
const MAX_BACKED_PAGES = 2 ** 20 - 1;
/** log2 of the guest pages one directory chunk covers (1024 pages: 4 MiB of guest RAM per 4 KiB chunk). */
const CHUNK_SHIFT = 10;
const CHUNK_MASK = (1 << CHUNK_SHIFT) - 1;
/** Guest pages below 4 GiB (2^20): the most `GuestMemory.low` maps. */
const LOW_GFNS = 2 ** 20;
/** Entries of `read32`'s gfn -> page cache (a power of two). */
const READ_CACHE = 64;
const READ_CACHE_MASK = READ_CACHE - 1;

/** The text the memory digest starts with: its format and version (see `GuestMemory.digest`). */
export const DIGEST_FORMAT = 'vmexit-memory/1';

/** Whether the 1024 words of a page from word `w0` of `u32` are all zero. */
function allZeros(u32: Uint32Array, w0: number): boolean {
  for (let k = w0, end = w0 + PAGE_SIZE / 4; k < end; k++) if (u32[k] !== 0) return false;
  return true;
}

/** A memslot with its page directory: guest page -> backing page (0: never written, reads as zeros). */
class Slot implements Memslot {
  /** Per chunk of 1024 guest pages: the backing page of each, or undefined while none is backed. */
  readonly dir: (Int32Array | undefined)[];
  constructor(
    readonly id: number,
    readonly baseGfn: number,
    readonly pages: number,
    readonly readonly: boolean,
  ) {
    this.dir = [];
    this.dir.length = Math.ceil(pages / (CHUNK_MASK + 1));
  }
}

/**
 * Guest-physical memory: RAM mapped into the guest-physical address space by memslots (a guest-physical
 * address with no slot is MMIO), backed page by page on first write. A page never written reads as zeros: it
 * is backed by the shared zero page (page 0 of the backing buffer), as an anonymous mapping is on a Linux
 * host. Backed pages live in one buffer that grows as pages are first written, in order of first write; a
 * "RAM offset" (what `gpaToOffset` returns and the TLB caches) is an offset in that buffer. The host mapping is
 * the identity on slots: host-physical addresses of guest RAM equal guest-physical addresses.
 */
export class GuestMemory implements PhysicalMemory {
  /** The backing buffer and views of it; replaced (contents and offsets kept) when it grows. */
  buffer: ArrayBuffer;
  u8: Uint8Array;
  u32: Uint32Array;
  view: DataView;
  readonly slots: readonly Memslot[];
  /** Total RAM bytes (what the guest has, not what is backed). */
  readonly size: number;
  private lastSlot: Slot;
  private readonly slotList: readonly Slot[];
  /** Pages of `buffer` in use, the zero page included. */
  private used = 1;
  /** The guest page number each backing page holds (index 0: the zero page, -1). */
  private gfnOfPage: Float64Array;
  /**
   * Guest page -> backing page for every guest page below the end of the RAM under 4 GiB (0: the zero page: never
   * written, or no memslot, which `read32` reads as zeros too): one typed-array load for `read32` and the offset
   * lookups, with no cache to check. A guest's page tables are there in practice (Linux allocates them from low
   * memory first). Sized to that RAM, 1/1024 of it: at most 4 MiB, of which only the entries of pages touched
   * are ever resident.
   */
  private readonly low: Int32Array;
  /** `read32`'s cache for pages above `low`: entry `gfn & (READ_CACHE - 1)` holds guest page `rcGfn` at backing page `rcPage` (-1: empty). */
  private readonly rcGfn = new Float64Array(READ_CACHE).fill(-1);
  private readonly rcPage = new Int32Array(READ_CACHE);
  /** Called with (gfn, RAM offset of its new page) when a page is backed (the vCPUs re-point their TLBs). */
  private readonly backListeners: ((gfn: number, offset: number) => void)[] = [];

  /** `specs` default to `defaultMemslots(ramBytes)`. */
  constructor(ramBytes: number, specs?: readonly MemslotSpec[]) {
    if (specs === undefined && !(Number.isInteger(ramBytes) && ramBytes > 0 && ramBytes <= MAX_GUEST_RAM)) {
      throw new RangeError(`guest RAM of ${ramBytes} bytes is not from 4 KiB to the limit of ${MAX_GUEST_RAM} bytes (4 TiB)`);
    }
    const list = specs ?? defaultMemslots(ramBytes);
    let total = 0;
    const slots: Slot[] = [];
    for (const [id, s] of list.entries()) {
      if (s.base % PAGE_SIZE !== 0 || s.size % PAGE_SIZE !== 0 || s.size <= 0) {
        throw new RangeError(`memslot ${id}: base ${s.base} and size ${s.size} must be positive multiples of 4096`);
      }
      slots.push(new Slot(id, s.base / PAGE_SIZE, s.size / PAGE_SIZE, s.readonly === true));
      total += s.size;
    }
    slots.sort((x, y) => x.baseGfn - y.baseGfn);
    for (let i = 1; i < slots.length; i++) {
      const p = slots[i - 1]!;
      if (p.baseGfn + p.pages > slots[i]!.baseGfn) throw new RangeError(`memslots ${p.id} and ${slots[i]!.id} overlap`);
    }
    if (total > MAX_GUEST_RAM) throw new RangeError(`guest RAM of ${total} bytes is over the limit of ${MAX_GUEST_RAM} bytes (4 TiB)`);
    if (slots.length === 0) throw new RangeError('guest memory needs at least one memslot');
    this.size = total;
    const initialPages = 16;
    this.buffer = new ArrayBuffer(initialPages * PAGE_SIZE);
    this.u8 = new Uint8Array(this.buffer);
    this.u32 = new Uint32Array(this.buffer);
    this.view = new DataView(this.buffer);
    this.gfnOfPage = new Float64Array(initialPages).fill(-1);
    this.slots = slots;
    this.slotList = slots;
    this.lastSlot = slots[0]!;
    let lowEnd = 0;
    for (const sl of slots) if (sl.baseGfn < LOW_GFNS) lowEnd = Math.max(lowEnd, Math.min(sl.baseGfn + sl.pages, LOW_GFNS));
    this.low = new Int32Array(lowEnd);
  }

  /** The memslot holding `gfn`, or null (MMIO). */
  slotForGfn(gfn: number): Memslot | null {
    return this.slotOf(gfn);
  }

  private slotOf(gfn: number): Slot | null {
    const l = this.lastSlot;
    return gfn >= l.baseGfn && gfn < l.baseGfn + l.pages ? l : this.findSlot(gfn);
  }

  /** `slotOf` beyond the slot of the last lookup. */
  private findSlot(gfn: number): Slot | null {
    for (const s of this.slotList) {
      if (gfn >= s.baseGfn && gfn < s.baseGfn + s.pages) {
        this.lastSlot = s;
        return s;
      }
    }
    return null;
  }

  /**
   * The RAM offset of guest-physical address `gpa`, backing its page first (callers may write through it), or
   * -1 when no memslot holds it. Readers that must not back a page use `readOffset`.
   */
  gpaToOffset(gpa: number): number {
    const lp = this.lowPage(gpa);
    if (lp !== 0) return lp * PAGE_SIZE + (gpa & 0xfff);
    const gfn = pageNumber(gpa);
    const s = this.slotOf(gfn);
    if (s === null) return -1;
    return this.pageOf(s, gfn, true) * PAGE_SIZE + (gpa & 0xfff);
  }

  /**
   * The RAM offset to READ guest-physical address `gpa` at: its page's, or the zero page's while the page was
   * never written (so never write through it); -1 when no memslot holds it. Backs nothing.
   */
  readOffset(gpa: number): number {
    const lp = this.lowPage(gpa);
    if (lp !== 0) return lp * PAGE_SIZE + (gpa & 0xfff);
    const gfn = pageNumber(gpa);
    const s = this.slotOf(gfn);
    if (s === null) return -1;
    return this.pageOf(s, gfn, false) * PAGE_SIZE + (gpa & 0xfff);
  }

  /** Whether guest page `gfn` has a page of its own (was written); false for MMIO. */
  isBacked(gfn: number): boolean {
    const s = this.slotOf(gfn);
    return s !== null && this.pageOf(s, gfn, false) !== 0;
  }

  /** Backs guest page `gfn` of RAM if it is not yet and returns the RAM offset of its page (-1: MMIO). */
  backGfn(gfn: number): number {
    const s = this.slotOf(gfn);
    return s === null ? -1 : this.pageOf(s, gfn, true) * PAGE_SIZE;
  }

  /** Whether `gpa` is read-only RAM (writes to it are MMIO). */
  isReadonly(gpa: number): boolean {
    const s = this.slotOf(pageNumber(gpa));
    return s !== null && s.readonly === true; // a boolean compiled code knows as one (a field is tested with the full ToBoolean otherwise)
  }

  /** The guest-physical address that RAM offset `offset` holds (the zero page holds none: a RangeError). */
  offsetToGpa(offset: number): number {
    const p = pageNumber(offset);
    if (!(p >= 1 && p < this.used)) throw new RangeError(`offset ${offset} is not in a backed page of guest RAM`);
    return this.gfnOfPage[p]! * PAGE_SIZE + (offset % PAGE_SIZE);
  }

  /** Calls `listener(gfn, offset)` whenever a page of guest RAM is backed (its contents were zeros until then). */
  onBack(listener: (gfn: number, offset: number) => void): void {
    this.backListeners.push(listener);
  }

  /** The backing page of `gpa` from `low` (0: not backed, MMIO, or above `low`: ask the slots). */
  private lowPage(gpa: number): number {
    const gfn = gpa >>> 12;
    return gpa >>> 0 === gpa && gfn < this.low.length ? this.low[gfn]! : 0; // gpa >>> 0 === gpa: an integer in [0, 2^32)
  }

  read32(pa: number): number {
    // The page walker's read, small enough for V8 to inline at every read of a walk: below 4 GiB (pa >>> 0 === pa:
    // an integer in [0, 2^32), whose page number pa >>> 12 is), the backing page from `low`.
    const gfn = pa >>> 12;
    if (pa >>> 0 === pa && gfn < this.low.length) return this.u32[(this.low[gfn]! << 10) | ((pa & 0xfff) >>> 2)]!;
    return this.read32High(pa);
  }

  /** `read32` above `low`: a small direct-mapped cache of gfn -> backing page first (a walk reads both halves of an entry, and the same few tables walk after walk). */
  private read32High(pa: number): number {
    const off = pa & 0xfff; // pa's low 12 bits (exact for any pa below 2^53)
    const gfn = (pa - off) / 4096;
    const i = gfn & READ_CACHE_MASK;
    return this.rcGfn[i] === gfn ? this.u32[(this.rcPage[i]! << 10) | (off >>> 2)]! : this.read32Miss(pa, gfn, i);
  }

  /** `read32` when the read cache does not hold `gfn` (entry `i` is refilled with it). */
  private read32Miss(pa: number, gfn: number, i: number): number {
    const s = this.slotOf(gfn);
    if (s === null) return 0; // MMIO reads as 0 here (not cached)
    const p = this.pageOf(s, gfn, false); // 0: the zero page, until the page is backed (newPage updates the entry)
    this.rcGfn[i] = gfn;
    this.rcPage[i] = p;
    return this.u32[(p << 10) | ((pa & 0xfff) >>> 2)]!;
  }

  write32(pa: number, value: number): void {
    const gfn = pageNumber(pa);
    const s = this.slotOf(gfn);
    if (s === null) return;
    // Zero into a page never written changes nothing it holds: it stays unbacked.
    const p = this.pageOf(s, gfn, value !== 0);
    if (p !== 0) this.u32[(p << 10) | ((pa & 0xfff) >>> 2)] = value;
  }

  /** The number of guest pages of RAM. */
  get pages(): number {
    return this.size / PAGE_SIZE;
  }

  /** The number of guest pages that are backed (were written with something other than zeros). */
  get backedPages(): number {
    return this.used - 1;
  }

  /**
   * Copies guest page `gfn` into the same page of `target` (a migration sending a page): `target` must have
   * `gfn` in a memslot. A page that is zeros on both sides (backed by neither) stays unbacked.
   */
  copyPageTo(target: GuestMemory, gfn: number): void {
    if (!this.isBacked(gfn) && !target.isBacked(gfn)) return;
    const src = this.readOffset(gfn * PAGE_SIZE);
    const dst = target.gpaToOffset(gfn * PAGE_SIZE); // backs the page: target's buffer may grow, so take its u8 after
    target.u8.set(this.u8.subarray(src, src + PAGE_SIZE), dst);
  }

  /** The gfns whose contents differ between this memory and `other` (cold path: the end-to-end check of a migration). */
  differingPages(other: GuestMemory): number[] {
    const gfns = [...new Set([...this.backedGfns(), ...other.backedGfns()])].sort((a, b) => a - b);
    return gfns.filter((gfn) => {
      const a = this.readOffset(gfn * PAGE_SIZE);
      const b = other.readOffset(gfn * PAGE_SIZE);
      return a < 0 || b < 0 || Buffer.compare(this.u8.subarray(a, a + PAGE_SIZE), other.u8.subarray(b, b + PAGE_SIZE)) !== 0;
    });
  }

  /** The guest page numbers of the backed pages, ascending (cold path: comparisons, tests). */
  backedGfns(): number[] {
    return Array.from(this.gfnOfPage.subarray(1, this.used)).sort((a, b) => a - b);
  }

  /**
   * The run's memory digest (`DIGEST_FORMAT`): SHA-256 over
   * - the ASCII text `vmexit-memory/1` and, per memslot in guest-physical order, `;BASE+PAGES` (+`r` when
   *   read-only), BASE and PAGES the slot's first guest page number and page count in lower-case hex, then a `\n`;
   * - then, for each guest page whose 4096 bytes are not all zeros, in ascending guest page number: the page
   *   number as 8 bytes little-endian, then the 32-byte SHA-256 of the page's contents.
   * A page never written and a page written back to all zeros contribute nothing alike, so the digest is that
   * of what guest memory holds, whatever is backed; it costs time in proportion to the pages backed (every
   * other page is zeros), not to the size of RAM.
   */
  digest(): string {
    const h = createHash('sha256');
    h.update(DIGEST_FORMAT);
    for (const s of this.slotList) h.update(`;${s.baseGfn.toString(16)}+${s.pages.toString(16)}${s.readonly ? 'r' : ''}`);
    h.update('\n');
    const key = new DataView(new ArrayBuffer(8));
    for (const gfn of this.backedGfns()) {
      const off = this.readOffset(gfn * PAGE_SIZE);
      const page = this.u8.subarray(off, off + PAGE_SIZE);
      if (allZeros(this.u32, off >>> 2)) continue;
      key.setUint32(0, gfn >>> 0, true);
      key.setUint32(4, Math.floor(gfn / 4294967296), true);
      h.update(new Uint8Array(key.buffer));
      h.update(createHash('sha256').update(page).digest());
    }
    return h.digest('hex');
  }

  /** The backing page of `gfn` in slot `s` (0: the zero page); with `back`, a page of its own, made now if needed. */
  private pageOf(s: Slot, gfn: number, back: boolean): number {
    const rel = gfn - s.baseGfn;
    const ci = rel >>> CHUNK_SHIFT;
    let c = s.dir[ci];
    if (c === undefined) {
      if (!back) return 0;
      c = s.dir[ci] = new Int32Array(CHUNK_MASK + 1);
    }
    const p = c[rel & CHUNK_MASK]!;
    if (p !== 0 || !back) return p;
    return (c[rel & CHUNK_MASK] = this.newPage(gfn));
  }

  /** Takes the next page of the buffer for `gfn` (zeros), growing the buffer when it is full. */
  private newPage(gfn: number): number {
    const p = this.used;
    if (p > MAX_BACKED_PAGES) {
      throw new RangeError(`the guest wrote more than ${MAX_BACKED_PAGES} distinct pages (4 GiB), the most this simulator backs`);
    }
    if (p >= this.gfnOfPage.length) this.grow(Math.min(this.gfnOfPage.length * 2, MAX_BACKED_PAGES + 1));
    this.used = p + 1;
    this.gfnOfPage[p] = gfn;
    if (gfn < this.low.length) this.low[gfn] = p;
    const i = gfn & READ_CACHE_MASK;
    if (this.rcGfn[i] === gfn) this.rcPage[i] = p; // it read through the zero page until now
    for (const l of this.backListeners) l(gfn, p * PAGE_SIZE);
    return p;
  }

  private grow(pages: number): void {
    const buf = new ArrayBuffer(pages * PAGE_SIZE);
    const u8 = new Uint8Array(buf);
    u8.set(this.u8.subarray(0, this.used * PAGE_SIZE));
    this.buffer = buf;
    this.u8 = u8;
    this.u32 = new Uint32Array(buf);
    this.view = new DataView(buf);
    const g = new Float64Array(pages).fill(-1);
    g.set(this.gfnOfPage.subarray(0, this.used));
    this.gfnOfPage = g;
  }
}
