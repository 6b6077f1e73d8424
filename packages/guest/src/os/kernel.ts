import {
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_LA57,
  CR4_PAE,
  CR4_PGE,
  CR4_PSE,
  EFER_LME,
  EFER_NXE,
  GP_VECTOR,
  PAGE_SIZE,
  PF_VECTOR,
  type Machine,
  type Vcpu,
} from '@vmexit/core';
import { generalProtection, pageFault } from './fault.js';
import { lookupFile } from './filemap.js';
import { doExec, doFork, mapAreas, mapImage, newProcess, teardown } from './fork.js';
import { FRAME_FREE, type FrameAllocator } from './frames.js';
import { MODE_LEGACY32, MODE_LONG4, MODE_LONG5, tableSpan, type ModeLayout } from './layout.js';
import { doBrk, doMmap, doMprotect, doMunmap } from './mmap.js';
import { inspectPte, tableFor } from './pgtable.js';
import type { AreaSpec, ImageSpec, Process } from './process.js';
import { KernelState, type KernelOptions, type Personality } from './state.js';
import type { GuestEventLog, KernelStats } from './stats.js';
import { flushLazy, switchMm } from './tlb.js';
import { doVfork, vforkExec, vforkExit } from './vfork.js';
import type { FileObject } from './vma.js';

/** Frames that boot warms through the direct map (256 MiB of RAM, see `Kernel.warm`). */
const WARM_FRAMES = 65536;

export { KernelPanic, GuestConfigError } from './errors.js';
export { fileWord } from './filemap.js';
export { Process, type AreaSpec, type ImageSpec } from './process.js';
export { PERSONALITIES, type KernelOptions, type Personality } from './state.js';
export { TLB_SINGLE_PAGE_FLUSH_CEILING } from './tlb.js';
export { PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE, VMA_ANON, VMA_FILE_PRIVATE, VMA_FILE_SHARED } from './vma.js';

/**
 * The guest OS model: a Linux-like kernel whose bookkeeping (processes, VMAs, the frame allocator) is plain
 * TypeScript, and whose every access to page tables and page contents is a guest memory access through a
 * vCPU, via the kernel direct map. A hypervisor beneath sees all of it; the kernel never looks at host state,
 * only at what it wrote itself.
 *
 * This class is the kernel's entry points (boot, system calls, the context switch); the mechanisms live
 * in modules as Linux's `mm/` splits them: `pgtable.ts` (page-table operations and the range walker),
 * `fault.ts` (the #PF and #GP handlers), `mmap.ts` (mmap, munmap, mprotect, brk), `fork.ts` (fork, exec,
 * exit), `tlb.ts` (flushes), `filemap.ts` (the page cache), over the data in `state.ts`.
 */
export class Kernel {
  readonly machine: Machine;
  readonly layout: ModeLayout;
  readonly frames: FrameAllocator;
  readonly stats: KernelStats;
  readonly events: GuestEventLog;
  readonly personalities: ReadonlySet<Personality>;
  /**
   * The address space each vCPU has loaded: the process whose tables CR3 holds (null: idle, on the kernel-only
   * tables). It is the process the vCPU runs, except for a vfork child before its exec (it runs in its parent's
   * space: `Process.mm`) and after such a child exited (the parent's space stays loaded, in lazy TLB mode: see
   * tlb.ts).
   */
  readonly current: (Process | null)[];
  readonly processes: Process[];
  /** Top table of init_mm (swapper_pg_dir): the kernel half only. */
  readonly idleRoot: number;
  readonly zeroFrame: number;
  private readonly k: KernelState;
  /** The process each vCPU runs (null: none), whose space is `current` (`Process.mm`): `KernelState.running`. */
  private readonly running: (Process | null)[];

  constructor(machine: Machine, mode: number, options: KernelOptions = {}) {
    // Boot: the boot loader has put the kernel's initial page tables in RAM (KernelState writes them).
    const k = new KernelState(machine, mode, options);
    this.k = k;
    this.machine = machine;
    this.layout = k.layout;
    this.frames = k.frames;
    this.stats = k.stats;
    this.events = k.events;
    this.personalities = k.personalities;
    this.current = k.current;
    this.running = k.running;
    this.processes = k.processes;
    this.idleRoot = k.idleRoot;
    this.zeroFrame = k.zeroFrame;
    for (const v of machine.vcpus) this.bootCpu(v);
    if (options.warmDirectMap !== false) this.warm(machine.vcpus[0]!);
  }

  /** Programs a vCPU's paging (SDM Vol. 3A §9.8.5 for IA-32e: PAE, then LME, then CR3, then PG), and the #PF and #GP handlers. */
  private bootCpu(v: Vcpu): void {
    const k = this.k;
    const mode = k.layout.mode;
    v.setCpl(0);
    let cr4 = CR4_PGE;
    if (mode === MODE_LEGACY32) cr4 |= CR4_PSE;
    else cr4 |= CR4_PAE;
    if (mode === MODE_LONG5) cr4 |= CR4_LA57;
    v.movToCr4(cr4);
    let efer = 0;
    if (k.nx) efer |= EFER_NXE;
    if (mode === MODE_LONG4 || mode === MODE_LONG5) efer |= EFER_LME;
    v.writeEfer(efer);
    v.movToCr3(k.idleRoot);
    v.movToCr0(CR0_PG | CR0_WP | CR0_PE);
    // The handlers name the task the vCPU runs (`running`), which differs from the space loaded for a vfork child.
    v.setExceptionHandler(PF_VECTOR, (vcpu, _vector, errorCode, cr2) => pageFault(k, vcpu, errorCode, cr2, this.running[vcpu.id] ?? null));
    v.setExceptionHandler(GP_VECTOR, (vcpu, _vector, errorCode, address) => generalProtection(k, vcpu, errorCode, address, this.running[vcpu.id] ?? null));
  }

  /**
   * Touches the free pages of the first WARM_FRAMES frames through the direct map (a read and the same value
   * written back): the frames the allocator hands out first (lowest first), so that a workload that fits in them
   * finds its direct-map translations warm. Bounded, so that boot does not cost in proportion to the RAM size.
   */
  private warm(v: Vcpu): void {
    const k = this.k;
    const f = k.frames;
    k.inKernel++;
    try {
      for (let frame = 0; frame < Math.min(f.totalFrames, WARM_FRAMES); frame++) {
        if (f.useOf(frame) !== FRAME_FREE) continue;
        const va = k.dm + frame * PAGE_SIZE;
        v.write(va, 4, v.read(va, 4));
      }
    } finally {
      k.inKernel--;
    }
  }

  /** The direct-map linear address of physical address `pa`. */
  directMap(pa: number): number {
    return this.k.dm + pa;
  }

  /** A system call: `fn` runs in the kernel (CPL 0) on `v`, and the CPL is restored after. */
  private syscall<T>(v: Vcpu, fn: () => T): T {
    const saved = v.cpl;
    v.setCpl(0);
    this.k.inKernel++;
    try {
      return fn();
    } finally {
      this.k.inKernel--;
      v.setCpl(saved);
    }
  }

  /** Creates a process with an empty user address space (a kernel-made init, or a posix_spawn'd one). */
  createProcess(v: Vcpu, name: string, parent: Process | null = null): Process {
    return this.syscall(v, () => newProcess(this.k, v, name, parent));
  }

  /**
   * Context switch to `proc` (null: idle): CR3 := the top table of its address space (`proc.mm`), unless the vCPU
   * has that space loaded already, as when it switches between a parent and its vfork child (arch/x86/mm/tlb.c
   * `switch_mm_irqs_off`: `prev == next` writes no CR3), or back to a space it kept loaded lazily, unless a flush
   * of that space skipped it meanwhile (see tlb.ts `switchMm`).
   */
  switchTo(v: Vcpu, proc: Process | null): void {
    const k = this.k;
    if (this.running[v.id] !== proc) {
      this.running[v.id] = proc;
      k.stats.contextSwitches++;
    }
    k.inKernel++;
    try {
      switchMm(k, v, proc === null ? null : proc.mm);
    } finally {
      k.inKernel--;
    }
  }

  /**
   * `v` has no task left to run (its tasks wait or have finished): it runs the idle task, which keeps the space
   * it had loaded (kernel/sched/core.c `context_switch` to a kernel thread: `enter_lazy_tlb`, no CR3 write). A
   * flush of that space skips it from then on, unless it frees page tables (tlb.ts), until a task runs there again.
   */
  idle(v: Vcpu): void {
    if (this.running[v.id] === null) return;
    this.running[v.id] = null;
    this.k.stats.contextSwitches++;
  }

  /** The file object of `path` (created on first use). */
  file(path: string): FileObject {
    return lookupFile(this.k, path);
  }

  /** mmap: a new area (MAP_FIXED replaces what was there). Returns its start. */
  mmap(v: Vcpu, proc: Process, addr: number | null, length: number, prot: number, backing: number, file: FileObject | null = null, offset = 0): number {
    return this.syscall(v, () => doMmap(this.k, v, proc.mm, addr, length, prot, backing, file, offset));
  }

  /** munmap(2): removes `[start, start + length)` from `proc`'s areas, frees the pages, and flushes the TLB of every vCPU that runs the process. */
  munmap(v: Vcpu, proc: Process, start: number, length: number): void {
    this.syscall(v, () => doMunmap(this.k, v, proc.mm, start, length));
  }

  /** mprotect: new rights for [start, start + length) and its present ptes (see `doMprotect`). */
  mprotect(v: Vcpu, proc: Process, start: number, length: number, prot: number): void {
    this.syscall(v, () => doMprotect(this.k, v, proc.mm, start, length, prot));
  }

  /** brk: moves the end of the heap ([brkBase, brkEnd), anonymous, read-write). */
  brk(v: Vcpu, proc: Process, newEnd: number): number {
    return this.syscall(v, () => doBrk(this.k, v, proc.mm, newEnd));
  }

  /**
   * fork: a child with a copy-on-write copy of the parent's address space (see `doFork`); of the space it runs in
   * (`parent.mm`: a vfork child that forks before its exec copies its parent's, as Linux's `dup_mmap(current->mm)`).
   */
  fork(v: Vcpu, parent: Process): Process {
    return this.syscall(v, () => doFork(this.k, v, parent.mm));
  }

  /** vfork: a child that runs in the parent's address space until its exec or exit; nothing copied (see `doVfork`). */
  vfork(v: Vcpu, parent: Process): Process {
    return this.syscall(v, () => doVfork(this.k, parent));
  }

  /** exec: a new address space with the image's areas, the old one torn down (a vfork child's: left to its parent). */
  exec(v: Vcpu, proc: Process, image: ImageSpec): void {
    this.execWith(v, proc, image.path, () => mapImage(this.k, proc, image));
  }

  /** exec with explicit areas (a trace's exec event: the mappings the loader made). */
  execAreas(v: Vcpu, proc: Process, path: string, areas: readonly AreaSpec[]): void {
    this.execWith(v, proc, path, () => mapAreas(proc, areas));
  }

  private execWith(v: Vcpu, proc: Process, path: string, map: () => void): void {
    this.syscall(v, () => {
      if (proc.borrowedMm !== null) vforkExec(this.k, v, proc, path, map);
      else doExec(this.k, v, proc, path, map);
    });
  }

  /** The areas of an image (ELF load): text and data from the file, bss, heap, stack. */
  mapImage(proc: Process, image: ImageSpec): void {
    mapImage(this.k, proc, image);
  }

  /** Where the image's areas start: text, and the stack's top. */
  imageAddresses(): { text: number; stackTop: number } {
    return { text: this.k.layout.textBase, stackTop: this.k.layout.stackTop };
  }

  /**
   * exit: the vCPUs that run the process go idle, then its address space is torn down. A vfork child that has not
   * exec'd frees nothing (the space is its parent's, see `vforkExit`) and its vCPUs keep that space loaded.
   */
  exit(v: Vcpu, proc: Process): void {
    if (proc.exited) return;
    if (proc.borrowedMm !== null) {
      // The vCPUs that run it switch away from it, with no CR3 write (lazy TLB: the parent's space stays loaded).
      for (const w of this.machine.vcpus) {
        if (this.running[w.id] !== proc) continue;
        this.running[w.id] = null;
        this.k.stats.contextSwitches++;
      }
      vforkExit(this.k, proc);
      return;
    }
    this.syscall(v, () => {
      this.k.stats.exits++;
      for (const w of this.machine.vcpus) {
        if (this.k.current[w.id] !== proc) continue;
        // A vCPU lazily on the space (no task of it runs there) gets the IPI of the teardown's flush, which frees
        // page tables (exit_mmap -> tlb_finish_mmu), and goes to the idle tables (tlb.ts flushLazy).
        if (w !== v && this.running[w.id] === null) flushLazy(this.k, w, true);
        else this.switchTo(w, null);
      }
      teardown(this.k, v, proc);
      proc.exited = true;
    });
  }

  /** The pte of `va` in `proc` as (lo, hi) read from guest memory directly, or null if a table is missing (tests, reports). */
  inspectPte(proc: Process, va: number): { lo: number; hi: number; table: number } | null {
    return inspectPte(this.k, proc, va);
  }

  /**
   * The physical address of the table of `level` that maps `va` in `proc` (through `v`'s accesses, as the
   * kernel walks), allocating missing tables when `alloc`; -1 when one is missing (tests, policies' scenarios).
   */
  tableFor(v: Vcpu, proc: Process, va: number, level: number, alloc: boolean): number {
    return tableFor(this.k, v, proc, va, level, alloc);
  }

  /** The span of a page table (level 1): how much one PT maps. */
  get ptSpan(): number {
    return tableSpan(this.k.layout, 1);
  }
}
