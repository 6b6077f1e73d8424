import { PAGE_SIZE, type Vcpu } from '@vmexit/core';
import { FRAME_CACHE } from './frames.js';
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
