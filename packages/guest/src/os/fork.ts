import { PAGE_SIZE, PT_ACCESSED, PT_DIRTY, PT_WRITABLE, type Vcpu } from '@vmexit/core';
import { lookupFile, noteMapping } from './filemap.js';
import { FRAME_ANON } from './frames.js';
import { forEachPte, frameOf, freeTable, freeTables, newMm, setPte, setWrprotect, tableFor, zap } from './pgtable.js';
import { Process, type AreaSpec, type ImageSpec } from './process.js';
import type { KernelState } from './state.js';
import { flushLazy, flushMm } from './tlb.js';
import { PROT_EXEC, PROT_READ, PROT_WRITE, VMA_ALIAS, VMA_ANON, VMA_FILE_PRIVATE, VMA_FILE_SHARED, Vma } from './vma.js';

/*
 * Process address spaces: creation, fork (kernel/fork.c), exec (fs/exec.c, fs/binfmt_elf.c) and exit
 * (kernel/exit.c -> mm/mmap.c `exit_mmap`). Run by the kernel in a system call.
 */

/** A process with an empty user address space. */
export function newProcess(k: KernelState, v: Vcpu, name: string, parent: Process | null): Process {
  const p = new Process(k.nextPid++, parent, name);
  newMm(k, v, p);
  k.processes.push(p);
  k.stats.processes++;
  return p;
}

/**
 * fork (kernel/fork.c `dup_mmap`): the child gets copies of the areas; for areas with anonymous pages
 * (`vma_needs_copy`) the ptes are copied (mm/memory.c `copy_page_range`): a writable pte of a private area is
 * write-protected in the parent and the child, the child's copy is old (A=0); then the parent's TLBs are
 * flushed (`flush_tlb_mm`). The stores are Linux's, in its order: `copy_pud_range`, `copy_pmd_range` and
 * `copy_pte_range` allocate the child's table of their level (`pud_alloc`, `pmd_alloc`, `pte_alloc_map_lock`)
 * for each present parent entry above it, before they read the parent's entries below (so the child gets a
 * page table even where the parent's has no pte present in the area); then, pte by pte, `copy_present_pte`
 * write-protects the parent's (`ptep_set_wrprotect`, `setWrprotect`) and sets the child's (`set_ptes`).
 */
export function doFork(k: KernelState, v: Vcpu, parent: Process): Process {
  k.stats.forks++;
  const child = newProcess(k, v, parent.name, parent);
  child.brkBase = parent.brkBase;
  child.brkEnd = parent.brkEnd;
  for (const a of parent.vmas.list) child.vmas.insert(a.clone());
  for (const a of parent.vmas.list) {
    if (!a.anon || a.backing === VMA_ALIAS) continue;
    const cow = a.backing !== VMA_FILE_SHARED;
    const onEntry = (_table: number, _idx: number, va: number, level: number): void => {
      tableFor(k, v, child, Math.max(va, a.start), level - 1, true);
    };
    const onPte = (pt: number, idx: number, va: number, lo: number, hi: number): void => {
      let c = lo & ~PT_ACCESSED;
      if (cow && (lo & PT_WRITABLE) !== 0) {
        setWrprotect(k, v, pt, idx, lo, hi);
        c &= ~PT_WRITABLE;
      }
      if (!cow) c &= ~PT_DIRTY;
      const frame = frameOf(k, lo, hi);
      if (frame !== k.zeroFrame) k.frames.get(frame);
      // Both sides now map the page: it is no longer exclusive (folio_try_dup_anon_rmap_pte).
      if (frame !== k.zeroFrame && k.frames.useOf(frame) === FRAME_ANON) k.frames.setExclusive(frame, false);
      const cpt = tableFor(k, v, child, va, 1, false);
      setPte(k, v, cpt, idx, c, hi);
    };
    forEachPte(k, v, parent, a.start, a.end, onPte, onEntry);
  }
  flushMm(k, v, parent);
  return child;
}

/**
 * exec: a new address space that `map` fills; the vCPUs running the process switch to it, then the old
 * one is torn down (fs/exec.c `exec_mmap`, then `mmput` -> `exit_mmap`), its page-table pages freed. A vCPU
 * that only has the old space loaded, lazily (`KernelState.running` names no process there: a vfork
 * child of the process exited there, or its tasks all wait), goes to the idle tables: freeing the page tables
 * flushes the lazy CPUs too (arch/x86/mm/tlb.c `flush_tlb_multi` with `freed_tables`, a shootdown), and
 * `flush_tlb_func` switches such a CPU to init_mm.
 */
export function doExec(k: KernelState, v: Vcpu, proc: Process, path: string, map: () => void): void {
  k.stats.execs++;
  const old = new Process(proc.pid, proc.parent, proc.name);
  old.root = proc.root;
  old.vmas.adopt(proc.vmas);
  old.tables.set(proc.tables);
  proc.tables.fill(0);
  proc.name = path;
  newMm(k, v, proc);
  map();
  for (const w of k.machine.vcpus) {
    if (k.current[w.id] !== proc) continue;
    if (w === v || k.running[w.id]?.mm === proc) w.movToCr3(proc.root);
    else flushLazy(k, w, true); // the old tables' teardown flushes with freed_tables: the IPI, then init_mm
  }
  teardown(k, v, old);
}

/** The areas a trace's exec event lists (the mappings the loader made). */
export function mapAreas(proc: Process, areas: readonly AreaSpec[]): void {
  for (const a of areas) {
    if (a.end <= a.start || proc.vmas.intersects(a.start, a.end)) continue;
    const vma = new Vma(a.start, a.end, a.prot, a.backing, a.file, a.offset);
    vma.growsDown = a.growsDown;
    proc.vmas.insert(vma);
    noteMapping(vma.file, a.offset, a.end - a.start);
  }
  proc.brkBase = 0;
  proc.brkEnd = 0;
}

/** The areas of an image (ELF load, fs/binfmt_elf.c): text and data from the file, bss, heap, stack. */
export function mapImage(k: KernelState, proc: Process, image: ImageSpec): void {
  const L = k.layout;
  const file = lookupFile(k, image.path);
  let at = L.textBase;
  const add = (pages: number, prot: number, backing: number, offset: number): Vma | null => {
    if (pages <= 0) return null;
    const vma = new Vma(at, at + pages * PAGE_SIZE, prot, backing, backing === VMA_ANON ? null : file, offset);
    proc.vmas.insert(vma);
    noteMapping(vma.file, offset, pages * PAGE_SIZE);
    at += pages * PAGE_SIZE;
    return vma;
  };
  add(image.textPages, PROT_READ | PROT_EXEC, VMA_FILE_PRIVATE, 0);
  add(image.dataPages, PROT_READ | PROT_WRITE, VMA_FILE_PRIVATE, image.textPages * PAGE_SIZE);
  add(image.bssPages, PROT_READ | PROT_WRITE, VMA_ANON, 0);
  proc.brkBase = at;
  proc.brkEnd = at;
  if (image.stackPages > 0) {
    const stack = new Vma(L.stackTop - image.stackPages * PAGE_SIZE, L.stackTop, PROT_READ | PROT_WRITE, VMA_ANON, null, 0);
    stack.growsDown = true;
    proc.vmas.insert(stack);
  }
}

/** exit_mmap: zap every area, free every user table, then the top table (pgd_free). */
export function teardown(k: KernelState, v: Vcpu, proc: Process): void {
  for (const a of proc.vmas.list) if (a.backing !== VMA_ALIAS) zap(k, v, proc, a.start, a.end, true);
  // free_pgtables over all of user space (PAE: the preallocated PDs too), then pgd_free.
  freeTables(k, v, proc, 0, k.layout.userLimit + PAGE_SIZE, true);
  freeTable(k, proc, proc.root, k.layout.top);
  proc.vmas.clear();
}
