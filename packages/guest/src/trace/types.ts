/**
 * The in-memory form of a `.vxt` trace: what `decodeVxt` returns, what `importLackey` builds, and what the
 * guest OS model replays.
 *
 * A trace is a set of processes. Each process is one recorded pid (a fork child's pre-exec part and its
 * exec'd image share the pid, as they do under Linux). There is no global order between processes: the
 * recording (valgrind lackey, one log per process) gives none: access lines carry
 * no timestamp or sequence number, and each process writes its own log), so the replayer
 * schedules the per-process streams itself, using fork/wait/exec/exit as synchronisation points.
 *
 * Within one process, everything is in program order: the access records of process `p` are the global
 * record indices `[p.recordStart, p.recordEnd)` (records of one process are contiguous), and each of its
 * events carries `at`, the global index of the first access record that comes after the event. Several
 * events may share the same `at`; their order in `p.events` is then their program order.
 *
 * Access records are columnar typed arrays (no object per record). A record is `(kind, page, count)`:
 * `count` accesses of that kind to that 4 KiB virtual page, collapsed as `VxtTrace.collapse` says (`run`:
 * consecutive in the process; `class`: consecutive in the process's fetch stream or in its data stream).
 * An access that straddles a page boundary gives one access on each page. No record spans an event.
 *
 * Addresses are those of the recording, i.e. valgrind's layout of the client (ld.so near `0x4000000`,
 * the stack near `0x1fff000000`), all below 2^47 and therefore exact numbers.
 */

/** Record kind: an instruction fetch (lackey `I`). Replays as an access with PFERR_FETCH. */
export const KIND_FETCH = 0;
/** Record kind: a data load (lackey ` L`). */
export const KIND_LOAD = 1;
/** Record kind: a data store (lackey ` S`). Replays as a write. */
export const KIND_STORE = 2;
/** Record kind: a modify, i.e. a load and a store of the same bytes (lackey ` M`, e.g. `add [mem], reg`). Replays as a write. */
export const KIND_MODIFY = 3;

/** One of `KIND_FETCH`, `KIND_LOAD`, `KIND_STORE`, `KIND_MODIFY`. */
export type AccessKind = 0 | 1 | 2 | 3;

/** Names of the kinds, indexed by kind (for reports). */
export const KIND_NAMES = ['fetch', 'load', 'store', 'modify'] as const;

/** log2 of the page size that `page` is in units of (4 KiB). */
export const VXT_PAGE_SHIFT = 12;

/** Linux mmap/mprotect protection bits (`PROT_*`, <asm-generic/mman-common.h>). */
export const PROT_READ = 1;
/** PROT_WRITE (Linux uapi mman-common.h): the mapping may be written. */
export const PROT_WRITE = 2;
/** PROT_EXEC (Linux uapi mman-common.h): the mapping may be executed. */
export const PROT_EXEC = 4;

/** Linux mmap flags that matter to the replay (<asm-generic/mman-common.h>, <linux/mman.h>). */
export const MAP_SHARED = 0x01;
/** MAP_PRIVATE (Linux uapi mman-common.h): writes are private to the process (copy-on-write). */
export const MAP_PRIVATE = 0x02;
/** MAP_FIXED (Linux uapi mman-common.h): map exactly at the given address, replacing what was there. */
export const MAP_FIXED = 0x10;
/** MAP_ANONYMOUS (Linux uapi mman-common.h): zero-filled memory, no file behind it. */
export const MAP_ANONYMOUS = 0x20;

/** The access records of a whole trace, columnar. All arrays have exactly `length` elements. */
export interface VxtAccesses {
  /** Number of records. */
  readonly length: number;
  /** Kind of each record: `KIND_FETCH`, `KIND_LOAD`, `KIND_STORE` or `KIND_MODIFY`. */
  readonly kind: Uint8Array;
  /** Virtual page number of each record (virtual address >> 12; the address is `page * 4096`). */
  readonly page: Float64Array;
  /** Number of consecutive accesses (>= 1) that the record stands for. */
  readonly count: Uint32Array;
}

/**
 * A mapping that exists when an image starts running without a syscall in the trace having made it: what
 * valgrind's loader mapped (the executable's segments, the interpreter ld.so, the stack, the vdso), as
 * the importer inferred it from the pages that the image touched outside every mapping the trace made.
 */
export interface VxtMapping {
  /** First byte (page aligned). */
  readonly start: number;
  /** Length in bytes (a multiple of 4096). */
  readonly length: number;
  /** `PROT_*` bits. Inferred from the accesses: always READ, WRITE if stored to, EXEC if fetched from. */
  readonly prot: number;
  /** What the region is (by valgrind's layout): `exe`, `interp` (ld.so), `stack`, `vdso`, or `other`. */
  readonly role: 'exe' | 'interp' | 'stack' | 'vdso' | 'other';
  /** The file mapped, when known (the image path for `exe`), else null. */
  readonly file: string | null;
}

/** Fields common to every event. */
interface VxtEventBase {
  /** Global index of the first access record after this event (in `[recordStart, recordEnd]` of its process). */
  readonly at: number;
}

/** `mmap(start, length, prot, flags, fd, offset)` that succeeded. */
export interface VxtMmapEvent extends VxtEventBase {
  readonly type: 'mmap';
  /** The address the kernel returned (page aligned). */
  readonly start: number;
  /** Length in bytes, rounded up to a multiple of 4096. */
  readonly length: number;
  /** `PROT_*` bits. */
  readonly prot: number;
  /** `MAP_*` flags as passed. */
  readonly flags: number;
  /** File offset in bytes (0 for anonymous mappings). */
  readonly offset: number;
  /** The file mapped (from the `openat` that returned the fd, when the trace shows it), or null (anonymous or unknown). */
  readonly file: string | null;
}

/** `munmap(start, length)` that succeeded. */
export interface VxtMunmapEvent extends VxtEventBase {
  readonly type: 'munmap';
  /** First byte (page aligned). */
  readonly start: number;
  /** Length in bytes, rounded up to a multiple of 4096. */
  readonly length: number;
}

/** `mprotect(start, length, prot)` that succeeded. */
export interface VxtMprotectEvent extends VxtEventBase {
  readonly type: 'mprotect';
  /** First byte (page aligned). */
  readonly start: number;
  /** Length in bytes, rounded up to a multiple of 4096. */
  readonly length: number;
  /** New `PROT_*` bits. */
  readonly prot: number;
}

/**
 * `brk(request)`: the program break moved (or was queried). The heap of the image is `[base, result)`,
 * where `base` is the result of the image's first brk.
 */
export interface VxtBrkEvent extends VxtEventBase {
  readonly type: 'brk';
  /** The argument (0 queries the current break). */
  readonly request: number;
  /** The break after the call (what the syscall returned). */
  readonly result: number;
}

/**
 * In the parent: `fork`/`vfork`/`clone` created process `child`. After a fork the child has a copy of the
 * parent's address space at this point; after a vfork (`vfork`) it shares the parent's until it execs or exits.
 */
export interface VxtForkEvent extends VxtEventBase {
  readonly type: 'fork';
  /** The parent (this process). */
  readonly parent: number;
  /** The child's pid; it is one of `VxtTrace.processes`. */
  readonly child: number;
  /**
   * A vfork: `vfork()` (x86-64 syscall 58), or `clone` with CLONE_VM and CLONE_VFORK (glibc's posix_spawn). The
   * child runs in the parent's address space (kernel/fork.c `copy_mm`: CLONE_VM shares the mm, nothing is copied)
   * and the parent sleeps until the child has exec'd or exited (`wait_for_vfork_done`). Valgrind runs a vfork as a
   * fork, so the recording shows the child's accesses as a fork child's; the replay gives them the shared space.
   * Absent on a fork; a .vxt file writes a vfork as an event of type `vfork`, which a reader without it refuses.
   */
  readonly vfork?: true;
}

/**
 * The process replaces its image by `path`: the whole address space is dropped and `mappings` are
 * created. A root process (no parent) starts with an exec event at its `recordStart`.
 */
export interface VxtExecEvent extends VxtEventBase {
  readonly type: 'exec';
  /** The process. */
  readonly pid: number;
  /** The path of the new image (the execve path, or for the root, the first word of valgrind's `Command:`). */
  readonly path: string;
  /** The image's initial mappings, as inferred (sorted by start, non-overlapping). */
  readonly mappings: readonly VxtMapping[];
}

/**
 * The process waited for its child `child` to exit and reaped it (`wait4`/`waitid` returned that child): in the
 * recording the process was blocked until then, so the replay runs none of its records after this event before
 * the child has exited. (Without it, a parent that forks and waits, as a compiler driver does for each pass,
 * would run on alongside its child, and the children of later forks alongside the earlier ones.)
 */
export interface VxtWaitEvent extends VxtEventBase {
  readonly type: 'wait';
  /** The child reaped: a process this one forked earlier (a `fork` event before this one). */
  readonly child: number;
}

/** The process ends (its last event). */
export interface VxtExitEvent extends VxtEventBase {
  readonly type: 'exit';
  /** The process. */
  readonly pid: number;
  /** The exit status (from `exit_group`/`exit`, or valgrind's `Exit code:` footer), or null when killed by a signal or the log does not say. */
  readonly status: number | null;
  /** The signal that killed the process (valgrind's "terminating with default action of signal N"), else null. */
  readonly signal: number | null;
}

/** A process event, positioned in its process's program order by `at`. */
export type VxtEvent = VxtMmapEvent | VxtMunmapEvent | VxtMprotectEvent | VxtBrkEvent | VxtForkEvent | VxtWaitEvent | VxtExecEvent | VxtExitEvent;

/** One recorded process (one pid). */
export interface VxtProcess {
  /** The recorded pid (unique in the trace). */
  readonly pid: number;
  /** The parent's pid, or 0 for the root of the recording. */
  readonly parent: number;
  /** Global index of this process's first access record. */
  readonly recordStart: number;
  /** One past the global index of its last access record (`recordEnd - recordStart` records). */
  readonly recordEnd: number;
  /** Its events in program order (fork children appear as `fork` events; the first event of a root is `exec`). */
  readonly events: readonly VxtEvent[];
}

/**
 * How accesses were collapsed into records.
 *
 * - `run`: consecutive accesses of one kind to one page, with nothing in between, are one record. The
 *   records replay the exact page-granular sequence (lossless).
 * - `class`: a fetch joins the process's last fetch record if it is to the same page; a load, store or
 *   modify joins the last data record if it is to the same page and of the same kind, even when records
 *   of the other class came in between. Each class's own sequence is kept exactly, and so is every
 *   count by kind and page; what is lost is the interleaving of fetches and data accesses inside a
 *   stretch where one of them stayed on one page. With split I/D TLBs nothing that the MMU sees changes
 *   (the joined accesses hit the entry the record's first access filled); with one unified TLB, a data
 *   page that evicts the code page in between would have made a miss (with a similar filter, a 4,096-entry
 *   direct-mapped unified TLB missed 0.15 % less often on a recorded cc1 run: 28,805 misses against 28,849). About 3x fewer records than `run` on compiler code.
 */
export type VxtCollapse = 'run' | 'class';

/**
 * A decoded trace. A replay only reads it. A trace that a `createTraceLoader` gave out is shared by the runs
 * that replay it: do not change it.
 */
export interface VxtTrace {
  /** How accesses were collapsed into records. */
  readonly collapse: VxtCollapse;
  /** Where it came from (e.g. `lackey`) and how it was recorded (the root's command line), for `trace info`. */
  readonly source: { readonly tool: string; readonly command: string };
  /** The access records of all processes. */
  readonly accesses: VxtAccesses;
  /** The processes, parents before their children (the root first). */
  readonly processes: readonly VxtProcess[];
}
