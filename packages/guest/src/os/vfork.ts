import type { Vcpu } from '@vmexit/core';
import { newMm } from './pgtable.js';
import { Process } from './process.js';
import type { KernelState } from './state.js';
import { switchMm } from './tlb.js';

/*
 * vfork: kernel/fork.c `kernel_clone` with CLONE_VM | CLONE_VFORK (vfork(2), and glibc's posix_spawn). The child
 * shares the parent's mm (`copy_mm`: `mmget(oldmm); mm = oldmm`): no area, page table or pte is copied and nothing
 * is write-protected or flushed. The parent sleeps in `wait_for_vfork_done` until the child releases the mm
 * (`mm_release` -> `complete_vfork_done`), at its exec (fs/exec.c `exec_mmap` -> `exec_mm_release`) or its exit
 * (kernel/exit.c `exit_mm` -> `exit_mm_release`). A context switch between two tasks of one mm writes no CR3
 * (arch/x86/mm/tlb.c `switch_mm_irqs_off`: `prev == next` with an up-to-date TLB generation returns early); the
 * kernel's context switch follows that (kernel.ts `switchTo`). The task side (the parent blocked, woken at the
 * child's exec or exit) is in tasks.ts.
 */

/**
 * vfork: a child process that runs in `parent`'s address space (`parent.mm`: for a vfork child that vforks
 * before its exec, the space it borrows itself). Nothing is copied or allocated.
 */
export function doVfork(k: KernelState, parent: Process): Process {
  // copy_process counts every new process (total_forks), a vfork as a fork.
  k.stats.forks++;
  const child = new Process(k.nextPid++, parent, parent.name);
  child.borrowedMm = parent.mm;
  k.processes.push(child);
  k.stats.processes++;
  return child;
}

/**
 * exec in a vfork child (fs/exec.c `exec_mmap` on a shared mm): the parent is released first
 * (`exec_mm_release`), then the child gets a new address space that `map` fills and the vCPUs that run it
 * (`KernelState.running`, the process each vCPU runs) switch to it (`activate_mm`). The old space is the parent's: `mmput`
 * only drops the child's reference, and nothing of it is torn down, freed or flushed.
 */
export function vforkExec(k: KernelState, v: Vcpu, proc: Process, path: string, map: () => void): void {
  k.stats.execs++;
  proc.borrowedMm = null;
  proc.name = path;
  newMm(k, v, proc);
  map();
  for (const w of k.machine.vcpus) if (k.running[w.id] === proc) switchMm(k, w, proc);
}

/**
 * exit of a vfork child before its exec (kernel/exit.c `exit_mm`): the parent is released (`exit_mm_release`) and
 * the child's reference to the parent's space dropped (`mmput`, not the last one): nothing is torn down. The vCPUs
 * that ran the child keep the parent's tables loaded (the next task there is lazy, or the parent: no CR3 write).
 */
export function vforkExit(k: KernelState, proc: Process): void {
  k.stats.exits++;
  proc.borrowedMm = null;
  proc.exited = true;
}
