import type { GuestMemory, Memslot } from '../machine/guest-memory.js';

/** KVM_NR_PAGE_SIZES: rmaps for 4 KiB, 2 MiB and 1 GiB mappings. */
export const RMAP_LEVELS = 3;

/**
 * A multiset of spte locations (KVM's `kvm_rmap_head`: empty, one sptep, or a chain of descriptors; the
 * simulator keeps one number inline and spills to an array). Used both for rmaps and for `parent_ptes`.
 */
export class SpteList {
  private one = -1;
  private many: number[] | null = null;
  /**
   * The change log this list reports its first change to (set on rmap heads, see `Rmaps.changed`; null for
   * `parent_ptes`), and whether the list is in it now. The audit drains the log to re-check only the rmaps
   * that changed since it last ran.
   */
  changeLog: SpteList[] | null = null;
  queued = false;

  get size(): number {
    return this.many !== null ? this.many.length : this.one >= 0 ? 1 : 0;
  }

  /** Adds `loc` (a spte location) to the list. */
  add(loc: number): void {
    if (this.changeLog !== null && !this.queued) this.logChange();
    if (this.many !== null) this.many.push(loc);
    else if (this.one < 0) this.one = loc;
    else {
      this.many = [this.one, loc];
      this.one = -1;
    }
  }

  /** Removes one occurrence of `loc`; false when it is not there (KVM BUG()s: "no rmap for spte"). */
  remove(loc: number): boolean {
    if (this.changeLog !== null && !this.queued) this.logChange();
    if (this.many !== null) {
      const i = this.many.indexOf(loc);
      if (i < 0) return false;
      const last = this.many.pop()!;
      if (i < this.many.length) this.many[i] = last;
      if (this.many.length === 1) {
        this.one = this.many[0]!;
        this.many = null;
      }
      return true;
    }
    if (this.one === loc) {
      this.one = -1;
      return true;
    }
    return false;
  }

  /** Whether `loc` is in the list. */
  has(loc: number): boolean {
    return this.many !== null ? this.many.includes(loc) : this.one === loc;
  }

  private logChange(): void {
    this.queued = true;
    this.changeLog!.push(this);
  }

  /** A copy of the locations (callers that zap while iterating need one). */
  toArray(): number[] {
    return this.many !== null ? this.many.slice() : this.one >= 0 ? [this.one] : [];
  }
}

/**
 * Reverse maps, per memslot and per level (KVM `slot->arch.rmap[level - 1][gfn_to_index(gfn, base_gfn,
 * level)]`, arch/x86/kvm/mmu/mmu.c `__gfn_to_rmap`): for a gfn, every leaf spte that maps it at that level.
 * KVM allocates the arrays per slot up front; here the heads of each (slot, level) are kept by index in a map
 * and made on first use, so that a large slot (1 TiB is 2^28 level-1 heads) costs only what is mapped.
 */
export class Rmaps {
  private readonly perSlot = new Map<number, Map<number, SpteList>[]>();
  /** The same per-slot arrays by slot id (a number-keyed array read per `head`, not a Map lookup). */
  private readonly bySlotId: (Map<number, SpteList>[] | undefined)[] = [];
  /**
   * The rmap heads added to or removed from since the audit last drained this log (each at most once, with
   * `queued` set). Bounded by the number of heads, so it needs no reader to stay small.
   */
  readonly changed: SpteList[] = [];

  constructor(private readonly memory: GuestMemory) {
    for (const s of memory.slots) {
      const levels: Map<number, SpteList>[] = [];
      for (let l = 1; l <= RMAP_LEVELS; l++) levels.push(new Map());
      this.perSlot.set(s.id, levels);
      this.bySlotId[s.id] = levels;
    }
  }

  /** The rmap head of (gfn, level), or null when no memslot holds the gfn. */
  head(gfn: number, level: number, create: boolean): SpteList | null {
    const s = this.memory.slotForGfn(gfn);
    if (s === null) return null;
    const arr = (this.bySlotId[s.id] ?? this.perSlot.get(s.id)!)[level - 1]!;
    const i = level === 1 ? gfn - s.baseGfn : gfnToIndex(gfn, s.baseGfn, level);
    let h = arr.get(i);
    if (h === undefined) {
      if (!create) return null;
      h = new SpteList();
      h.changeLog = this.changed;
      arr.set(i, h);
    }
    return h;
  }

  /** Every (slot, level, index) head that is not empty, in that order, for the audit. */
  *entries(): Generator<{ slot: Memslot; level: number; index: number; list: SpteList }> {
    for (const s of this.memory.slots) {
      const levels = this.perSlot.get(s.id)!;
      for (let l = 1; l <= RMAP_LEVELS; l++) {
        const arr = levels[l - 1]!;
        for (const i of [...arr.keys()].sort((x, y) => x - y)) {
          const list = arr.get(i)!;
          if (list.size > 0) yield { slot: s, level: l, index: i, list };
        }
      }
    }
  }
}

/**
 * The gfns one entry of each paging level maps (index = level, 1 to 6): 2^(9 * (level - 1)), from a table,
 * since V8 computes `**` with a call.
 */
export const GFNS_PER_ENTRY: readonly number[] = [0, 1, 512, 262144, 134217728, 68719476736, 35184372088832];

/**
 * The first gfn of the aligned run of `span` gfns (a power of two) that holds `gfn`: `Math.floor(gfn / span) * span`,
 * by a mask while span <= 2^31 (exact for any integer gfn below 2^53), so that the result is an integer for V8 too (a
 * page gfn made by the division was a heap number, and V8 then kept every MMU page's `gfn` as a double).
 */
export function spanStart(gfn: number, span: number): number {
  return span <= 0x80000000 ? gfn - (gfn & (span - 1)) : Math.floor(gfn / span) * span;
}

/** KVM `gfn_to_index`: the rmap index of `gfn` at `level` within a slot starting at `baseGfn`. */
export function gfnToIndex(gfn: number, baseGfn: number, level: number): number {
  const d = GFNS_PER_ENTRY[level]!;
  return Math.floor(gfn / d) - Math.floor(baseGfn / d);
}
