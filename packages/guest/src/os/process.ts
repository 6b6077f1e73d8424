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
  constructor(
    readonly pid: number,
    readonly parent: Process | null,
    public name: string,
  ) {}
}
