import { PAGE_SIZE, PT_PRESENT, PT_ACCESSED, PT_USER, PT_WRITABLE, type Vcpu } from '@vmexit/core';
import { FRAME_TABLE } from './frames.js';
import { MODE_PAE, tableIndex } from './layout.js';
import type { Process } from './process.js';
import { HI_XD, JUNK_PDPTE_HI, JUNK_PDPTE_LO, PTE_PROTNONE, USER_TABLE, pteFrame, type PteValue } from './pte.js';
import type { KernelState } from './state.js';
import { PROT_EXEC } from './vma.js';

/*
 * Page-table operations, every entry read and written through a vCPU via the kernel direct map (Linux
 * `mm/pgtable-generic.c`, the `p*d_alloc` family of `mm/memory.c` and `pgd_alloc` of arch/x86/mm/pgtable.c).
 */

/** Reads entry `idx` of the table at `tablePa` into `out`: both halves of a 64-bit entry (one 8-byte load). */
export function readPte(k: KernelState, v: Vcpu, tablePa: number, idx: number, out: PteValue): PteValue {
  out.lo = v.read(k.dm + tablePa + idx * k.esz, k.esz);
  out.hi = k.esz === 8 ? v.valueHi : 0;
  return out;
}

/**
 * Writes entry `idx` of the table at `tablePa`: one aligned 4- or 8-byte store (Linux `set_pte`), or with
 * byte-pte-writes one 1-byte store per byte that changes - the present byte last when the entry becomes
 * present, first when it stops being present.
 */
export function writePte(k: KernelState, v: Vcpu, tablePa: number, idx: number, lo: number, hi: number): void {
  const esz = k.esz;
  const va = k.dm + tablePa + idx * esz;
  k.stats.pteWrites++;
  if (!k.byteWrites) {
    v.write(va, esz, lo | 0, hi | 0);
    return;
  }
  const oldLo = v.read(va, esz);
  const oldHi = esz === 8 ? v.valueHi : 0;
  const byteOf = (l: number, h: number, b: number): number => (b < 4 ? (l >>> (8 * b)) & 0xff : (h >>> (8 * (b - 4))) & 0xff);
  const present = (lo & PT_PRESENT) !== 0;
  for (let n = 0; n < esz; n++) {
    const b = present ? esz - 1 - n : n;
    const nb = byteOf(lo, hi, b);
    if (nb !== byteOf(oldLo, oldHi, b)) v.write(va + b, 1, nb);
  }
}

/*
 * The stores of Linux's entry primitives (x86: arch/x86/include/asm/pgtable.h, pgtable_64.h, pgtable-2level.h,
 * pgtable-3level.h). An 8-byte entry is one store, but PAE Linux (32-bit, 8-byte entries) writes some
 * in halves: `native_set_pte` the high half then the low one, `native_pte_clear`/`native_pmd_clear` the low
 * half then the high one, and `ptep_set_wrprotect` is a cmpxchg of a `long`, the low half. The atomic ones
 * (`ptep_get_and_clear`: xchg, PAE cmpxchg8b in `pxx_xchg64`; `set_pmd`, `set_pud`) are one store of the whole
 * entry. With byte-pte-writes, every one is `writePte`'s byte stores.
 */

/** One 4-byte store to half `half` (0: bits 31:0, 1: bits 63:32) of an 8-byte entry. */
function storeHalf(k: KernelState, v: Vcpu, table: number, idx: number, half: 0 | 1, value: number): void {
  k.stats.pteWrites++;
  v.write(k.dm + table + idx * 8 + half * 4, 4, value | 0);
}

function inHalves(k: KernelState): boolean {
  return k.layout.mode === MODE_PAE && !k.byteWrites;
}

/** Linux `set_pte` (`set_pte_at`, `set_ptes`, and `ptep_set_access_flags` when the pte changes). */
export function setPte(k: KernelState, v: Vcpu, pt: number, idx: number, lo: number, hi: number): void {
  if (!inHalves(k)) return writePte(k, v, pt, idx, lo, hi);
  storeHalf(k, v, pt, idx, 1, hi);
  storeHalf(k, v, pt, idx, 0, lo);
}

/** Linux `pte_clear`, `pmd_clear`, and `ptep_get_and_clear_full` of a whole mm (`native_local_ptep_get_and_clear`). */
export function clearEntry(k: KernelState, v: Vcpu, table: number, idx: number): void {
  if (!inHalves(k)) return writePte(k, v, table, idx, 0, 0);
  storeHalf(k, v, table, idx, 0, 0);
  storeHalf(k, v, table, idx, 1, 0);
}

/** Linux `ptep_get_and_clear` (`ptep_clear_flush`, `ptep_modify_prot_start`, a zap of part of an mm): one atomic store of 0. */
export function getAndClear(k: KernelState, v: Vcpu, pt: number, idx: number): void {
  writePte(k, v, pt, idx, 0, 0);
}

/** Linux `ptep_set_wrprotect` (6.6 and later: a `try_cmpxchg` of a `long` at the pte) of the pte (`lo`, `hi`). */
export function setWrprotect(k: KernelState, v: Vcpu, pt: number, idx: number, lo: number, hi: number): void {
  if (!inHalves(k)) return writePte(k, v, pt, idx, lo & ~PT_WRITABLE, hi);
  storeHalf(k, v, pt, idx, 0, lo & ~PT_WRITABLE);
}

/** The frame an entry of this kernel's tables points to. */
export function frameOf(k: KernelState, lo: number, hi: number): number {
  return pteFrame(lo, hi, k.esz);
}

/** A zeroed page-table page of `level` for `proc` (`__get_free_page(GFP_PGTABLE_USER)` with __GFP_ZERO). */
export function allocTable(k: KernelState, v: Vcpu, proc: Process, level: number): number {
  const f = k.frames.alloc(FRAME_TABLE + level);
  const pa = f * PAGE_SIZE;
  // clear_page (rep stosq) through the direct map.
  v.repStos(k.dm + pa, PAGE_SIZE / 8, 8, 0, 0);
  proc.tables[level]++;
  k.stats.tablesAllocated[level]++;
  return pa;
}

export function freeTable(k: KernelState, proc: Process, pa: number, level: number): void {
  k.frames.put(pa / PAGE_SIZE);
  proc.tables[level]--;
  k.stats.tablesFreed[level]++;
}

/** Entry value of a user table entry at `level` (the PAE PDPT's entries carry P only, SDM Vol. 3A §4.4.1). */
export function tableEntry(k: KernelState, pa: number, level: number): number {
  return pa | (k.layout.mode === MODE_PAE && level === 3 ? PT_PRESENT : USER_TABLE) | 0;
}

/**
 * The physical address of the table of `level` that maps `va` in `proc`, allocating the missing tables
 * on the way down when `alloc` (Linux `pud_alloc`/`pmd_alloc`/`pte_alloc`); -1 when a table is missing.
 */
export function tableFor(k: KernelState, v: Vcpu, proc: Process, va: number, level: number, alloc: boolean): number {
  const L = k.layout;
  const e: PteValue = { lo: 0, hi: 0 };
  let table = proc.root;
  for (let lv = L.top; lv > level; lv--) {
    const idx = tableIndex(L, va, lv);
    readPte(k, v, table, idx, e);
    if ((e.lo & PT_PRESENT) === 0) {
      if (!alloc) return -1;
      const child = allocTable(k, v, proc, lv - 1);
      e.lo = tableEntry(k, child, lv);
      e.hi = 0;
      writePte(k, v, table, idx, e.lo, 0);
      if (L.mode === MODE_PAE && lv === 3) reloadPdptes(k, v, proc);
      if (k.aliased && lv - 1 === 1 && inArena(k, va)) setAliasPde(k, v, proc, va, child);
    }
    table = frameOf(k, e.lo, e.hi) * PAGE_SIZE;
  }
  return table;
}

/** PAE: a PDPTE changed in memory; the PDPTE registers are loaded only by a CR3 load (SDM Vol. 3A §4.4.1), so reload. */
export function reloadPdptes(k: KernelState, v: Vcpu, proc: Process): void {
  for (const w of k.machine.vcpus) {
    if (k.current[w.id] === proc || (w === v && w.cr3 === proc.root)) {
      k.lazyBehind[w.id] = false;
      w.movToCr3(proc.root);
      k.stats.fullFlushes++;
    }
  }
}

export function inArena(k: KernelState, va: number): boolean {
  const L = k.layout;
  return va >= L.arenaBase && va < L.arenaBase + L.arenaSize;
}

function inAliasWindow(k: KernelState, va: number): boolean {
  const L = k.layout;
  return va >= L.arenaBase + L.arenaSize && va < L.arenaBase + 2 * L.arenaSize;
}

/** aliased-pdes: the PDE of the alias view of `va` points to the same page table, without R/W (as Xen PAE does). */
function setAliasPde(k: KernelState, v: Vcpu, proc: Process, va: number, pt: number): void {
  const alias = va + k.layout.arenaSize;
  const pd = tableFor(k, v, proc, alias, 2, true);
  writePte(k, v, pd, tableIndex(k.layout, alias, 2), pt | PT_PRESENT | PT_USER | PT_ACCESSED | 0, 0);
}

function clearAliasPde(k: KernelState, v: Vcpu, proc: Process, va: number): void {
  const alias = va + k.layout.arenaSize;
  const pd = tableFor(k, v, proc, alias, 2, false);
  if (pd >= 0) writePte(k, v, pd, tableIndex(k.layout, alias, 2), 0, 0);
}

/** A new top table with the kernel half of init_mm (Linux `pgd_alloc`: `clone_pgd_range`, a memcpy). */
export function newMm(k: KernelState, v: Vcpu, proc: Process): void {
  const L = k.layout;
  const top = allocTable(k, v, proc, L.top);
  proc.root = top;
  if (L.mode === MODE_PAE) {
    // PDPTE 3: the shared kernel PD. The user PDs are preallocated (Linux `preallocate_pmds`), because a
    // PDPTE change needs a CR3 reload; Solaris instead leaves junk in the PDPTEs it does not use.
    writePte(k, v, top, 3, k.kernelPd | PT_PRESENT | 0, 0);
    for (let i = 0; i < 3; i++) {
      if (k.sparsePdptes) writePte(k, v, top, i, JUNK_PDPTE_LO ^ (i << 12), JUNK_PDPTE_HI);
      else writePte(k, v, top, i, tableEntry(k, allocTable(k, v, proc, 2), 3), 0);
    }
    return;
  }
  const first = L.kernelTopIndex;
  const n = L.entries - first;
  v.repMovs(k.dm + top + first * k.esz, k.dm + k.idleRoot + first * k.esz, n, k.esz);
}

// ------------------------------------------------------------------------------------------------
// The one range walker

/** What a walk of [start, end) does at the entries it meets. */
interface RangeWalk {
  /** The lowest level whose tables are read: 1 reaches the ptes, 2 stops at the PDEs. */
  readonly floor: 1 | 2;
  /** A pte (level 1) that is present or PROT_NONE. */
  pte?(pt: number, idx: number, va: number, lo: number, hi: number): void;
  /** A present table entry of `level` > 1 (mapping from `va`), before the walk below it. */
  before?(table: number, idx: number, va: number, level: number): void;
  /** An aliased-pdes alias PDE (level 2): never descended, the primary mapping owns the PT. */
  alias?(pd: number, idx: number, va: number, span: number): void;
  /** A present table entry of `level` > 1 pointing to `child`, after the walk below it. */
  after?(table: number, idx: number, va: number, span: number, level: number, child: number): void;
}

/**
 * Walks the tables under `table` (of `level`, mapping from `base`) that cover [start, end), reading every
 * entry through the vCPU and visiting only tables that exist; user entries only (it stops at the kernel
 * half of the top table).
 */
function walkRange(k: KernelState, v: Vcpu, table: number, level: number, base: number, start: number, end: number, w: RangeWalk): void {
  const L = k.layout;
  const span = 2 ** L.shift[level]!;
  const first = Math.max(0, Math.floor((start - base) / span));
  const n = L.mode === MODE_PAE && level === 3 ? 4 : L.entries;
  const last = Math.min(n - 1, Math.ceil((end - base) / span) - 1);
  const e: PteValue = { lo: 0, hi: 0 };
  for (let i = first; i <= last; i++) {
    const va = base + i * span;
    if (level === L.top && i >= L.kernelTopIndex) break;
    const { lo, hi } = readPte(k, v, table, i, e);
    if (level === 1) {
      if ((lo & (PT_PRESENT | PTE_PROTNONE)) !== 0) w.pte?.(table, i, va, lo, hi);
      continue;
    }
    if ((lo & PT_PRESENT) === 0) continue;
    if (level === 2 && k.aliased && inAliasWindow(k, va)) {
      w.alias?.(table, i, va, span);
      continue;
    }
    const child = frameOf(k, lo, hi) * PAGE_SIZE;
    w.before?.(table, i, va, level);
    if (level - 1 >= w.floor) walkRange(k, v, child, level - 1, va, start, end, w);
    w.after?.(table, i, va, span, level, child);
  }
}

/**
 * Calls `pte(pt, idx, va, lo, hi)` for every pte of `proc` in [start, end) that is present or PROT_NONE, and
 * `before(table, idx, va, level)` at every present entry of a level above that the walk descends through,
 * before it descends (`va`: the start of the entry's span).
 */
export function forEachPte(
  k: KernelState,
  v: Vcpu,
  proc: Process,
  start: number,
  end: number,
  pte: (pt: number, idx: number, va: number, lo: number, hi: number) => void,
  before?: (table: number, idx: number, va: number, level: number) => void,
): void {
  walkRange(k, v, proc.root, k.layout.top, 0, start, end, { floor: 1, pte, before });
}

/**
 * Frees the page-table pages under [start, end) whose whole span no area uses any more (Linux
 * `free_pgtables` with its floor and ceiling): clears the entry that points to each, then frees it.
 * `all` frees every user table (exit, exec). The top table is never freed here. `freed(va, level)` hears of
 * each table freed (of `level`, mapping from `va`), for the flush that follows (`pte_free_tlb` and kin).
 */
export function freeTables(
  k: KernelState,
  v: Vcpu,
  proc: Process,
  start: number,
  end: number,
  all: boolean,
  freed?: (va: number, level: number) => void,
): void {
  const L = k.layout;
  walkRange(k, v, proc.root, L.top, 0, start, end, {
    floor: 2,
    alias(pd, idx, va, span) {
      // An alias PDE: the PT belongs to the primary mapping; drop only the entry.
      if (all || !proc.vmas.intersects(va, va + span)) writePte(k, v, pd, idx, 0, 0);
    },
    after(table, idx, va, span, level, child) {
      if (!all && proc.vmas.intersects(va, va + span)) return;
      // PAE without sparse-pdptes keeps its preallocated PDs until the process ends.
      if (L.mode === MODE_PAE && level === 3 && !k.sparsePdptes && !all) return;
      if (L.mode === MODE_PAE && level === 3 && k.sparsePdptes) {
        writePte(k, v, table, idx, JUNK_PDPTE_LO ^ (idx << 12), JUNK_PDPTE_HI);
        if (!all) reloadPdptes(k, v, proc);
      } else if (level === 2) {
        clearEntry(k, v, table, idx); // free_pte_range: pmd_clear
      } else {
        writePte(k, v, table, idx, 0, 0); // pud_clear, p4d_clear, pgd_clear: set_p?d(0)
      }
      if (k.aliased && level - 1 === 1 && inArena(k, va)) clearAliasPde(k, v, proc, va);
      freeTable(k, proc, child, level - 1);
      // (A PAE PDPTE change was flushed by its CR3 reload above.)
      if (!(L.mode === MODE_PAE && level === 3)) freed?.(va, level - 1);
    },
  });
}

/**
 * Clears the ptes of [start, end) and drops their pages (`zap_pte_range`); returns [min, max) of the ptes it
 * cleared, or null: present ones and PROT_NONE ones, which x86 `pte_present` counts as present, so that
 * `tlb_remove_tlb_entry` adds them to the range to flush. Each pte is cleared by `ptep_get_and_clear_full`:
 * `ptep_get_and_clear`, or `native_local_ptep_get_and_clear` (a `pte_clear`) when `full` (the whole mm goes:
 * exit_mmap's fullmm mmu_gather).
 */
export function zap(k: KernelState, v: Vcpu, proc: Process, start: number, end: number, full = false): [number, number] | null {
  let min = Infinity;
  let max = -Infinity;
  forEachPte(k, v, proc, start, end, (pt, idx, va, lo, hi) => {
    if (full) clearEntry(k, v, pt, idx);
    else getAndClear(k, v, pt, idx);
    const frame = frameOf(k, lo, hi);
    if (frame !== k.zeroFrame) k.frames.put(frame);
    min = Math.min(min, va);
    max = Math.max(max, va + PAGE_SIZE);
  });
  return min < max ? [min, max] : null;
}

/** The pte of `va` in `proc` as (lo, hi) read from guest memory directly (no vCPU), or null if a table is missing. */
export function inspectPte(k: KernelState, proc: Process, va: number): { lo: number; hi: number; table: number } | null {
  const m = k.machine.memory;
  const L = k.layout;
  let table = proc.root;
  for (let lv = L.top; lv >= 1; lv--) {
    const a = table + tableIndex(L, va, lv) * k.esz;
    const lo = m.read32(a);
    const hi = k.esz === 8 ? m.read32(a + 4) : 0;
    if (lv === 1) return { lo, hi, table };
    if ((lo & PT_PRESENT) === 0) return null;
    table = frameOf(k, lo, hi) * PAGE_SIZE;
  }
  return null;
}

/** The high half of a user leaf for an area: XD when the area is not executable and EFER.NXE is on. */
export function leafHi(k: KernelState, prot: number): number {
  return k.nx && (prot & PROT_EXEC) === 0 ? HI_XD : 0;
}
