import { PAGE_SIZE, type Vcpu } from '@vmexit/core';
import type { Process } from './process.js';
import type { KernelState } from './state.js';

/** Linux `tlb_single_page_flush_ceiling` (arch/x86/mm/tlb.c): up to 33 pages are flushed one by one. */
export const TLB_SINGLE_PAGE_FLUSH_CEILING = 33;

/**
 * Flushes [start, end) of `proc` on every vCPU that runs it: an INVLPG every `stride` bytes (a page, or the
 * span of a level whose tables alone were freed: mmu_gather's `tlb_get_unmap_shift`) while that makes at most
 * the ceiling, else a full (non-global) flush by reloading CR3 (Linux `flush_tlb_mm_range`: `(end - start) >>
 * stride_shift` against the ceiling; `flush_tlb_func`'s loop; on other vCPUs by IPI).
 */
export function flushRange(k: KernelState, v: Vcpu, proc: Process, start: number, end: number, stride: number = PAGE_SIZE): void {
  const pages = Math.floor((end - start) / stride);
  for (const w of k.machine.vcpus) {
    if (k.current[w.id] !== proc) continue;
    if (w !== v) k.stats.shootdowns++;
    if (pages <= TLB_SINGLE_PAGE_FLUSH_CEILING) {
      for (let a = start; a < end; a += stride) {
        w.invlpg(a);
        k.stats.invlpgs++;
      }
    } else {
      w.movToCr3(w.cr3);
      k.stats.fullFlushes++;
    }
  }
}

/** flush_tlb_mm: a full flush on every vCPU that runs `proc`. */
export function flushMm(k: KernelState, v: Vcpu, proc: Process): void {
  for (const w of k.machine.vcpus) {
    if (k.current[w.id] !== proc) continue;
    if (w !== v) k.stats.shootdowns++;
    w.movToCr3(w.cr3);
    k.stats.fullFlushes++;
  }
}
