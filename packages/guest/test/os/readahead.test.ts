import { PAGE_SIZE, type Vcpu } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { fileWord } from '../../src/os/filemap.js';
import type { Kernel, Process } from '../../src/os/kernel.js';
import { FAULT_COW, FAULT_FILE } from '../../src/os/stats.js';
import { PROT_READ, PROT_WRITE, VMA_FILE_PRIVATE, type FileObject } from '../../src/os/vma.js';
import { boot, MiB, user } from '../helpers.js';

/*
 * mmap read-around (Linux 6.6, mm/filemap.c `filemap_fault` -> `do_sync_mmap_readahead`): a page-cache miss
 * reads `ra_pages` (32, VM_READAHEAD_PAGES = SZ_128K / PAGE_SIZE) pages from `max(0, pgoff - 16)`, clipped
 * to the file's last page (mm/readahead.c `do_page_cache_ra`), and marks PG_readahead the page `async_size`
 * (8) before the end of the window (`page_cache_ra_unbounded`). Fault-around skips a PG_readahead page
 * (`next_uptodate_folio`), so a fault on it reaches `filemap_fault`, whose hit path
 * (`do_async_mmap_readahead` -> `page_cache_async_ra` -> `ondemand_readahead`) reads the next window. A miss
 * adds one to the file's mmap_miss, a hit in `filemap_fault` and each cached page fault-around finds take one
 * off; past MMAP_LOTSAMISS (100) a miss reads its page alone. A filemap_fault that reads (a miss, a hit on a
 * PG_readahead page) drops the mmap lock and returns VM_FAULT_RETRY, and the retried read fault maps what is
 * cached with fault-around. `pageCacheMisses` counts pages read. The model's files have no size: a file is as
 * long as the furthest page mapped of it.
 */

const A = 0x4000_0000; // 1 GiB: PT-aligned, inside user space

function setup(memory = 16 * MiB): { k: Kernel; v: Vcpu; p: Process; file: FileObject } {
  const { k, v } = boot(undefined, { memory });
  const p = k.createProcess(v, 'p');
  k.switchTo(v, p);
  return { k, v, p, file: k.file('/usr/bin/cc1') };
}

/** The cached page indices of `file`, ascending. */
function cached(file: FileObject): number[] {
  return [...file.pages.keys()].sort((a, b) => a - b);
}

/** The file's `struct file_ra_state`. */
function ra(file: FileObject): { start: number; size: number; asyncSize: number; mmapMiss: number } {
  const { start, size, asyncSize, mmapMiss } = file.ra;
  return { start, size, asyncSize, mmapMiss };
}

const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i);

describe('mmap read-around (mm/filemap.c do_sync_mmap_readahead, mm/readahead.c)', () => {
  it('a miss reads the 32 pages around the faulting page and marks the one 8 before the end PG_readahead', () => {
    const { k, v, p, file } = setup();
    const base = k.mmap(v, p, A, 64 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    const m0 = k.stats.pageCacheMisses;
    user(v, () => v.read(base + 40 * PAGE_SIZE, 4));
    // ra->start = 40 - 16 = 24, ra->size = 32, ra->async_size = 8: pages [24, 56) read, 48 marked.
    expect(k.stats.pageCacheMisses - m0).toBe(32);
    expect(cached(file)).toEqual(range(24, 56));
    expect([...file.ra.marked]).toEqual([48]);
    // mmap_miss: +1 for the miss, -16 for the block [32, 47] the retried fault maps (fault-around), not below 0.
    expect(ra(file)).toEqual({ start: 24, size: 32, asyncSize: 8, mmapMiss: 0 });
    // The page contents are the file's, written into each frame as a single-page miss writes them.
    const f30 = file.pages.get(30)! * PAGE_SIZE;
    expect([k.machine.memory.read32(f30), k.machine.memory.read32(f30 + 4092)]).toEqual([fileWord(file.id, 30), fileWord(file.id, 30)]);

    // The retry mapped [32, 47]: reading it faults no more.
    const f0 = k.stats.pageFaults;
    user(v, () => {
      for (let i = 32; i < 48; i++) v.read(base + i * PAGE_SIZE, 4);
    });
    expect(k.stats.pageFaults - f0).toBe(0);
    expect(k.stats.pageCacheMisses - m0).toBe(32);
    expect(file.ra.mmapMiss).toBe(0);

    // A fault at 49: fault-around maps 49..55 but not the marked 48. The fault on 48 is a filemap_fault hit
    // on a PG_readahead page: the expected index (24 + 32 - 8), so the window moves on to [56, 88) with
    // async_size 32, clipped to the file's 64 pages: 8 pages read, none marked (8 - 32 < 0); its retry maps 48
    // and 56..63.
    user(v, () => v.read(base + 49 * PAGE_SIZE, 4));
    expect(k.inspectPte(p, base + 48 * PAGE_SIZE)!.lo).toBe(0);
    user(v, () => v.read(base + 48 * PAGE_SIZE, 4));
    expect(k.stats.pageFaults - f0).toBe(2);
    expect(k.inspectPte(p, base + 63 * PAGE_SIZE)!.lo).not.toBe(0);
    expect(k.stats.pageCacheMisses - m0).toBe(40);
    expect(cached(file)).toEqual(range(24, 64));
    expect(file.ra.marked.size).toBe(0);
    expect(ra(file)).toEqual({ start: 56, size: 32, asyncSize: 32, mmapMiss: 0 });
  });

  it('a sequential read of a 32-page file: 3 faults, 32 pages read by the first (one a page before read-around)', () => {
    // Fault on 0: window [0, 32), 24 marked; the retry maps 0..15. Fault on 16: fault-around maps 16..31 but
    // 24. Fault on 24: a hit on the mark, the next window [32, 64) lies past the file: nothing read; the retry
    // maps 24. Without read-around every page is a miss, and fault-around finds nothing: 32 faults, 32 misses.
    const { k, v, p, file } = setup();
    const base = k.mmap(v, p, A, 32 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    const f0 = k.stats.pageFaults;
    const m0 = k.stats.pageCacheMisses;
    user(v, () => {
      for (let i = 0; i < 32; i++) v.read(base + i * PAGE_SIZE, 4);
    });
    expect(k.stats.pageFaults - f0).toBe(3);
    expect(k.stats.faults[FAULT_FILE]).toBe(3);
    expect(k.stats.pageCacheMisses - m0).toBe(32);
    expect(file.ra.marked.size).toBe(0);
  });

  it('clips the window at page 0 and at the file size, and marks the page 8 before the clipped end', () => {
    // A 10-page file, a fault on page 3: start = max(0, 3 - 16) = 0, nr = min(32, 10) = 10, mark at 10 - 8 = 2.
    const { k, v, p, file } = setup();
    const base = k.mmap(v, p, A, 10 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    const m0 = k.stats.pageCacheMisses;
    user(v, () => v.read(base + 3 * PAGE_SIZE, 4));
    expect(k.stats.pageCacheMisses - m0).toBe(10);
    expect(file.ra.filePages).toBe(10);
    expect(cached(file)).toEqual(range(0, 10));
    expect([...file.ra.marked]).toEqual([2]);
    // The retry's fault-around maps slots 0..9 of the 10-page area but the marked 2.
    const present = range(0, 10).filter((i) => k.inspectPte(p, base + i * PAGE_SIZE)!.lo !== 0);
    expect(present).toEqual([0, 1, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('maps the faulting page when its own read-around marked it, and leaves the mark (a FAULT_FLAG_TRIED hit)', () => {
    // A 10-page file, a fault on page 2: [0, 10) read, 2 marked. The retry's fault-around skips 2, and its
    // filemap_fault (FAULT_FLAG_TRIED) neither counts a hit nor reads ahead: finish_fault maps 2, marked still.
    // mmap_miss: +1, then -9 (0, 1, 3..9 found by the retry's fault-around): 0.
    const { k, v, p, file } = setup();
    const base = k.mmap(v, p, A, 10 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    const f0 = k.stats.pageFaults;
    user(v, () => v.read(base + 2 * PAGE_SIZE, 4));
    expect(k.stats.pageFaults - f0).toBe(1);
    expect(range(0, 10).every((i) => k.inspectPte(p, base + i * PAGE_SIZE)!.lo !== 0)).toBe(true);
    expect([...file.ra.marked]).toEqual([2]);
    expect(ra(file)).toEqual({ start: 0, size: 32, asyncSize: 8, mmapMiss: 0 });
  });

  it('a write fault on a miss reads around too (do_cow_fault -> __do_fault -> filemap_fault)', () => {
    const { k, v, p, file } = setup();
    const base = k.mmap(v, p, A, 40 * PAGE_SIZE, PROT_READ | PROT_WRITE, VMA_FILE_PRIVATE, file, 0);
    const m0 = k.stats.pageCacheMisses;
    user(v, () => v.write(base + 20 * PAGE_SIZE, 4, 7));
    expect(k.stats.faults[FAULT_COW]).toBe(1);
    // start = 4, [4, 36) read, 28 marked.
    expect(k.stats.pageCacheMisses - m0).toBe(32);
    expect(cached(file)).toEqual(range(4, 36));
    expect([...file.ra.marked]).toEqual([28]);
  });

  it('stops reading around after MMAP_LOTSAMISS misses more than hits (write faults), and starts again after hits', () => {
    // A read miss never adds up: its retry's fault-around finds at least the faulting page cached, a hit. So
    // 10 read misses 64 pages apart read 32 pages each and leave mmap_miss 0.
    const { k, v, p, file } = setup(64 * MiB);
    const reads = k.mmap(v, p, A, 10 * 64 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    const m0 = k.stats.pageCacheMisses;
    user(v, () => {
      for (let j = 0; j < 10; j++) v.read(reads + j * 64 * PAGE_SIZE, 4);
    });
    expect(k.stats.pageCacheMisses - m0).toBe(10 * 32);
    expect(file.ra.mmapMiss).toBe(0);
    // A write miss (do_cow_fault) has no fault-around, and its retry's filemap_fault is a FAULT_FLAG_TRIED hit,
    // which counts nothing. 101 write misses 64 pages apart (no window overlaps another): the first 100 read 32
    // pages each (mmap_miss 1..100, not past 100), the 101st only its page (mmap_miss 101).
    const other = k.file('/usr/lib/libc.so');
    const base = k.mmap(v, p, A + 0x1000_0000, 102 * 64 * PAGE_SIZE, PROT_READ | PROT_WRITE, VMA_FILE_PRIVATE, other, 0);
    const m1 = k.stats.pageCacheMisses;
    user(v, () => {
      for (let j = 0; j < 101; j++) v.write(base + j * 64 * PAGE_SIZE, 4, 1);
    });
    expect(k.stats.pageCacheMisses - m1).toBe(100 * 32 + 1);
    expect(other.ra.mmapMiss).toBe(101);
    // A read fault on page 1: fault-around finds the cached 0..15 (0 mapped to its private copy), 16 hits: 85.
    user(v, () => v.read(base + PAGE_SIZE, 4));
    expect(other.ra.mmapMiss).toBe(85);
    // So the next miss (page 101 * 64) reads around again: mmap_miss 86.
    user(v, () => v.write(base + 101 * 64 * PAGE_SIZE, 4, 1));
    expect(k.stats.pageCacheMisses - m1).toBe(100 * 32 + 1 + 32);
    expect(other.ra.mmapMiss).toBe(86);
  });

  it('a miss ends in VM_FAULT_RETRY: the retried fault maps the fault-around block the read-around filled', () => {
    // filemap_fault drops the mmap lock to read (mm/internal.h `maybe_unlock_mmap_for_io`: the first attempt of a
    // fault that may retry, as x86's user faults are, FAULT_FLAG_DEFAULT) and returns VM_FAULT_RETRY; arch/x86/mm/
    // fault.c `do_user_addr_fault` retries with FAULT_FLAG_TRIED, and do_read_fault -> do_fault_around ->
    // filemap_map_pages maps what is now cached. A fault on 40: [24, 56) read, then the block [32, 47] mapped by
    // the retry, 16 ptes in one guest #PF; a hit on the PG_readahead page 48 reads [56, 64) and its retry maps
    // 48 and 56..63 (do_async_mmap_readahead drops the lock too).
    const { k, v, p, file } = setup();
    const base = k.mmap(v, p, A, 64 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    const f0 = k.stats.pageFaults;
    user(v, () => v.read(base + 40 * PAGE_SIZE, 4));
    expect(k.stats.pageFaults - f0).toBe(1);
    const mapped = (from: number, to: number): number[] => range(from, to).filter((i) => (k.inspectPte(p, base + i * PAGE_SIZE)?.lo ?? 0) !== 0);
    expect(mapped(0, 64)).toEqual(range(32, 48));
    user(v, () => v.read(base + 49 * PAGE_SIZE, 4)); // fault-around: 49..55 (48 is marked)
    user(v, () => v.read(base + 48 * PAGE_SIZE, 4));
    expect(k.stats.pageFaults - f0).toBe(3);
    expect(mapped(0, 64)).toEqual(range(32, 64));
  });

  it('fault-around counts a hit for each cached page of its window, its pte present or not (filemap_map_pages)', () => {
    // mm/filemap.c `filemap_map_order0_folio` counts `(*mmap_miss)++` before its `pte_none` check (Linux 6.4 on;
    // before, `mmap_miss--` came before it too); `filemap_map_pages` takes the count off f_ra.mmap_miss (not
    // below 0). From 50: the miss on 40 +1, its retry maps [32, 47] -16: 35. The fault on 49 maps 49..55: 28.
    // The fault on 48: fault-around finds 49..55 cached (mapped): -7, 21; filemap_fault's hit (do_async_mmap_
    // readahead) -1, 20, reads [56, 64); the retry's fault-around finds 48..63 cached: -16, 4.
    const { k, v, p, file } = setup();
    const base = k.mmap(v, p, A, 64 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    file.ra.mmapMiss = 50;
    user(v, () => v.read(base + 40 * PAGE_SIZE, 4));
    expect(file.ra.mmapMiss).toBe(35);
    user(v, () => v.read(base + 49 * PAGE_SIZE, 4));
    expect(file.ra.mmapMiss).toBe(28);
    user(v, () => v.read(base + 48 * PAGE_SIZE, 4));
    expect(file.ra.mmapMiss).toBe(4);
  });
});
