import { PAGE_SIZE } from '../arch/constants.js';

/**
 * TLB entry flag bits, kept in the low 12 bits of `Tlb.data[i]` (as v86's `src/rust/tlb.rs`); the high 20
 * bits hold the host byte offset of the 4 KiB page in the machine's RAM buffer. A permission bit is set only
 * when that kind of access may complete from the TLB without a walk under the control bits in force when
 * the entry was filled (CR0.WP, SMEP, SMAP with RFLAGS.AC, PKRU): the vCPU flushes the TLB when any of
 * those change, which the SDM allows (§4.10.2.2: processors "may invalidate any TLB entry at any time").
 * The write bits are set only when the leaf's D bit is already 1, so the first write re-walks and sets D
 * (§4.8: "whenever there is a write to a linear address, the processor sets the dirty flag (if it is not
 * already set)"; a TLB entry caches the D flag, §4.10.2.2).
 */
export const TLB_VALID = 1 << 0;
export const TLB_READ_SUP = 1 << 1;
export const TLB_WRITE_SUP = 1 << 2;
export const TLB_FETCH_SUP = 1 << 3;
export const TLB_READ_USER = 1 << 4;
export const TLB_WRITE_USER = 1 << 5;
export const TLB_FETCH_USER = 1 << 6;
export const TLB_GLOBAL = 1 << 7;
/** The entry is one 4 KiB piece of a larger page (so INVLPG of any address of that page must drop it). */
export const TLB_LARGE = 1 << 8;
export const TLB_FLAGS_MASK = 0xfff;

/**
 * The flags an access of kind `access` (PFERR_WRITE | PFERR_USER | PFERR_FETCH bits) needs, indexed by
 * `access & 0x16`. Precomputed so the hit path is one AND and one compare.
 */
export const TLB_NEED: Int32Array = (() => {
  const t = new Int32Array(32);
  for (let a = 0; a < 32; a++) {
    const user = (a & 4) !== 0;
    const bit =
      (a & 16) !== 0 ? (user ? TLB_FETCH_USER : TLB_FETCH_SUP) : (a & 2) !== 0 ? (user ? TLB_WRITE_USER : TLB_WRITE_SUP) : user ? TLB_READ_USER : TLB_READ_SUP;
    t[a] = TLB_VALID | bit;
  }
  return t;
})();

/** The hit path's own reference to TLB_NEED (see `Tlb.lookup`). */
const NEED = TLB_NEED;
/** The hit path's own copy of TLB_GLOBAL (see `Tlb.lookup`). */
const GLOBAL = TLB_GLOBAL;
/** A valid piece of a large page: `dropPage`'s own copy (an exported binding is read through its module cell). */
const VALID_LARGE = TLB_VALID | TLB_LARGE;

/**
 * A per-vCPU TLB, direct-mapped by virtual page number, in typed arrays (SDM Vol. 3A §4.10). Entries are
 * tagged with the PCID when CR4.PCIDE=1 (§4.10.1); global entries (§4.10.2.4, PTE.G with CR4.PGE) match any
 * PCID and survive a CR3 write. A larger page is cached as the 4 KiB pieces that were used (the SDM allows a
 * processor to cache a large page as smaller ones, §4.10.2.3). The hit path (`lookup`) allocates nothing.
 */
export class Tlb {
  readonly size: number;
  readonly mask: number;
  /** The virtual page number of each entry (signed-canonical va / 4096, floored); NaN when empty. */
  readonly tag: Float64Array;
  /** Host page offset | TLB_* flags; 0 when empty. */
  readonly data: Int32Array;
  /** The PCID each entry was filled under (0 when CR4.PCIDE=0). */
  readonly pcid: Uint16Array;
  /** For TLB_LARGE entries: the first virtual page number of the large page, and its size in pages. */
  readonly largeBase: Float64Array;
  readonly largePages: Int32Array;
  /** Number of valid entries that are pieces of a large page (INVLPG scans only when some exist). */
  private largeCount = 0;
  /** The size in pages of the largest large page a valid entry has been a piece of since largeCount was last 0. */
  private largestPages = 0;
  /**
   * The valid large pieces per group of `1 << groupShift` consecutive slots (32, or the whole TLB when smaller), so
   * that `dropPage` looks only into the groups of its window that hold one: the window of a 2 MiB page is 512
   * slots, and usually holds a few pieces at most.
   */
  private readonly largeInGroup: Int32Array;
  private readonly groupShift: number;

  /**
   * The slots filled since the last flush that cleared the whole TLB, so that a flush clears those instead of
   * every slot (a flush per zapped shadow page, per CR3 write: most of the TLB is empty then). A slot refilled
   * after a drop is listed again; past `size` listings the list is given up (`filledCount` > size) and the next
   * flush clears every slot. Invariant: every valid slot is listed, or the list is given up.
   */
  private readonly filled: Int32Array;
  private filledCount = 0;

  hits = 0;
  misses = 0;
  flushes = 0;
  invlpgs = 0;

  constructor(size = 4096) {
    if (size < 1 || (size & (size - 1)) !== 0) throw new RangeError(`TLB size ${size} is not a power of two`);
    this.size = size;
    this.mask = size - 1;
    this.tag = new Float64Array(size).fill(NaN);
    this.data = new Int32Array(size);
    this.pcid = new Uint16Array(size);
    this.largeBase = new Float64Array(size);
    this.largePages = new Int32Array(size);
    this.filled = new Int32Array(size);
    this.groupShift = Math.min(5, Math.log2(size));
    this.largeInGroup = new Int32Array(size >>> this.groupShift);
  }

  /**
   * The host byte offset for `va`, or -1 when the TLB cannot complete the access (no entry, another PCID,
   * or the entry does not grant `access`). Counts hits and misses.
   */
  lookup(va: number, access: number, pcid: number): number {
    // Literals (4096, 0xfff) and the module-local NEED and GLOBAL, not the imported PAGE_SIZE or the
    // exported constants: V8 (Node 20) reads an import or an export through a module cell instead of folding
    // it, which took the hit path from ~5 to ~11 ns (bench/paging.bench.mjs).
    const vpn = Math.floor(va / 4096);
    const i = vpn & this.mask;
    const d = this.data[i]!;
    const need = NEED[access & 0x16]!;
    if (this.tag[i] === vpn && (d & need) === need && (this.pcid[i] === pcid || (d & GLOBAL) !== 0)) {
      this.hits++;
      // `va & 0xfff` is the page offset for any integer va, negative ones included (ToInt32 is modulo 2^32,
      // which 4096 divides); unlike `va - vpn * 4096` it stays an int32 and keeps double arithmetic off the
      // hit path (bench/paging.bench.mjs).
      return ((d & ~0xfff) >>> 0) + (va & 0xfff);
    }
    this.misses++;
    return -1;
  }

  /**
   * Caches the translation of the 4 KiB page holding `va`. `hostPage` is the host byte offset of that page
   * (4 KiB aligned, below 4 GiB); `flags` are TLB_* bits. For a piece of a large page, `pageSize` is the
   * large page's size in bytes.
   */
  fill(va: number, pcid: number, hostPage: number, flags: number, pageSize: number): void {
    // The entry packs the host page into the high 20 bits of an int32: a misaligned or >= 4 GiB offset
    // would corrupt the flags or alias another page, and a page size other than a power-of-two multiple
    // of 4 KiB would give INVLPG a wrong large-page range. The fill runs once per walk, so checking is cheap.
    if (!(hostPage >= 0 && hostPage <= 0xfffff000) || hostPage >>> 0 !== hostPage || (hostPage & 0xfff) !== 0) {
      throw new RangeError(`Tlb.fill: host page offset ${hostPage} is not 4 KiB-aligned below 4 GiB`);
    }
    if (!(pageSize >= PAGE_SIZE && pageSize <= 1073741824) /* 1 GiB */ || pageSize >>> 0 !== pageSize || (pageSize & (pageSize - 1)) !== 0) {
      throw new RangeError(`Tlb.fill: page size ${pageSize} is not a power of two between 4 KiB and 1 GiB`);
    }
    const vpn = Math.floor(va / 4096); // as `lookup` computes it, so that every method agrees on an entry's index
    const i = vpn & this.mask;
    const was = this.data[i]!;
    if ((was & VALID_LARGE) === VALID_LARGE) {
      this.largeCount--;
      this.largeInGroup[i >>> this.groupShift]!--;
    }
    if ((was & TLB_VALID) === 0) this.listFilled(i);
    this.tag[i] = vpn;
    this.pcid[i] = pcid;
    if (pageSize > PAGE_SIZE) {
      const pages = pageSize / PAGE_SIZE;
      flags |= TLB_LARGE;
      this.largeBase[i] = Math.floor(vpn / pages) * pages;
      this.largePages[i] = pages;
      this.largeCount++;
      this.largeInGroup[i >>> this.groupShift]!++;
      if (pages > this.largestPages) this.largestPages = pages;
    } else {
      flags &= ~TLB_LARGE;
    }
    this.data[i] = hostPage | (flags & TLB_FLAGS_MASK) | TLB_VALID | 0;
  }

  /** Drops every entry; with `keepGlobal`, global entries stay (a CR3 write with CR4.PGE, §4.10.4.1). */
  flushAll(keepGlobal: boolean): void {
    this.flushes++;
    const { data, tag } = this;
    if (!keepGlobal) {
      const n = this.filledCount;
      if (n > this.size >>> 2) {
        tag.fill(NaN);
        data.fill(0);
      } else {
        const filled = this.filled;
        for (let k = 0; k < n; k++) {
          const i = filled[k]!;
          tag[i] = NaN;
          data[i] = 0;
        }
      }
      this.filledCount = 0;
      if (this.largeCount !== 0) this.largeInGroup.fill(0);
      this.largeCount = 0;
      return;
    }
    this.dropNonGlobal(false, 0);
  }

  /** Drops the non-global entries of one PCID (a CR3 write with CR4.PCIDE=1 and bit 63 clear, §4.10.4.1). */
  flushPcid(pcid: number): void {
    this.flushes++;
    this.dropNonGlobal(true, pcid);
  }

  /** Drops every valid non-global entry (of PCID `pcid` when `onePcid`), and lists the slots still valid. */
  private dropNonGlobal(onePcid: boolean, pcid: number): void {
    const { data, filled } = this;
    const all = this.filledCount > this.size;
    const n = all ? this.size : this.filledCount;
    let kept = 0;
    for (let k = 0; k < n; k++) {
      const i = all ? k : filled[k]!;
      const d = data[i]!;
      if ((d & TLB_VALID) === 0) continue;
      if ((d & TLB_GLOBAL) === 0 && (!onePcid || this.pcid[i] === pcid)) this.drop(i);
      else filled[kept++] = i; // kept <= k: the slots not read yet are not overwritten
    }
    this.filledCount = kept;
  }

  /** Lists slot `i`, just made valid (see `filled`). */
  private listFilled(i: number): void {
    const n = this.filledCount;
    if (n < this.size) this.filled[n] = i;
    if (n <= this.size) this.filledCount = n + 1;
  }

  /**
   * INVLPG (§4.10.4.1): drops the entries for the page holding `va` in the current PCID, global ones
   * included, and every cached piece of a large page that holds `va`.
   */
  invlpg(va: number, pcid: number): void {
    this.invlpgs++;
    this.dropPage(va, pcid);
  }

  /**
   * Drops what INVLPG of `va` drops, without counting an INVLPG: what a page fault on `va` invalidates (SDM
   * Vol. 3A §4.10.4.1, "page faults invalidate entries in the TLBs": those for that page number in the current
   * PCID, every cached piece of a large page included, §4.10.2.3; dropping a global entry too is allowed, a
   * processor may drop any entry at any time) and what an EPT violation met translating `va` invalidates
   * (Vol. 3C §29.4.3.1: the combined mappings of that linear address).
   */
  dropPage(va: number, pcid: number): void {
    const vpn = Math.floor(va / 4096); // as `lookup` computes it, so that every method agrees on an entry's index
    const i = vpn & this.mask;
    if (this.tag[i] === vpn && (this.pcid[i] === pcid || (this.data[i]! & TLB_GLOBAL) !== 0)) this.drop(i);
    if (this.largeCount === 0) {
      this.largestPages = 0;
      return;
    }
    // A piece of a large page that holds vpn caches a page of that large page, which lies in the aligned window of
    // `largestPages` pages around vpn (the sizes are powers of two, so smaller aligned pages nest in it): the
    // direct-mapped slots of that window are the only ones to look at (all of them once the window is the TLB's size).
    const window = this.largestPages;
    const data = this.data;
    const mask = this.mask;
    // The window's slots are (first + k) & mask for k below the window: from `first & mask` on (ToInt32 is modulo
    // 2^32, which the TLB's size divides). A window of a group or more is whole groups (its size and start are
    // multiples of the group's), looked into only where a group holds a large piece; `j` is carried from one group
    // to the next so that the start's computation (a division) stays out of the loop.
    const n = window >= this.size ? this.size : window;
    const shift = this.groupShift;
    const group = 1 << shift;
    const groups = this.largeInGroup;
    let j = window >= this.size ? 0 : (Math.floor(vpn / window) * window) & mask;
    if (n < group) {
      // A window smaller than a group (a large page of a few 4 KiB pages, which `fill` accepts): slot by slot.
      for (let k = 0; k < n; k++) if ((data[j + k]! & VALID_LARGE) === VALID_LARGE) this.dropLargePiece(j + k, vpn, pcid);
      return;
    }
    for (let k = 0; k < n; k += group) {
      if (groups[j >>> shift]! !== 0) {
        for (let t = j; t < j + group; t++) if ((data[t]! & VALID_LARGE) === VALID_LARGE) this.dropLargePiece(t, vpn, pcid);
      }
      j = (j + group) & mask;
    }
  }

  /** Drops entry `j`, a valid large piece (the caller tested that), if its large page holds `vpn`, in PCID `pcid` or global. */
  private dropLargePiece(j: number, vpn: number, pcid: number): void {
    const d = this.data[j]!;
    const base = this.largeBase[j]!;
    if (vpn >= base && vpn < base + this.largePages[j]! && (this.pcid[j] === pcid || (d & GLOBAL) !== 0)) this.drop(j);
  }

  /** Number of valid entries (for tests and statistics; not on a hot path). */
  validEntries(): number {
    let n = 0;
    for (let i = 0; i < this.size; i++) if ((this.data[i]! & TLB_VALID) !== 0) n++;
    return n;
  }

  private drop(i: number): void {
    if ((this.data[i]! & TLB_LARGE) !== 0) {
      this.largeCount--;
      this.largeInGroup[i >>> this.groupShift]!--;
    }
    this.tag[i] = NaN;
    this.data[i] = 0;
  }
}
