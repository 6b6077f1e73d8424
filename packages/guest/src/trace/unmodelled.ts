/**
 * What a valid recording may do that a `.vxt` trace has no event for and the guest model does not model: the
 * importer refuses it (TraceError `unsupported`) rather than import it as nothing, which would replay the
 * accesses after it on another address space than the recorded one (pages present that Linux had zapped,
 * faults that Linux took in the kernel, a mapping that Linux had moved).
 */

/**
 * mmap flags that fault the pages in at the call (include/uapi/asm-generic/mman.h: MAP_LOCKED, MAP_POPULATE;
 * mm/util.c `vm_mmap_pgoff` -> `mm_populate`) or map huge pages (MAP_HUGETLB).
 */
const MAP_UNMODELLED: readonly (readonly [number, string])[] = [
  [0x2000, 'MAP_LOCKED'],
  [0x8000, 'MAP_POPULATE'],
  [0x40000, 'MAP_HUGETLB'],
];

/**
 * madvise advice that changes which pages are present or what a fork copies (include/uapi/asm-generic/mman-common.h;
 * mm/madvise.c): the pages are zapped (DONTNEED, FREE, REMOVE, PAGEOUT, DONTNEED_LOCKED, HWPOISON), faulted in
 * (POPULATE_READ, POPULATE_WRITE), or left out of or zeroed in a fork child (DONTFORK, WIPEONFORK). Other advice
 * (NORMAL, RANDOM, SEQUENTIAL, WILLNEED, HUGEPAGE, ...) changes no pte and is imported as nothing.
 */
const MADV_UNMODELLED = new Map<number, string>([
  [4, 'MADV_DONTNEED'],
  [8, 'MADV_FREE'],
  [9, 'MADV_REMOVE'],
  [10, 'MADV_DONTFORK'],
  [18, 'MADV_WIPEONFORK'],
  [21, 'MADV_PAGEOUT'],
  [22, 'MADV_POPULATE_READ'],
  [23, 'MADV_POPULATE_WRITE'],
  [24, 'MADV_DONTNEED_LOCKED'],
  [100, 'MADV_HWPOISON'],
]);

/** mlock2's MLOCK_ONFAULT and mlockall's MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT (include/uapi/asm-generic/mman-common.h). */
const MLOCK_ONFAULT = 1;
const MCL_CURRENT = 1;
const MCL_FUTURE = 2;
const MCL_ONFAULT = 4;

/** The name of an mmap flag the guest model does not model, or null. */
export function unmodelledMmapFlag(flags: number): string | null {
  for (const [bit, name] of MAP_UNMODELLED) if ((flags & bit) !== 0) return name;
  return null;
}

/**
 * What a successful syscall `nr` (x86-64 numbers, arch/x86/entry/syscalls/syscall_64.tbl) with arguments `arg(i)`
 * does that the guest model does not model, or null when it is modelled or changes nothing the MMU sees.
 */
export function unmodelledSyscall(nr: number, arg: (i: number) => number): string | null {
  switch (nr) {
    case 25:
      return 'mremap (the guest model cannot move or resize a mapping with its pages)';
    case 28: {
      const name = MADV_UNMODELLED.get(arg(2));
      return name === undefined ? null : `madvise with ${name} (the guest model has no madvise)`;
    }
    case 30:
      return 'shmat (the guest model has no System V shared memory)';
    case 149:
      return 'mlock (it faults the pages in at the call)';
    case 151:
      // mm/mlock.c: MCL_CURRENT faults in what is mapped, MCL_FUTURE what is mapped later, unless MCL_ONFAULT
      return (arg(0) & MCL_ONFAULT) === 0 && (arg(0) & (MCL_CURRENT | MCL_FUTURE)) !== 0 ? 'mlockall (it faults the pages in at the call)' : null;
    case 216:
      return 'remap_file_pages (the guest model has no nonlinear mappings)';
    case 325:
      return (arg(2) & MLOCK_ONFAULT) === 0 ? 'mlock2 (it faults the pages in at the call)' : null;
    case 329:
      return 'pkey_mprotect (a .vxt trace holds no protection keys)';
    default:
      return null;
  }
}
