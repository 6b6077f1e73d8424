import { GuestAbort, hexU64, PAGE_SIZE, PT_DIRTY, PT_GLOBAL, PT_PAGE_SIZE, PT_PCD, PT_PRESENT, PT_PWT, PT_USER, PT_WRITABLE, type Vcpu } from '@vmexit/core';
import { FRAME_ANON } from './frames.js';
import { noteMapping } from './filemap.js';
import { forEachPte, frameOf, freeTables, getAndClear, inArena, leafHi, setPte, zap } from './pgtable.js';
import type { Process } from './process.js';
import { STACK_GUARD_GAP } from './layout.js';
import { HI_XD, PTE_PROTNONE } from './pte.js';
import type { KernelState } from './state.js';
import { flushRange } from './tlb.js';
import { PROT_NONE, PROT_READ, PROT_WRITE, VMA_ALIAS, VMA_ANON, VMA_FILE_SHARED, Vma, type FileObject } from './vma.js';

/*
 * The address-space system calls (Linux mm/mmap.c `do_mmap`/`do_vmi_munmap`/`brk`, mm/mprotect.c), run
 * by the kernel in a system call: the caller holds the vCPU in CPL 0.
 */

/**
 * mmap: a new area (MAP_FIXED replaces what was there). Returns its start. A length of 0 is EINVAL, one above
 * user space ENOMEM (mm/mmap.c `do_mmap`, before anything is placed or unmapped): a GuestAbort, nothing mapped,
 * so that no area is ever empty.
 */
export function doMmap(
  k: KernelState,
  v: Vcpu,
  proc: Process,
  addr: number | null,
  length: number,
  prot: number,
  backing: number,
  file: FileObject | null,
  offset: number,
): number {
  k.stats.mmaps++;
  if (length === 0) throw new GuestAbort('mmap of 0 bytes: EINVAL (an mmap maps at least a page)');
  const L = k.layout;
  const len = Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
  // do_mmap: `len = PAGE_ALIGN(len); if (!len || len > TASK_SIZE) return -ENOMEM` (a length that is negative or
  // not a number, which the unsigned one cannot be, fails here too)
  if (!(len > 0 && len <= L.userLimit)) throw new GuestAbort(`mmap of ${length} bytes: ENOMEM (more than user space holds)`);
  let start: number;
  const arena = k.aliased && backing === VMA_ANON && addr === null;
  if (addr !== null) {
    start = addr;
    if (start % PAGE_SIZE !== 0 || start < 0 || start + len > L.userLimit) {
      throw new GuestAbort(`mmap of [${hexU64(start)}, ${hexU64(start + len)}) is outside user space`);
    }
    if (proc.vmas.intersects(start, start + len)) unmapRange(k, v, proc, start, start + len);
  } else {
    start = arena ? proc.vmas.findGap(L.arenaBase, len, L.arenaBase + L.arenaSize) : unmappedArea(k, proc, len);
    if (start < 0) throw new GuestAbort(`mmap of ${len} bytes: no room in the address space (ENOMEM)`);
  }
  proc.vmas.insert(new Vma(start, start + len, prot, backing, file, offset));
  noteMapping(file, offset, len);
  if (arena) proc.vmas.insert(new Vma(start + L.arenaSize, start + L.arenaSize + len, PROT_READ, VMA_ALIAS, null, 0));
  return start;
}

/**
 * Where mmap(NULL) puts an area (arch/x86/kernel/sys_x86_64.c `arch_get_unmapped_area_topdown`): the highest
 * free range in [PAGE_SIZE, mm->mmap_base) (`vm_unmapped_area` with VM_UNMAPPED_AREA_TOPDOWN, info.low_limit =
 * PAGE_SIZE, info.high_limit = mmap_base; align_mask 0: `get_align_mask` is 0 but for AMD family 15h with
 * randomization), else, when that fails, the lowest in [TASK_UNMAPPED_BASE, TASK_SIZE) (the bottom-up
 * `arch_get_unmapped_area` it falls back to). -1 if neither has room. With aliased-pdes the arena and its alias
 * view are left out (they are kept for anonymous mappings, see doMmap).
 */
function unmappedArea(k: KernelState, proc: Process, len: number): number {
  const L = k.layout;
  for (const [lo, hi] of outsideArena(k, PAGE_SIZE, L.mmapBase).reverse()) {
    const at = topDown(proc, lo, len, hi);
    if (at >= 0) return at;
  }
  for (const [lo, hi] of outsideArena(k, L.legacyMmapBase, L.userLimit)) {
    const at = bottomUp(proc, lo, len, hi);
    if (at >= 0) return at;
  }
  return -1;
}

/** Whether the area above a range ending at `end` is a stack whose guard gap (`vm_start_gap`: stack_guard_gap below it) reaches into the range. */
function stackAbove(proc: Process, end: number): Vma | null {
  const next = proc.vmas.firstFrom(end);
  return next !== null && next.growsDown && next.start - STACK_GUARD_GAP < end ? next : null;
}

/**
 * mm/mmap.c `unmapped_area_topdown`: the highest gap with room; if the area above it grows down and its guard
 * gap reaches into the range (`vm_start_gap(tmp) < gap_end`), again below the guard gap (high_limit =
 * vm_start_gap(tmp)).
 */
function topDown(proc: Process, lo: number, len: number, hi: number): number {
  for (;;) {
    const at = proc.vmas.findGapTopDown(lo, len, hi);
    if (at < 0) return -1;
    const stack = stackAbove(proc, at + len);
    if (stack === null) return at;
    hi = stack.start - STACK_GUARD_GAP;
  }
}

/** mm/mmap.c `unmapped_area`: the lowest gap with room; if a stack's guard gap reaches into it, again above that stack (low_limit = tmp->vm_end). */
function bottomUp(proc: Process, lo: number, len: number, hi: number): number {
  for (;;) {
    const at = proc.vmas.findGap(lo, len, hi);
    if (at < 0) return -1;
    const stack = stackAbove(proc, at + len);
    if (stack === null) return at;
    lo = stack.end;
  }
}

/** The parts of [lo, hi) outside the aliased-pdes arena and its alias view (all of it without that personality), in address order. */
function outsideArena(k: KernelState, lo: number, hi: number): [number, number][] {
  const L = k.layout;
  if (!k.aliased) return [[lo, hi]];
  const a = L.arenaBase;
  const b = L.arenaBase + 2 * L.arenaSize;
  const out: [number, number][] = [];
  if (lo < Math.min(hi, a)) out.push([lo, Math.min(hi, a)]);
  if (Math.max(lo, b) < hi) out.push([Math.max(lo, b), hi]);
  return out;
}

export function doMunmap(k: KernelState, v: Vcpu, proc: Process, start: number, length: number): void {
  k.stats.munmaps++;
  const end = start + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
  unmapRange(k, v, proc, start, end);
  if (k.aliased && inArena(k, start)) {
    const a = k.layout.arenaSize;
    proc.vmas.remove(proc.vmas.carve(start + a, end + a));
  }
}

/**
 * Removes the areas of [start, end): zaps their ptes, frees the tables no area uses, then flushes, as
 * `unmap_region` does with one mmu_gather (`unmap_vmas`, `free_pgtables`, `tlb_finish_mmu`). The range flushed
 * is that of the ptes cleared (`tlb_remove_tlb_entry`) and of the first page mapped by each table freed
 * (`pte_free_tlb`, `pmd_free_tlb`, `pud_free_tlb`: `tlb_flush_p?d_range(tlb, address, PAGE_SIZE)`), stepping a
 * page when ptes were cleared, else the span of the lowest level whose entries were (`tlb_get_unmap_shift`); a
 * table freed sets the gather's `freed_tables`, which makes the flush reach lazy vCPUs too (tlb.ts).
 */
function unmapRange(k: KernelState, v: Vcpu, proc: Process, start: number, end: number): void {
  const areas = proc.vmas.carve(start, end);
  if (areas.length === 0) return;
  let lo = Infinity;
  let hi = -Infinity;
  let stride = Infinity;
  let freed = false;
  for (const a of areas) {
    if (a.backing === VMA_ALIAS) continue;
    const r = zap(k, v, proc, a.start, a.end);
    if (r !== null) {
      lo = Math.min(lo, r[0]);
      hi = Math.max(hi, r[1]);
      stride = PAGE_SIZE;
    }
  }
  proc.vmas.remove(areas);
  const L = k.layout;
  freeTables(k, v, proc, areas[0]!.start, areas[areas.length - 1]!.end, false, (va, level) => {
    freed = true;
    lo = Math.min(lo, va);
    hi = Math.max(hi, va + PAGE_SIZE);
    // a table of `level` freed clears an entry of level + 1 (p4d_free_tlb, at the top of 5-level, marks none)
    if (level + 1 < 5) stride = Math.min(stride, 2 ** L.shift[level + 1]!);
  });
  if (lo < hi) flushRange(k, v, proc, lo, hi, stride === Infinity ? PAGE_SIZE : stride, freed);
}

/**
 * mprotect (mm/mprotect.c `change_protection`): new rights for the areas whose rights change, and each of
 * their present ptes rewritten with `pte_modify`: a private writable area's
 * vm_page_prot is read-only (PAGE_COPY: the write fault makes a pte writable), but change_pte_range makes
 * writable at once a pte the write fault would only reuse (MM_CP_TRY_CHANGE_WRITABLE, `canChangeWritable`);
 * PROT_NONE makes them not present. Each present pte (PROT_NONE ones too: x86 `pte_present`) is stored twice,
 * changed or not: `ptep_modify_prot_start` clears it (include/linux/pgtable.h `__ptep_modify_prot_start`:
 * `ptep_get_and_clear`, on x86-64 an xchg that stores 0), `ptep_modify_prot_commit` stores the new value
 * (`set_pte_at`). Then each area's gathered range is flushed (`tlb_end_vma`): that of the ptes for which
 * `pte_needs_flush` holds (`tlb_flush_pte_range`).
 */
export function doMprotect(k: KernelState, v: Vcpu, proc: Process, start: number, length: number, prot: number): void {
  k.stats.mprotects++;
  const end = start + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
  const areas = proc.vmas.carve(start, end);
  for (const a of areas) {
    if (a.backing === VMA_ALIAS) continue;
    // mprotect_fixup leaves an area whose rights do not change alone (newflags == oldflags).
    if (a.prot === prot) continue;
    a.prot = prot;
    let lo0 = Infinity;
    let hi0 = -Infinity;
    const hiNew = leafHi(k, a.prot);
    forEachPte(k, v, proc, a.start, a.end, (pt, idx, va, lo, hi) => {
      let n = lo & ~(PT_PRESENT | PT_WRITABLE | PTE_PROTNONE);
      if (prot === PROT_NONE) n |= PTE_PROTNONE;
      else {
        n |= PT_PRESENT;
        if ((prot & PROT_WRITE) !== 0 && canChangeWritable(k, a, lo, hi)) n |= PT_WRITABLE;
      }
      const nh = k.esz === 8 ? (hi & ~HI_XD) | hiNew | 0 : 0;
      getAndClear(k, v, pt, idx);
      setPte(k, v, pt, idx, n, nh);
      if (pteNeedsFlush(lo, hi, n, nh)) {
        lo0 = Math.min(lo0, va);
        hi0 = Math.max(hi0, va + PAGE_SIZE);
      }
    });
    if (lo0 < hi0) flushRange(k, v, proc, lo0, hi0);
  }
  proc.vmas.mergeAdjacent();
}

/** Flags whose change needs a flush (x86 `pte_flags_need_flush`'s flush_on_change): R/W, U/S, PWT, PCD, PAT (bit 7 of a pte), G; and XD. */
const FLUSH_ON_CHANGE = PT_WRITABLE | PT_USER | PT_PWT | PT_PCD | PT_PAGE_SIZE | PT_GLOBAL;
/** Flags whose clearing needs a flush (flush_on_clear, A ignored as pte_needs_flush does): P, D. */
const FLUSH_ON_CLEAR = PT_PRESENT | PT_DIRTY;

/**
 * arch/x86/include/asm/tlbflush.h `pte_needs_flush`: no flush for an old pte that was not present (the TLB
 * holds nothing for it); a flush when the frame changes, when a flush_on_change flag (or XD, or a protection
 * key) changes, or when P or D is cleared; software bits (PROT_NONE's among them) and A are ignored.
 */
function pteNeedsFlush(oldLo: number, oldHi: number, newLo: number, newHi: number): boolean {
  if ((oldLo & PT_PRESENT) === 0) return false;
  if (oldLo >>> 12 !== newLo >>> 12 || (oldHi & 0xfffff) !== (newHi & 0xfffff)) return true;
  const diff = oldLo ^ newLo;
  if ((diff & oldLo & FLUSH_ON_CLEAR) !== 0) return true;
  // bits 59-63 of the high half: the protection key and XD
  return (diff & FLUSH_ON_CHANGE) !== 0 || ((oldHi ^ newHi) & 0xf8000000) !== 0;
}

/**
 * mm/mprotect.c `can_change_pte_writable`, for a pte of an area that becomes writable: in a shared file
 * area, a dirty pte (its write notification happened); in a private area, a pte of an anonymous page that
 * is exclusive (PageAnonExclusive: not the zero page, not a page-cache page, not shared since a fork), as
 * do_wp_page would reuse it. (Linux 5.19 and later; before, such a pte stayed read-only until a write fault.)
 */
function canChangeWritable(k: KernelState, a: Vma, lo: number, hi: number): boolean {
  if (a.backing === VMA_FILE_SHARED) return (lo & PT_DIRTY) !== 0;
  const frame = frameOf(k, lo, hi);
  return frame !== k.zeroFrame && k.frames.useOf(frame) === FRAME_ANON && k.frames.isExclusive(frame);
}

/** brk: moves the end of the heap ([brkBase, brkEnd), anonymous, read-write). */
export function doBrk(k: KernelState, v: Vcpu, proc: Process, newEnd: number): number {
  k.stats.brks++;
  const end = Math.ceil(newEnd / PAGE_SIZE) * PAGE_SIZE;
  const cur = Math.ceil(proc.brkEnd / PAGE_SIZE) * PAGE_SIZE;
  if (end > cur) {
    if (proc.vmas.intersects(cur, end)) return proc.brkEnd;
    // do_brk_flags: the heap's area grows (vma_expand) when the area just below is the heap, whether or not it
    // has anonymous pages yet (can_vma_merge_after: an anon_vma merges with none), so fork copies the heap's
    // ptes as one area; else a new area.
    const heap = cur > 0 ? proc.vmas.find(cur - 1) : null;
    if (heap !== null && heap.end === cur && heap.backing === VMA_ANON && heap.prot === (PROT_READ | PROT_WRITE) && !heap.growsDown) heap.end = end;
    else proc.vmas.insert(new Vma(cur, end, PROT_READ | PROT_WRITE, VMA_ANON, null, 0));
    proc.vmas.mergeAdjacent();
  } else if (end < cur) {
    unmapRange(k, v, proc, end, cur);
  }
  proc.brkEnd = newEnd;
  return newEnd;
}
