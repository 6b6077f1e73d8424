/**
 * What the guest kernel counts, and the per-run record of the guest-visible events (the #PFs its handler
 * received and the SIGSEGVs it sent), which a `--check` run compares between native and virtualized runs.
 */

/** The kinds of page fault the kernel's handler resolves (Linux mm/memory.c names in the comments). */
export const FAULT_DEMAND_ZERO = 0; // do_anonymous_page, write: a new zeroed page
/** Do_anonymous_page, read: the shared zero page, read-only. */
export const FAULT_ZERO_PAGE = 1;
/** Do_read_fault / do_shared_fault: a page-cache page. */
export const FAULT_FILE = 2;
/** Do_cow_fault / wp_page_copy: a private copy. */
export const FAULT_COW = 3;
/** Wp_page_reuse: the only user of the page gets write access in place. */
export const FAULT_WP_REUSE = 4;
/** The pte already allows the access (a stale TLB entry elsewhere) */
export const FAULT_SPURIOUS = 5;
/** No area, or the area forbids the access: SIGSEGV. */
export const FAULT_SIGSEGV = 6;
/** The names of the guest fault kinds, indexed by the FAULT_* numbers (as results and the trace print them). */
export const FAULT_KIND_NAMES = ['demand-zero', 'zero-page', 'file', 'cow', 'wp-reuse', 'spurious', 'sigsegv'] as const;
/** The name of a guest fault kind (see FAULT_KIND_NAMES). */
export type FaultKindName = (typeof FAULT_KIND_NAMES)[number];

/** One guest-visible event: a #PF the guest's handler received, with the kind it resolved it as. */
export interface GuestFaultEvent {
  readonly seq: number;
  readonly vcpu: number;
  readonly pid: number;
  /** CR2, the faulting linear address (signed-canonical). */
  readonly address: number;
  readonly errorCode: number;
  readonly kind: FaultKindName;
}

/** The #PFs in the order the guest received them, in growable typed arrays (no object per fault). */
export class GuestEventLog {
  length = 0;
  private vcpu = new Uint16Array(1024);
  private pid = new Int32Array(1024);
  private address = new Float64Array(1024);
  private errorCode = new Int32Array(1024);
  private kind = new Uint8Array(1024);

  /** Records a fault; returns its index (the kind is set when the handler has decided it). */
  push(vcpu: number, pid: number, address: number, errorCode: number): number {
    if (this.length === this.kind.length) this.grow();
    const i = this.length++;
    this.vcpu[i] = vcpu;
    this.pid[i] = pid;
    this.address[i] = address;
    this.errorCode[i] = errorCode;
    this.kind[i] = FAULT_SPURIOUS;
    return i;
  }

  /** Sets the kind (a FAULT_* number) of fault `i` once the handler has decided it. */
  setKind(i: number, kind: number): void {
    this.kind[i] = kind;
  }

  /** Fault `i` as an object (allocated on each call). */
  at(i: number): GuestFaultEvent {
    return {
      seq: i,
      vcpu: this.vcpu[i]!,
      pid: this.pid[i]!,
      address: this.address[i]!,
      errorCode: this.errorCode[i]!,
      kind: FAULT_KIND_NAMES[this.kind[i]!]!,
    };
  }

  /** The faults in the order the guest received them. */
  *[Symbol.iterator](): IterableIterator<GuestFaultEvent> {
    for (let i = 0; i < this.length; i++) yield this.at(i);
  }

  private grow(): void {
    const n = this.kind.length * 2;
    const g = <T extends Uint16Array | Int32Array | Float64Array | Uint8Array>(a: T, b: T): T => {
      b.set(a);
      return b;
    };
    this.vcpu = g(this.vcpu, new Uint16Array(n));
    this.pid = g(this.pid, new Int32Array(n));
    this.address = g(this.address, new Float64Array(n));
    this.errorCode = g(this.errorCode, new Int32Array(n));
    this.kind = g(this.kind, new Uint8Array(n));
  }
}

/** The kernel's counters. Per-level arrays are indexed by page-table level (1 = PT ... 5 = PML5). */
export class KernelStats {
  readonly faults = new Float64Array(FAULT_KIND_NAMES.length);
  pageFaults = 0;
  /** #GPs from user mode, each a SIGSEGV (a non-canonical address); not page faults, so not in `faults`. */
  generalProtection = 0;
  processes = 0;
  forks = 0;
  execs = 0;
  exits = 0;
  mmaps = 0;
  munmaps = 0;
  mprotects = 0;
  brks = 0;
  contextSwitches = 0;
  /** TLB flushes the kernel asked for on other vCPUs (IPIs), and the INVLPGs and full flushes it issued. */
  shootdowns = 0;
  invlpgs = 0;
  fullFlushes = 0;
  pageCacheMisses = 0;
  pteWrites = 0;
  readonly tablesAllocated = new Float64Array(6);
  readonly tablesFreed = new Float64Array(6);
}
