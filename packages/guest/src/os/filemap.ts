import { PAGE_SIZE, PT_ACCESSED, PT_PRESENT, PT_USER, type Vcpu } from '@vmexit/core';
import { FRAME_CACHE } from './frames.js';
import { readPte, setPte } from './pgtable.js';
import type { PteValue } from './pte.js';
import type { KernelState } from './state.js';
import type { FileObject } from './vma.js';

/** The deterministic content word of page `index` of file `id`. */
export function fileWord(id: number, index: number): number {
  let h = Math.imul(id, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b);
  h ^= h >>> 15;
  return Math.imul(h, 0xc2b2ae35) >>> 0;
}

/** The file object of `path`, created on first use (ids in order of first use). */
export function lookupFile(k: KernelState, path: string): FileObject {
  let f = k.files.get(path);
  if (f === undefined) {
    f = { id: k.files.size + 1, path, pages: new Map() };
    k.files.set(path, f);
  }
  return f;
}

/** The page cache page `index` of `file`, read in on a miss (mm/filemap.c `filemap_fault`: the block layer's copy into a new page). */
export function cachePage(k: KernelState, v: Vcpu, file: FileObject, index: number): number {
  let f = file.pages.get(index);
  if (f !== undefined) return f;
  f = k.frames.alloc(FRAME_CACHE);
  k.stats.pageCacheMisses++;
  // The file's contents: a deterministic word per (file, page), stored by the kernel through the direct map.
  v.repStos(k.dm + f * PAGE_SIZE, PAGE_SIZE / 4, 4, fileWord(file.id, index));
  file.pages.set(index, f);
  return f;
}

/**
 * The pte of a read fault on page-cache frame `frame` (set_pte_range: `mk_pte(page, vma->vm_page_prot)`): x86's
 * PAGE_READONLY, PAGE_COPY and PAGE_SHARED carry `___A`, and neither the faulting pte nor a prefaulted one is
 * made old (`arch_wants_old_prefaulted_pte` is false but on arm64; `pte_sw_mkyoung` does nothing on x86); no
 * R/W (a private mapping's PAGE_COPY, a shared one's write notification), no D.
 */
export function fileReadLeaf(frame: number): number {
  return (frame * PAGE_SIZE) | PT_PRESENT | PT_USER | PT_ACCESSED;
}

/**
 * mm/filemap.c `filemap_map_pages` for the ptes [from, to] of the page table at `pt`, slot `from` being file page
 * `first`: each page already in the page cache (`next_uptodate_folio`: this kernel's cached pages are all
 * uptodate and unlocked) whose pte is none (`filemap_map_order0_folio`: `pte_none`) gets a read-only pte
 * (`set_pte_range`, one `set_pte`) and a reference (`folio_ref_inc`), in ascending order; a pte is read only
 * for a cached page. Returns whether slot `fault` was mapped (VM_FAULT_NOPAGE: the fault is resolved).
 */
export function mapCachedPages(
  k: KernelState,
  v: Vcpu,
  file: FileObject,
  first: number,
  pt: number,
  from: number,
  to: number,
  fault: number,
  hi: number,
): boolean {
  const e: PteValue = { lo: 0, hi: 0 };
  let mapped = false;
  for (let i = from; i <= to; i++) {
    const frame = file.pages.get(first + i - from);
    if (frame === undefined) continue;
    readPte(k, v, pt, i, e);
    if (e.lo !== 0 || e.hi !== 0) continue;
    setPte(k, v, pt, i, fileReadLeaf(frame), hi);
    k.frames.get(frame);
    if (i === fault) mapped = true;
  }
  return mapped;
}
