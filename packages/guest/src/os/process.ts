import type { FileObject } from './vma.js';
import { VmaList } from './vma.js';

/** One area an exec creates. */
export interface AreaSpec {
  readonly start: number;
  readonly end: number;
  readonly prot: number;
  readonly backing: number;
  readonly file: FileObject | null;
  readonly offset: number;
  readonly growsDown: boolean;
}

/** An executable image that exec maps (text and data from the file, bss, heap above it, a stack). */
export interface ImageSpec {
  readonly path: string;
  readonly textPages: number;
  readonly dataPages: number;
  readonly bssPages: number;
  readonly stackPages: number;
}

/** A process: its areas (Linux `mm_struct`'s VMA tree), its top table, its heap and its page-table count. */
export class Process {
  readonly vmas = new VmaList();
  /** Physical address of the top table (what CR3 holds). */
  root = 0;
  brkBase = 0;
  brkEnd = 0;
  exited = false;
  /** Page-table pages this address space holds, per level. */
  readonly tables = new Float64Array(6);
  /** Tasks (threads) of this process that have not finished. */
  threads = 0;
  /**
   * A vfork child before its exec or exit: the process whose address space it runs in (kernel/fork.c `copy_mm`
   * with CLONE_VM: `mm = oldmm`, nothing copied); its own areas, root and tables are empty until its exec. Null
   * once it has released the space (`mm_release` at exec or exit, which wakes the parent), and for every other
   * process. See os/vfork.ts.
   */
  borrowedMm: Process | null = null;
  constructor(
    readonly pid: number,
    readonly parent: Process | null,
    public name: string,
  ) {}

  /** The process whose address space this one runs in: itself, or the parent whose space a vfork child borrows. */
  get mm(): Process {
    return this.borrowedMm ?? this;
  }
}
