import { PAGE_SIZE, type Vcpu } from '@vmexit/core';
import type { Process } from './process.js';
import type { KernelState } from './state.js';

/** Linux `tlb_single_page_flush_ceiling` (arch/x86/mm/tlb.c): up to 33 pages are flushed one by one. */
export const TLB_SINGLE_PAGE_FLUSH_CEILING = 33;

/*
 * Lazy TLB (arch/x86/mm/tlb.c): a CPU that runs no task of the mm it has loaded (the task there exited, and the
 * idle task keeps the mm: `enter_lazy_tlb` sets `cpu_tlbstate_shared.is_lazy`) gets no flush IPI
 * (`native_flush_tlb_multi` -> `should_flush_tlb` is false for it), unless the flush frees page tables
 * (`info->freed_tables`: the IPI goes to every CPU of mm_cpumask, and `flush_tlb_func` switches a lazy CPU to
 * init_mm, so that it cannot walk freed tables speculatively). A lazy CPU that missed a flush catches up when the
 * mm runs there again (`switch_mm_irqs_off` with `prev == next` and `was_lazy`: its tlb_gen is behind the mm's,
 * so it reloads CR3 with a flush). Here a vCPU is lazy when it runs no process (`running`) and still has a space
 * loaded (`current`): where a vfork child exited before its exec, and where every task of the vCPU has finished or
 * waits, so that it runs the idle task (`Kernel.idle`).
 */

/** Whether `w` is in lazy TLB mode: a space loaded, no task of it running. */
function isLazy(k: KernelState, w: Vcpu): boolean {
  return k.running[w.id] === null && k.current[w.id] !== null;
}

/**
 * A flush of the space lazy vCPU `w` has loaded: with page tables freed, the IPI, and `flush_tlb_func` switches
 * `w` to init_mm (a CR3 write of the idle tables, a full flush); without, no IPI, and `w` is behind.
 */
export function flushLazy(k: KernelState, w: Vcpu, freedTables: boolean): void {
  if (!freedTables) {
    k.lazyBehind[w.id] = true;
    return;
  }
  k.stats.shootdowns++;
  k.current[w.id] = null;
  k.lazyBehind[w.id] = false;
  w.movToCr3(k.idleRoot);
  k.stats.fullFlushes++;
}

/**
 * Loads space `mm` (null: the idle tables) on `v` (arch/x86/mm/tlb.c `switch_mm_irqs_off`): a CR3 write, except
 * when `v` has `mm` loaded already (`prev == next`), where it writes none unless `v` was lazy and missed a flush
 * of `mm` meanwhile: then it reloads CR3 (a full flush).
 */
export function switchMm(k: KernelState, v: Vcpu, mm: Process | null): void {
  if (k.current[v.id] === mm) {
    if (!k.lazyBehind[v.id]) return;
    k.stats.fullFlushes++;
  }
  k.current[v.id] = mm;
  k.lazyBehind[v.id] = false;
  v.movToCr3(mm === null ? k.idleRoot : mm.root);
}

/**
 * Flushes [start, end) of `proc` on every vCPU that has it loaded: an INVLPG every `stride` bytes (a page, or the
 * span of a level whose tables alone were freed: mmu_gather's `tlb_get_unmap_shift`) while that makes at most
 * the ceiling, else a full (non-global) flush by reloading CR3 (Linux `flush_tlb_mm_range`: `(end - start) >>
 * stride_shift` against the ceiling; `flush_tlb_func`'s loop; on other vCPUs by IPI). A lazy vCPU is flushed
 * only when `freedTables` (see above).
 */
export function flushRange(k: KernelState, v: Vcpu, proc: Process, start: number, end: number, stride: number = PAGE_SIZE, freedTables = false): void {
  const pages = Math.floor((end - start) / stride);
  for (const w of k.machine.vcpus) {
    if (k.current[w.id] !== proc) continue;
    if (w !== v) {
      if (isLazy(k, w)) {
        flushLazy(k, w, freedTables);
        continue;
      }
      k.stats.shootdowns++;
    }
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

/**
 * flush_tlb_mm: a full flush on every vCPU that has `proc` loaded. x86 defines it as `flush_tlb_mm_range(mm, 0,
 * TLB_FLUSH_ALL, 0, true)` (arch/x86/include/asm/tlbflush.h): freed_tables, so lazy vCPUs get the IPI too.
 */
export function flushMm(k: KernelState, v: Vcpu, proc: Process): void {
  for (const w of k.machine.vcpus) {
    if (k.current[w.id] !== proc) continue;
    if (w !== v) {
      if (isLazy(k, w)) {
        flushLazy(k, w, true);
        continue;
      }
      k.stats.shootdowns++;
    }
    w.movToCr3(w.cr3);
    k.stats.fullFlushes++;
  }
}
