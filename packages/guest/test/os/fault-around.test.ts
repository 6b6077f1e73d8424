import { MODE_LONG4, MODE_PAE, PAGE_SIZE, PT_ACCESSED, PT_PRESENT, PT_USER, PT_WRITABLE, type Vcpu } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import type { Kernel, Process } from '../../src/os/kernel.js';
import { HI_XD } from '../../src/os/pte.js';
import { FAULT_COW, FAULT_FILE } from '../../src/os/stats.js';
import { PROT_READ, PROT_WRITE, VMA_ANON, VMA_FILE_PRIVATE, VMA_FILE_SHARED, type FileObject } from '../../src/os/vma.js';
import { boot, user } from '../helpers.js';
import { recordStores, type Store } from './stores.js';

/*
 * Fault-around (Linux 6.x): a read fault in a file mapping first maps the pages around the address that are
 * already in the page cache (mm/memory.c `do_read_fault` -> `do_fault_around` -> `filemap_map_pages`), and
 * reads the faulting page in (`__do_fault` -> `filemap_fault`, then `finish_fault`) only when fault-around
 * did not map it. The window is `fault_around_pages` (65536 bytes: 16 pages) at the aligned block of the
 * address, starting no lower than the area, clipped to the area's end and to the page table. Only ptes that
 * are none get a page (`filemap_map_order0_folio`: `pte_none`), one `set_pte` each in ascending order, with
 * the area's vm_page_prot: on x86 young (`___A` in PAGE_READONLY/PAGE_COPY/PAGE_SHARED, and
 * `arch_wants_old_prefaulted_pte` is false but on arm64) and read-only. Write faults (`do_cow_fault`,
 * `do_shared_fault`) and anonymous faults do not fault around.
 */

const A = 0x4000_0000; // 1 GiB: 16-page (and PT) aligned, inside user space in every paging mode
const MiB2 = 2 * 1024 * 1024;

function setup(mode: number = MODE_LONG4): { k: Kernel; v: Vcpu; p: Process; file: FileObject } {
  const { k, v } = boot(mode);
  const p = k.createProcess(v, 'p');
  k.switchTo(v, p);
  return { k, v, p, file: k.file('/lib/libc.so') };
}

/** Reads file pages `pages` into the page cache through a throwaway mapping (then unmapped). */
function cache(k: Kernel, v: Vcpu, p: Process, file: FileObject, pages: readonly number[]): void {
  const n = Math.max(...pages) + 1;
  const at = k.mmap(v, p, null, n * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
  user(v, () => {
    for (const i of pages) v.read(at + i * PAGE_SIZE, 4);
  });
  k.munmap(v, p, at, n * PAGE_SIZE);
}

/** The (slot index, low half) of each pte store in `log` into the page table at `pt`. */
function slots(k: Kernel, log: readonly Store[], pt: number): [number, number][] {
  return log.filter((s) => s.pa >= pt && s.pa < pt + PAGE_SIZE).map((s) => [(s.pa - pt) / k.layout.entrySize, s.lo]);
}

/** The pte a read fault gives file page `index`: the page-cache frame, present, user, accessed; read-only. */
function leaf(file: FileObject, index: number): number {
  return ((file.pages.get(index)! * PAGE_SIZE) | PT_PRESENT | PT_USER | PT_ACCESSED) >>> 0;
}

describe('fault-around (mm/memory.c do_fault_around, mm/filemap.c filemap_map_pages)', () => {
  it('maps the cached pages of the aligned 16-page window, in ascending order, one set_pte each: 32 pages read with 2 faults', () => {
    const { k, v, p, file } = setup();
    cache(k, v, p, file, [...Array(32).keys()]);
    const base = k.mmap(v, p, A, 32 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    // The page table exists before the stores are recorded: the fault on page 5 allocates nothing else.
    k.tableFor(v, p, base, 1, true);
    const pt = k.inspectPte(p, base)!.table;
    const s0 = { faults: k.stats.pageFaults, file: k.stats.faults[FAULT_FILE]!, misses: k.stats.pageCacheMisses, writes: k.stats.pteWrites };
    const log = recordStores(k, v);
    user(v, () => v.read(base + 5 * PAGE_SIZE, 4));
    // Window [0, 15]: every page cached and every pte none, so 16 stores, slot 0 first; the faulting page
    // (slot 5) is mapped in its turn and __do_fault never runs (VM_FAULT_NOPAGE).
    expect(slots(k, log, pt)).toEqual([...Array(16).keys()].map((i) => [i, leaf(file, i)]));
    expect(log.every((s) => s.size === 8 && s.hi === HI_XD >>> 0)).toBe(true); // PAGE_READONLY: NX
    expect(k.stats.pageFaults - s0.faults).toBe(1);
    // The rest of the window needs no fault; page 16 starts the next window, [16, 31].
    user(v, () => {
      for (let i = 0; i < 32; i++) v.read(base + i * PAGE_SIZE, 4);
    });
    expect(k.stats.pageFaults - s0.faults).toBe(2);
    expect(k.stats.faults[FAULT_FILE]! - s0.file).toBe(2);
    expect(k.stats.pageCacheMisses - s0.misses).toBe(0);
    expect(k.stats.pteWrites - s0.writes).toBe(32);
    // Each mapped pte holds a reference on its page-cache page (folio_ref_inc): the cache's and this one.
    expect(k.frames.refcountOf(file.pages.get(9)!)).toBe(2);
  });

  it('maps only pages in the page cache, and a faulting page that was not cached last (filemap_map_pages, __do_fault, then the retry)', () => {
    const { k, v, p, file } = setup();
    // A file that misses much more than it hits (mm/filemap.c `do_sync_mmap_readahead`: mmap_miss past
    // MMAP_LOTSAMISS): a miss reads its page alone, no read-around, so the page cache can be sparse.
    file.ra.mmapMiss = 1000;
    cache(k, v, p, file, [0, 2, 4, 12]);
    const base = k.mmap(v, p, A, 16 * PAGE_SIZE, PROT_READ, VMA_FILE_SHARED, file, 0);
    k.tableFor(v, p, base, 1, true);
    const pt = k.inspectPte(p, base)!.table;
    const misses = k.stats.pageCacheMisses;
    const log = recordStores(k, v);
    user(v, () => v.read(base + 7 * PAGE_SIZE, 4));
    // Fault-around maps the cached 0, 2, 4 and 12; page 7 is read in (a miss: filemap_fault drops the mmap lock to
    // read it, VM_FAULT_RETRY), and the retried fault's fault-around maps it after them (the others are present).
    expect(slots(k, log, pt)).toEqual([0, 2, 4, 12, 7].map((i) => [i, leaf(file, i)]));
    expect(k.stats.pageCacheMisses - misses).toBe(1);
    expect(k.inspectPte(p, base + 3 * PAGE_SIZE)!.lo).toBe(0);
  });

  it('leaves a pte that is not none alone: a private copy stays; a write fault maps only its page (do_cow_fault, do_shared_fault)', () => {
    const { k, v, p, file } = setup();
    cache(k, v, p, file, [...Array(16).keys()]);
    const base = k.mmap(v, p, A, 16 * PAGE_SIZE, PROT_READ | PROT_WRITE, VMA_FILE_PRIVATE, file, 0);
    k.tableFor(v, p, base, 1, true);
    const pt = k.inspectPte(p, base)!.table;
    const log = recordStores(k, v);
    user(v, () => v.write(base + 3 * PAGE_SIZE, 4, 1)); // do_cow_fault: no fault-around
    expect(k.stats.faults[FAULT_COW]).toBe(1);
    expect(slots(k, log, pt).map(([i]) => i)).toEqual([3]);
    const copy = k.inspectPte(p, base + 3 * PAGE_SIZE)!.lo >>> 0;
    log.length = 0;
    user(v, () => v.read(base + 5 * PAGE_SIZE, 4));
    // 15 stores: every slot of [0, 15] but 3, which keeps the private copy (writable, dirty).
    expect(slots(k, log, pt)).toEqual([0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15].map((i) => [i, leaf(file, i)]));
    expect(k.inspectPte(p, base + 3 * PAGE_SIZE)!.lo >>> 0).toBe(copy);
    expect(copy & PT_WRITABLE).toBe(PT_WRITABLE);

    // A write fault in a shared mapping: do_shared_fault maps its page alone.
    const shared = k.mmap(v, p, A + MiB2, 16 * PAGE_SIZE, PROT_READ | PROT_WRITE, VMA_FILE_SHARED, file, 0);
    const writes = k.stats.pteWrites;
    user(v, () => v.write(shared + 6 * PAGE_SIZE, 4, 1));
    expect(k.stats.pteWrites - writes).toBe(2); // the PDE of the new page table, then the one pte
    expect(k.inspectPte(p, shared + 5 * PAGE_SIZE)!.lo).toBe(0);
  });

  it('an anonymous read fault maps only the zero page at its address (do_anonymous_page has no fault-around)', () => {
    const { k, v, p } = setup();
    const base = k.mmap(v, p, A, 16 * PAGE_SIZE, PROT_READ | PROT_WRITE, VMA_ANON);
    user(v, () => v.read(base, 4));
    const writes = k.stats.pteWrites;
    user(v, () => v.read(base + PAGE_SIZE, 4));
    expect(k.stats.pteWrites - writes).toBe(1);
    expect(k.inspectPte(p, base + 2 * PAGE_SIZE)!.lo).toBe(0);
  });

  it('starts the window at the area when the area starts inside the aligned block, and then spans 16 pages past the block (from_pte, to_pte)', () => {
    // An area at slot 5 of its page table; a fault on its page 2 (slot 7): from_pte = max(ALIGN_DOWN(7, 16),
    // 7 - 2) = 5, to_pte = min(5 + 16, 512, 7 + 32 - 2) - 1 = 20: slots 5..20, the area's pages 0..15.
    const { k, v, p, file } = setup();
    cache(k, v, p, file, [...Array(32).keys()]);
    const base = k.mmap(v, p, A + 5 * PAGE_SIZE, 32 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    k.tableFor(v, p, base, 1, true);
    const pt = k.inspectPte(p, base)!.table;
    const log = recordStores(k, v);
    user(v, () => v.read(base + 2 * PAGE_SIZE, 4));
    expect(slots(k, log, pt)).toEqual([...Array(16).keys()].map((i) => [5 + i, leaf(file, i)]));
  });

  it('clips the window to the area end, to the page table, and follows the file offset', () => {
    const { k, v, p, file } = setup();
    cache(k, v, p, file, [...Array(40).keys()]);
    // An area of 6 pages at file page 3: a fault on its page 1 maps its 6 pages (slots 0..5, file pages 3..8).
    const small = k.mmap(v, p, A, 6 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 3 * PAGE_SIZE);
    k.tableFor(v, p, small, 1, true);
    let pt = k.inspectPte(p, small)!.table;
    let log = recordStores(k, v);
    user(v, () => v.read(small + PAGE_SIZE, 4));
    expect(slots(k, log, pt)).toEqual([...Array(6).keys()].map((i) => [i, leaf(file, 3 + i)]));

    // An area across a page-table boundary, from slot 508: a fault on its page 2 (slot 510) maps slots
    // 508..511 only (PTRS_PER_PTE), nothing in the next page table.
    const across = k.mmap(v, p, A + 2 * MiB2 - 4 * PAGE_SIZE, 32 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    k.tableFor(v, p, across, 1, true);
    k.tableFor(v, p, across + 4 * PAGE_SIZE, 1, true);
    pt = k.inspectPte(p, across)!.table;
    const next = k.inspectPte(p, across + 4 * PAGE_SIZE)!.table;
    log = recordStores(k, v);
    user(v, () => v.read(across + 2 * PAGE_SIZE, 4));
    expect(slots(k, log, pt)).toEqual([0, 1, 2, 3].map((i) => [508 + i, leaf(file, i)]));
    expect(slots(k, log, next)).toEqual([]);
    // Its page 4 (slot 0 of the next table): the aligned block [0, 15], its pages 4..19.
    log.length = 0;
    user(v, () => v.read(across + 4 * PAGE_SIZE, 4));
    expect(slots(k, log, next)).toEqual([...Array(16).keys()].map((i) => [i, leaf(file, 4 + i)]));
  });

  it('PAE: each pte of the window is set_pte in halves, the high half first (native_set_pte)', () => {
    const { k, v, p, file } = setup(MODE_PAE);
    cache(k, v, p, file, [...Array(16).keys()]);
    const base = k.mmap(v, p, A, 16 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    k.tableFor(v, p, base, 1, true);
    const pt = k.inspectPte(p, base)!.table;
    const log = recordStores(k, v);
    user(v, () => v.read(base, 4));
    // 16 ptes, 2 stores each: 32 stores of 4 bytes, (hi = XD) then lo, slot by slot.
    expect(log.map((s) => [s.size, (s.pa - pt) / 4, s.lo])).toEqual(
      [...Array(16).keys()].flatMap((i) => [
        [4, 2 * i + 1, HI_XD >>> 0],
        [4, 2 * i, leaf(file, i)],
      ]),
    );
  });
});
