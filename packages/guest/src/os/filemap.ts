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
    f = { id: k.files.size + 1, path, pages: new Map(), ra: { filePages: 0, marked: new Set(), start: 0, size: 0, asyncSize: 0, mmapMiss: 0 } };
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

/** An area maps `bytes` of `file` from byte `offset`: the file is at least that long. */
export function noteMapping(file: FileObject | null, offset: number, bytes: number): void {
  if (file === null || bytes <= 0) return;
  const r = file.ra;
  r.filePages = Math.max(r.filePages, Math.ceil((offset + bytes) / PAGE_SIZE));
}

/** include/linux/mm.h `VM_READAHEAD_PAGES` (SZ_128K / PAGE_SIZE): a file's `ra_pages`. */
const RA_PAGES = 32;
/** mm/filemap.c `MMAP_LOTSAMISS`: past this many more misses than hits, no read-around. */
const MMAP_LOTSAMISS = 100;

/**
 * mm/filemap.c `filemap_fault` (Linux 6.6) for file page `index`: a page-cache hit (`do_async_mmap_readahead`:
 * one hit less in mmap_miss, and the next window read when the page is marked PG_readahead), or a miss
 * (`do_sync_mmap_readahead`: the read-around window, then the page itself if that did not read it). The page is
 * in the cache afterwards. Returns whether the fault ends in VM_FAULT_RETRY: to read, filemap_fault drops the
 * mmap lock (mm/internal.h `maybe_unlock_mmap_for_io`, on the first attempt of a fault that may retry, as x86's
 * user faults may: FAULT_FLAG_DEFAULT), on a miss and on a hit of a PG_readahead page, and the fault is retried
 * with FAULT_FLAG_TRIED (arch/x86/mm/fault.c `do_user_addr_fault`), whose filemap_fault, a hit, does nothing
 * more (`if (!(vmf->flags & FAULT_FLAG_TRIED)) do_async_mmap_readahead`): the caller retries without calling
 * this again. The model has no madvise, so no area is VM_RAND_READ (no read-ahead) or VM_SEQ_READ
 * (`page_cache_sync_ra`), and its mappings have no large folios (`page_cache_ra_order` falls back to order 0).
 */
export function filemapFault(k: KernelState, v: Vcpu, file: FileObject, index: number): boolean {
  const ra = file.ra;
  if (file.pages.has(index)) {
    if (ra.mmapMiss > 0) ra.mmapMiss--;
    if (!ra.marked.has(index)) return false;
    asyncReadahead(k, v, file, index);
    return true;
  }
  if (ra.mmapMiss < MMAP_LOTSAMISS * 10) ra.mmapMiss++;
  if (ra.mmapMiss <= MMAP_LOTSAMISS) {
    // mmap read-around: ra_pages around the page, the last quarter asynchronous (page_cache_ra_order falls
    // back to do_page_cache_ra for order-0 pages).
    ra.start = Math.max(0, index - RA_PAGES / 2);
    ra.size = RA_PAGES;
    ra.asyncSize = RA_PAGES / 4;
    readPages(k, v, file, ra.start, ra.size, ra.asyncSize);
  }
  // The page itself if read-around did not read it (__filemap_get_folio, then page_not_uptodate's read).
  cachePage(k, v, file, index);
  return true;
}

/** mm/readahead.c `get_next_ra_size`: the next window, quadrupled or doubled up to `max`. */
function nextRaSize(cur: number, max: number): number {
  if (cur < max / 16) return 4 * cur;
  if (cur <= max / 2) return 2 * cur;
  return max;
}

/**
 * mm/readahead.c `page_cache_async_ra` -> `ondemand_readahead` (Linux 6.6) on a hit on PG_readahead page
 * `index` (`req_size` is ra_pages): the mark is cleared and the window pushed forward.
 */
function asyncReadahead(k: KernelState, v: Vcpu, file: FileObject, index: number): void {
  const ra = file.ra;
  const max = RA_PAGES;
  ra.marked.delete(index);
  if (index === 0) {
    // initial_readahead: get_init_ra_size(ra_pages, ra_pages) is ra_pages, async_size the whole window.
    ra.start = 0;
    ra.size = max;
    ra.asyncSize = max;
  } else if (index === ra.start + ra.size - ra.asyncSize || index === ra.start + ra.size) {
    // The expected index: sequential, ramp up and push the window forward.
    ra.start += ra.size;
    ra.size = nextRaSize(ra.size, max);
    ra.asyncSize = ra.size;
  } else {
    // A marked page without valid state: the window starts at the next page not cached
    // (`page_cache_next_miss(mapping, index + 1, max_pages)`).
    let start = index + 1;
    while (start < index + max && file.pages.has(start)) start++;
    ra.start = start;
    ra.size = nextRaSize(start - index + max, max);
    ra.asyncSize = ra.size;
  }
  // readit: a window that would hit its own mark at once takes the next window in now.
  if (index === ra.start && ra.size === ra.asyncSize) {
    const add = nextRaSize(ra.size, max);
    if (ra.size + add <= max) {
      ra.asyncSize = add;
      ra.size += add;
    } else {
      ra.size = max;
      ra.asyncSize = max >> 1;
    }
  }
  readPages(k, v, file, ra.start, ra.size, ra.asyncSize);
}

/**
 * mm/readahead.c `do_page_cache_ra` -> `page_cache_ra_unbounded`: reads the pages of [index, index + nr) not
 * cached (clipped to the file's last page), in ascending order, each as a miss reads it (`cachePage`), and
 * marks PG_readahead the page `lookahead` before the end of the clipped window if that one was read here.
 */
function readPages(k: KernelState, v: Vcpu, file: FileObject, index: number, nr: number, lookahead: number): void {
  const ra = file.ra;
  if (ra.filePages === 0 || index > ra.filePages - 1) return;
  const n = Math.min(nr, ra.filePages - index);
  for (let i = 0; i < n; i++) {
    if (file.pages.has(index + i)) continue;
    cachePage(k, v, file, index + i);
    if (i === n - lookahead) ra.marked.add(index + i);
  }
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
 * uptodate and unlocked, but a PG_readahead page is skipped, left for `filemap_fault` to trigger the async
 * read-ahead) whose pte is none (`filemap_map_order0_folio`: `pte_none`) gets a read-only pte (`set_pte_range`,
 * one `set_pte`) and a reference (`folio_ref_inc`), in ascending order; a pte is read only for a cached page.
 * Each cached page found, mapped here or already mapped, counts as a hit against the file's mmap_miss
 * (`filemap_map_order0_folio`, Linux 6.4 to 6.8; 6.9 and later skip PG_workingset pages, which the model, whose
 * page cache is never reclaimed, has none of). Returns whether slot `fault` was mapped
 * (VM_FAULT_NOPAGE: the fault is resolved).
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
  const ra = file.ra;
  let mapped = false;
  for (let i = from; i <= to; i++) {
    const frame = file.pages.get(first + i - from);
    if (frame === undefined || ra.marked.has(first + i - from)) continue;
    // A hit for each page found, its pte none or not (`(*mmap_miss)++` comes before the `pte_none` check).
    if (ra.mmapMiss > 0) ra.mmapMiss--;
    readPte(k, v, pt, i, e);
    if (e.lo !== 0 || e.hi !== 0) continue;
    setPte(k, v, pt, i, fileReadLeaf(frame), hi);
    k.frames.get(frame);
    if (i === fault) mapped = true;
  }
  return mapped;
}
