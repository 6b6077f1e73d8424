import {
  GuestAbort,
  PAGE_SIZE,
  PFERR_PRESENT,
  PFERR_RSVD,
  PFERR_USER,
  PFERR_WRITE,
  PT_ACCESSED,
  PT_DIRTY,
  PT_PRESENT,
  PT_USER,
  PT_WRITABLE,
  type Vcpu,
  hexU64,
} from '@vmexit/core';
import { KernelPanic } from './errors.js';
import { filemapFault, fileReadLeaf, mapCachedPages } from './filemap.js';
import { FRAME_ANON } from './frames.js';
import { tableIndex } from './layout.js';
import { frameOf, getAndClear, leafHi, readPte, setPte, tableFor } from './pgtable.js';
import type { Process } from './process.js';
import type { KernelState } from './state.js';
import { FAULT_COW, FAULT_DEMAND_ZERO, FAULT_FILE, FAULT_SIGSEGV, FAULT_SPURIOUS, FAULT_WP_REUSE, FAULT_ZERO_PAGE } from './stats.js';
import { flushRange } from './tlb.js';
import { PROT_EXEC, PROT_READ, PROT_WRITE, VMA_ALIAS, VMA_ANON, VMA_FILE_PRIVATE, VMA_FILE_SHARED, type Vma } from './vma.js';

/*
 * The #PF and #GP handlers: Linux arch/x86/mm/fault.c `exc_page_fault` -> mm/memory.c `handle_mm_fault`
 * (`do_anonymous_page`, `do_fault`, `do_wp_page`), and arch/x86/kernel/traps.c `exc_general_protection`.
 */

/**
 * The #PF handler: SIGSEGV (a GuestAbort) for a bad user access, a panic for a fault in the kernel. `task` is the
 * process the vCPU runs (Linux `current`), which the fault log and the signal name; the areas searched are those
 * of the address space loaded (`k.current`: its parent's for a vfork child before its exec, `current->mm`).
 */
export function pageFault(k: KernelState, v: Vcpu, errorCode: number, cr2: number, task: Process | null = k.current[v.id]!): void {
  const proc = k.current[v.id]!;
  const pid = task === null ? (proc === null ? 0 : proc.pid) : task.pid;
  const ev = k.events.push(v.id, pid, cr2, errorCode);
  k.stats.pageFaults++;
  if ((errorCode & PFERR_USER) === 0 || proc === null) {
    throw new KernelPanic(`vCPU ${v.id}: page fault in kernel mode at ${hexU64(cr2)}, error code ${errorCode}`);
  }
  if ((errorCode & PFERR_RSVD) !== 0) {
    throw new KernelPanic(`vCPU ${v.id}: reserved bit set in a page-table entry for ${hexU64(cr2)} (pid ${proc.pid}), error code ${errorCode}`);
  }
  k.inKernel++;
  let kind: number;
  try {
    kind = handleUserFault(k, v, proc, cr2, errorCode);
  } finally {
    k.inKernel--;
  }
  k.stats.faults[kind]++;
  k.events.setKind(ev, kind);
  if (kind === FAULT_SIGSEGV) throw new GuestAbort(`SIGSEGV: pid ${pid} at ${hexU64(cr2)}, error code ${errorCode}`);
}

/**
 * The #GP handler. From user mode it sends SIGSEGV (`force_sig(SIGSEGV)`), as for a user access to a
 * non-canonical address (SDM Vol. 3A §4.5.1 and §6.15, "Interrupt 13": a non-canonical linear address is
 * #GP, not #PF); in the kernel it is an oops.
 */
export function generalProtection(k: KernelState, v: Vcpu, errorCode: number, address: number, task: Process | null = k.current[v.id]!): void {
  const proc = task ?? k.current[v.id];
  if (k.inKernel > 0 || proc === null) {
    throw new KernelPanic(`vCPU ${v.id}: general protection fault in kernel mode at ${hexU64(address)}, error code ${errorCode}`);
  }
  k.stats.generalProtection++;
  throw new GuestAbort(`SIGSEGV: pid ${proc.pid}: general protection fault at ${hexU64(address)}, error code ${errorCode}`);
}

function handleUserFault(k: KernelState, v: Vcpu, proc: Process, cr2: number, errorCode: number): number {
  let vma = proc.vmas.find(cr2);
  if (vma === null || accessError(vma, errorCode)) return FAULT_SIGSEGV;
  const write = (errorCode & PFERR_WRITE) !== 0;
  let va = cr2 - (((cr2 % PAGE_SIZE) + PAGE_SIZE) % PAGE_SIZE);
  if (vma.backing === VMA_ALIAS) {
    // The read-only view of an arena page: fault the page in through its primary mapping; the alias PDE
    // points to the same page table.
    va -= k.layout.arenaSize;
    vma = proc.vmas.find(va);
    if (vma === null || (vma.prot & PROT_READ) === 0) return FAULT_SIGSEGV;
  }
  const pt = tableFor(k, v, proc, va, 1, true);
  const idx = tableIndex(k.layout, va, 1);
  const { lo, hi } = readPte(k, v, pt, idx, { lo: 0, hi: 0 });
  if ((lo & PT_PRESENT) === 0) return notPresent(k, v, vma, va, pt, idx, write);
  if (write && (lo & PT_WRITABLE) === 0) return writeProtect(k, v, proc, vma, va, pt, idx, lo, hi);
  return FAULT_SPURIOUS;
}

/**
 * arch/x86/mm/fault.c `access_error`: a write needs a writable area. Any other access, an instruction fetch
 * included, is checked as a read: on a present page (PF_PROT: NX, or U/S) it is the error; on a not-present
 * one it needs only an accessible area (`vma_is_accessible`: read, write or exec). So a fetch from a
 * non-executable area first maps the page (with XD), and the fetch that faults on it again is the SIGSEGV;
 * a read of a write-only or exec-only area maps the page (x86 has no write-only or exec-only ptes).
 */
function accessError(vma: Vma, errorCode: number): boolean {
  if ((errorCode & PFERR_WRITE) !== 0) return (vma.prot & PROT_WRITE) === 0;
  if ((errorCode & PFERR_PRESENT) !== 0) return true;
  return (vma.prot & (PROT_READ | PROT_WRITE | PROT_EXEC)) === 0;
}

/** A not-present pte in an area: the zero page, a new anonymous page, or a page cache page (or its private copy). */
function notPresent(k: KernelState, v: Vcpu, vma: Vma, va: number, pt: number, idx: number, write: boolean): number {
  const hi = leafHi(k, vma.prot);
  if (vma.backing === VMA_ANON) {
    if (!write) {
      setPte(k, v, pt, idx, (k.zeroFrame * PAGE_SIZE) | PT_PRESENT | PT_USER | PT_ACCESSED, hi);
      return FAULT_ZERO_PAGE;
    }
    const f = newAnonPage(k, v, vma, -1);
    setPte(k, v, pt, idx, (f * PAGE_SIZE) | PT_PRESENT | PT_WRITABLE | PT_USER | PT_ACCESSED | PT_DIRTY, hi);
    return FAULT_DEMAND_ZERO;
  }
  // mm/memory.c `do_fault`: a read is do_read_fault, a write do_cow_fault (private) or do_shared_fault.
  if (!write) {
    // A shared writable mapping of a file wants write notification (mm/mmap.c `vma_wants_writenotify`: its
    // mapping can write back), so its vm_page_prot has no R/W: a read maps the page read-only and the first
    // write is a write-protect fault (do_wp_page -> wp_page_shared).
    // __do_fault (filemap_fault: the page, read in with the pages around it on a miss), then finish_fault. A
    // filemap_fault that read ends in VM_FAULT_RETRY, and the retried do_read_fault maps with fault-around
    // what the read brought in (the faulting page too, unless it is the PG_readahead one).
    const file = vma.file!;
    const index = vma.filePage(va);
    // (If it does not, the retry's filemap_fault is a hit with FAULT_FLAG_TRIED, which changes nothing.)
    if (faultAround(k, v, vma, va, pt, idx, hi)) return FAULT_FILE;
    if (filemapFault(k, v, file, index) && faultAround(k, v, vma, va, pt, idx, hi)) return FAULT_FILE;
    const cache = file.pages.get(index)!;
    k.frames.get(cache);
    setPte(k, v, pt, idx, fileReadLeaf(cache), hi);
    return FAULT_FILE;
  }
  // do_cow_fault and do_shared_fault: __do_fault; its retry (FAULT_FLAG_TRIED) is a plain hit and changes nothing.
  filemapFault(k, v, vma.file!, vma.filePage(va));
  const cache = vma.file!.pages.get(vma.filePage(va))!;
  if (vma.backing === VMA_FILE_PRIVATE) {
    const f = newAnonPage(k, v, vma, cache);
    setPte(k, v, pt, idx, (f * PAGE_SIZE) | PT_PRESENT | PT_WRITABLE | PT_USER | PT_ACCESSED | PT_DIRTY, hi);
    return FAULT_COW;
  }
  // do_shared_fault maps the page writable and dirty (`maybe_mkwrite(pte_mkdirty())`).
  k.frames.get(cache);
  setPte(k, v, pt, idx, fileReadLeaf(cache) | PT_WRITABLE | PT_DIRTY, hi);
  return FAULT_FILE;
}

/** mm/memory.c `fault_around_pages`: fault_around_bytes (65536) >> PAGE_SHIFT. */
const FAULT_AROUND_PAGES = 16;

/**
 * mm/memory.c `do_read_fault` -> `do_fault_around` (Linux 3.15 and later; the window as 6.4 and later compute
 * it): the page-cache pages around `va` already there are mapped (`filemap_map_pages`) before the faulting page
 * is read in. The window is the aligned block of FAULT_AROUND_PAGES ptes around the pte, but starts no lower
 * than the area (`from_pte`; it then still spans FAULT_AROUND_PAGES ptes) and ends at the area's end or the
 * page table's last pte (`to_pte`). Returns whether the faulting page was among those mapped (it was cached).
 */
function faultAround(k: KernelState, v: Vcpu, vma: Vma, va: number, pt: number, pteOff: number, hi: number): boolean {
  const nr = FAULT_AROUND_PAGES;
  const vmaOff = (va - vma.start) / PAGE_SIZE;
  const from = Math.max(pteOff - (pteOff % nr), pteOff - Math.min(pteOff, vmaOff));
  const to = Math.min(from + nr, k.layout.entries, pteOff + (vma.end - vma.start) / PAGE_SIZE - vmaOff) - 1;
  return mapCachedPages(k, v, vma.file!, vma.filePage(va) + from - pteOff, pt, from, to, pteOff, hi);
}

/** A new anonymous page: zeroed (clear_page) or a copy of frame `from` (copy_page), through the direct map. */
function newAnonPage(k: KernelState, v: Vcpu, vma: Vma, from: number): number {
  const f = k.frames.alloc(FRAME_ANON);
  const dst = k.dm + f * PAGE_SIZE;
  if (from < 0 || from === k.zeroFrame) v.repStos(dst, PAGE_SIZE / 8, 8, 0, 0);
  else v.repMovs(dst, k.dm + from * PAGE_SIZE, PAGE_SIZE / 8, 8);
  // A page a fault gives to one process is exclusive (folio_add_new_anon_rmap sets PageAnonExclusive).
  k.frames.setExclusive(f, true);
  vma.anon = true;
  return f;
}

/** A write to a present read-only pte in a writable area: COW (mm/memory.c `do_wp_page`). */
function writeProtect(k: KernelState, v: Vcpu, proc: Process, vma: Vma, va: number, pt: number, idx: number, lo: number, hi: number): number {
  const frame = frameOf(k, lo, hi);
  if (vma.backing === VMA_FILE_SHARED) {
    setPte(k, v, pt, idx, lo | PT_WRITABLE | PT_DIRTY | PT_ACCESSED, hi);
    return FAULT_WP_REUSE;
  }
  const f = k.frames;
  if (frame !== k.zeroFrame && f.useOf(frame) === FRAME_ANON && f.refcountOf(frame) === 1) {
    // wp_page_reuse: the only user. Making a pte more permissive needs no flush (a stale entry faults
    // again and the walk sees the new pte, SDM Vol. 3A §4.10.4.3). do_wp_page marks the page exclusive
    // again (folio_move_anon_rmap, SetPageAnonExclusive).
    f.setExclusive(frame, true);
    setPte(k, v, pt, idx, lo | PT_WRITABLE | PT_DIRTY | PT_ACCESSED, hi);
    return FAULT_WP_REUSE;
  }
  // wp_page_copy: copy, then ptep_clear_flush (clear the pte, flush the TLBs) and set the new pte.
  const copy = newAnonPage(k, v, vma, frame);
  getAndClear(k, v, pt, idx);
  flushRange(k, v, proc, va, va + PAGE_SIZE);
  setPte(k, v, pt, idx, (copy * PAGE_SIZE) | PT_PRESENT | PT_WRITABLE | PT_USER | PT_ACCESSED | PT_DIRTY, hi);
  if (frame !== k.zeroFrame) f.put(frame);
  return FAULT_COW;
}
