import { GuestAbort, PAGE_SIZE, PT_DIRTY, PT_PRESENT, PT_WRITABLE, type Vcpu } from '@vmexit/core';
import { hexa } from './errors.js';
import { forEachPte, freeTables, inArena, leafHi, writePte, zap } from './pgtable.js';
import type { Process } from './process.js';
import { HI_XD, PTE_PROTNONE } from './pte.js';
import type { KernelState } from './state.js';
import { flushRange } from './tlb.js';
import { PROT_NONE, PROT_READ, PROT_WRITE, VMA_ALIAS, VMA_ANON, VMA_FILE_SHARED, Vma, type FileObject } from './vma.js';

/*
 * The address-space system calls (Linux mm/mmap.c `do_mmap`/`do_vmi_munmap`/`brk`, mm/mprotect.c), run
 * by the kernel in a system call: the caller holds the vCPU in CPL 0.
 */

/** mmap: a new area (MAP_FIXED replaces what was there). Returns its start. */
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
  const L = k.layout;
  const len = Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
  let start: number;
  const arena = k.aliased && backing === VMA_ANON && addr === null;
  if (addr !== null) {
    start = addr;
    if (start % PAGE_SIZE !== 0 || start < 0 || start + len > L.userLimit) {
      throw new GuestAbort(`mmap of [${hexa(start)}, ${hexa(start + len)}) is outside user space`);
    }
    if (proc.vmas.intersects(start, start + len)) unmapRange(k, v, proc, start, start + len);
  } else {
    start = arena ? proc.vmas.findGap(L.arenaBase, len, L.arenaBase + L.arenaSize) : proc.vmas.findGap(L.mmapBase, len, L.userLimit);
    if (start < 0) throw new GuestAbort(`mmap of ${len} bytes: no room in the address space (ENOMEM)`);
  }
  proc.vmas.insert(new Vma(start, start + len, prot, backing, file, offset));
  if (arena) proc.vmas.insert(new Vma(start + L.arenaSize, start + L.arenaSize + len, PROT_READ, VMA_ALIAS, null, 0));
  return start;
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

/** Removes the areas of [start, end): zaps their ptes, flushes what was present, frees the tables no area uses. */
function unmapRange(k: KernelState, v: Vcpu, proc: Process, start: number, end: number): void {
  const areas = proc.vmas.carve(start, end);
  if (areas.length === 0) return;
  let lo = Infinity;
  let hi = -Infinity;
  for (const a of areas) {
    if (a.backing === VMA_ALIAS) continue;
    const r = zap(k, v, proc, a.start, a.end);
    if (r !== null) {
      lo = Math.min(lo, r[0]);
      hi = Math.max(hi, r[1]);
    }
  }
  proc.vmas.remove(areas);
  if (lo < hi) flushRange(k, v, proc, lo, hi);
  freeTables(k, v, proc, areas[0]!.start, areas[areas.length - 1]!.end, false);
}

/**
 * mprotect (mm/mprotect.c `change_protection`): new rights for the areas, and each present pte rewritten
 * with `pte_modify`: a private writable area keeps its ptes read-only (PAGE_COPY: the write fault makes
 * them writable); PROT_NONE makes them not present. The range is flushed when a pte changed.
 */
export function doMprotect(k: KernelState, v: Vcpu, proc: Process, start: number, length: number, prot: number): void {
  k.stats.mprotects++;
  const end = start + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
  const areas = proc.vmas.carve(start, end);
  for (const a of areas) {
    if (a.backing === VMA_ALIAS) continue;
    a.prot = prot;
    let changed = 0;
    const hiNew = leafHi(k, a.prot);
    forEachPte(k, v, proc, a.start, a.end, (pt, idx, _va, lo, hi) => {
      let n = lo & ~(PT_PRESENT | PT_WRITABLE | PTE_PROTNONE);
      if (prot === PROT_NONE) n |= PTE_PROTNONE;
      else {
        n |= PT_PRESENT;
        if (a.backing === VMA_FILE_SHARED && (prot & PROT_WRITE) !== 0 && (lo & PT_DIRTY) !== 0) n |= PT_WRITABLE;
      }
      const nh = k.esz === 8 ? ((hi & ~HI_XD) | hiNew) >>> 0 : 0;
      if (n >>> 0 !== lo >>> 0 || nh !== hi >>> 0) {
        writePte(k, v, pt, idx, n, nh);
        changed++;
      }
    });
    if (changed > 0) flushRange(k, v, proc, a.start, a.end);
  }
  proc.vmas.mergeAdjacent();
}

/** brk: moves the end of the heap ([brkBase, brkEnd), anonymous, read-write). */
export function doBrk(k: KernelState, v: Vcpu, proc: Process, newEnd: number): number {
  k.stats.brks++;
  const end = Math.ceil(newEnd / PAGE_SIZE) * PAGE_SIZE;
  const cur = Math.ceil(proc.brkEnd / PAGE_SIZE) * PAGE_SIZE;
  if (end > cur) {
    if (proc.vmas.intersects(cur, end)) return proc.brkEnd;
    proc.vmas.insert(new Vma(cur, end, PROT_READ | PROT_WRITE, VMA_ANON, null, 0));
    proc.vmas.mergeAdjacent();
  } else if (end < cur) {
    unmapRange(k, v, proc, end, cur);
  }
  proc.brkEnd = newEnd;
  return newEnd;
}
