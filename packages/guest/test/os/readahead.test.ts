import { PAGE_SIZE, type Vcpu } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { fileWord, readaheadOf } from '../../src/os/filemap.js';
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
 * adds one to the file's mmap_miss, a hit in `filemap_fault` and each page fault-around maps take one off;
 * past MMAP_LOTSAMISS (100) a miss reads its page alone. `pageCacheMisses` counts pages read. The model's
 * files have no size: a file is as long as the furthest page mapped of it.
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
  const { start, size, asyncSize, mmapMiss } = readaheadOf(file);
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
    expect([...readaheadOf(file).marked]).toEqual([48]);
    expect(ra(file)).toEqual({ start: 24, size: 32, asyncSize: 8, mmapMiss: 1 });
    // The page contents are the file's, written into each frame as a single-page miss writes them.
    const f30 = file.pages.get(30)! * PAGE_SIZE;
    expect([k.machine.memory.read32(f30), k.machine.memory.read32(f30 + 4092)]).toEqual([fileWord(file.id, 30), fileWord(file.id, 30)]);

    // A fault at page 33: fault-around maps [32, 47], all cached; no page read; 16 hits off mmap_miss.
    const f0 = k.stats.pageFaults;
    user(v, () => {
      for (let i = 32; i < 48; i++) v.read(base + i * PAGE_SIZE, 4);
    });
    expect(k.stats.pageFaults - f0).toBe(1);
    expect(k.stats.pageCacheMisses - m0).toBe(32);
    expect(readaheadOf(file).mmapMiss).toBe(0);

    // A fault at 49: fault-around maps 49..55 but not the marked 48. The fault on 48 is a filemap_fault hit
    // on a PG_readahead page: the expected index (24 + 32 - 8), so the window moves on to [56, 88) with
    // async_size 32, clipped to the file's 64 pages: 8 pages read, none marked (8 - 32 < 0).
    user(v, () => v.read(base + 49 * PAGE_SIZE, 4));
    expect(k.inspectPte(p, base + 48 * PAGE_SIZE)!.lo).toBe(0);
    user(v, () => v.read(base + 48 * PAGE_SIZE, 4));
    expect(k.stats.pageFaults - f0).toBe(3);
    expect(k.stats.pageCacheMisses - m0).toBe(40);
    expect(cached(file)).toEqual(range(24, 64));
    expect(readaheadOf(file).marked.size).toBe(0);
    expect(ra(file)).toEqual({ start: 56, size: 32, asyncSize: 32, mmapMiss: 0 });
  });

  it('a sequential read of a 32-page file: 4 faults, 32 pages read by the first (one a page before read-around)', () => {
    // Fault on 0: window [0, 32), 24 marked. Fault on 1: fault-around maps 1..15. Fault on 16: maps 16..31
    // but 24. Fault on 24: a hit on the mark, the next window [32, 64) lies past the file: nothing read.
    // Without read-around every page is a miss, and fault-around finds nothing: 32 faults, 32 misses.
    const { k, v, p, file } = setup();
    const base = k.mmap(v, p, A, 32 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    const f0 = k.stats.pageFaults;
    const m0 = k.stats.pageCacheMisses;
    user(v, () => {
      for (let i = 0; i < 32; i++) v.read(base + i * PAGE_SIZE, 4);
    });
    expect(k.stats.pageFaults - f0).toBe(4);
    expect(k.stats.faults[FAULT_FILE]).toBe(4);
    expect(k.stats.pageCacheMisses - m0).toBe(32);
    expect(readaheadOf(file).marked.size).toBe(0);
  });

  it('clips the window at page 0 and at the file size, and marks the page 8 before the clipped end', () => {
    // A 10-page file, a fault on page 3: start = max(0, 3 - 16) = 0, nr = min(32, 10) = 10, mark at 10 - 8 = 2.
    const { k, v, p, file } = setup();
    const base = k.mmap(v, p, A, 10 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    const m0 = k.stats.pageCacheMisses;
    user(v, () => v.read(base + 3 * PAGE_SIZE, 4));
    expect(k.stats.pageCacheMisses - m0).toBe(10);
    expect(readaheadOf(file).filePages).toBe(10);
    expect(cached(file)).toEqual(range(0, 10));
    expect([...readaheadOf(file).marked]).toEqual([2]);
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
    expect([...readaheadOf(file).marked]).toEqual([28]);
  });

  it('stops reading around after MMAP_LOTSAMISS misses more than hits, and starts again after hits', () => {
    // 101 misses 64 pages apart (no window overlaps another, fault-around finds nothing): the first 100 read
    // 32 pages each (mmap_miss 1..100, not past 100), the 101st only its page (mmap_miss 101).
    const { k, v, p, file } = setup(64 * MiB);
    const base = k.mmap(v, p, A, 102 * 64 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, file, 0);
    const m0 = k.stats.pageCacheMisses;
    user(v, () => {
      for (let j = 0; j < 101; j++) v.read(base + j * 64 * PAGE_SIZE, 4);
    });
    expect(k.stats.pageCacheMisses - m0).toBe(100 * 32 + 1);
    expect(readaheadOf(file).mmapMiss).toBe(101);
    // A fault on page 1: fault-around maps the cached 1..15 (0 is mapped), 15 hits: mmap_miss 86.
    user(v, () => v.read(base + PAGE_SIZE, 4));
    expect(readaheadOf(file).mmapMiss).toBe(86);
    // So the next miss (page 101 * 64) reads around again: mmap_miss 87.
    user(v, () => v.read(base + 101 * 64 * PAGE_SIZE, 4));
    expect(k.stats.pageCacheMisses - m0).toBe(100 * 32 + 1 + 32);
    expect(readaheadOf(file).mmapMiss).toBe(87);
  });
});
