import { MODE_LEGACY32, MODE_LONG4, MODE_LONG5, MODE_PAE, type PagingModeId } from '@vmexit/core';

/**
 * The shape of the guest's page tables in one paging mode (SDM Vol. 3A §4.3-4.5, Table 4-1), and where the
 * kernel puts things in the linear address space (Linux's layout: arch/x86/include/asm/page_32_types.h,
 * page_64_types.h, Documentation/arch/x86/x86_64/mm.rst).
 *
 * Levels are numbered as the walker numbers them: 1 = PT, 2 = PD, 3 = PDPT, 4 = PML4, 5 = PML5. In PAE
 * mode level 3 is the 4-entry PDPT that CR3 points to (its entries are loaded into the PDPTE registers).
 */
export interface ModeLayout {
  readonly mode: PagingModeId;
  /** The top level (2 for legacy32, 3 for PAE, 4, 5). */
  readonly top: number;
  /** Bytes per entry: 4 (legacy32) or 8. */
  readonly entrySize: 4 | 8;
  /** Entries per table (1024 or 512; the PAE PDPT has 4, in a page of its own). */
  readonly entries: number;
  /** log2 of the span of one entry at each level, indexed by level (index 0 unused). */
  readonly shift: readonly number[];
  /** The kernel direct map of all guest RAM: its base linear address (signed-canonical). */
  readonly directMapBase: number;
  /** Size of the direct map's large pages (4 MiB with PSE in legacy32, else 2 MiB). */
  readonly directMapPage: number;
  /** Top-level index of the first kernel entry (the kernel half, shared by all processes). */
  readonly kernelTopIndex: number;
  /** User space is [0, userLimit). */
  readonly userLimit: number;
  /** Largest guest RAM the direct map can hold (Linux: 896 MiB of lowmem on 32-bit; 64 TiB in 4-level, Documentation/arch/x86/x86_64/mm.rst). */
  readonly maxMemory: number;
  /** Where the stack of a new image ends (exclusive). */
  readonly stackTop: number;
  /**
   * `mm->mmap_base` of the default (top-down) layout: mmap(NULL) takes the highest free range below it
   * (see `topDownMmapBase`).
   */
  readonly mmapBase: number;
  /** `mm->mmap_legacy_base`: where the bottom-up search starts when the top-down one finds no room (see `legacyMmapBase`). */
  readonly legacyMmapBase: number;
  /** The aliased-pdes arena: anonymous mappings go in [arenaBase, arenaBase + arenaSize) and their read-only alias view at + arenaSize. */
  readonly arenaBase: number;
  readonly arenaSize: number;
  /** Where an executable's text starts. */
  readonly textBase: number;
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const PAGE = 4096;

/** RLIMIT_STACK's default soft limit (include/uapi/linux/resource.h `_STK_LIM`, 8 MiB). */
export const STK_LIM = 8 * MiB;
/** mm/mmap.c `stack_guard_gap`: 256 pages kept free below a stack that grows down. */
export const STACK_GUARD_GAP = 256 * PAGE;

/**
 * `mm->mmap_base` of the top-down layout that Linux picks unless the legacy one is asked for
 * (arch/x86/mm/mmap.c `arch_pick_mmap_layout`: `mmap_is_legacy` holds only with the ADDR_COMPAT_LAYOUT
 * personality or the legacy_va_layout sysctl), from arch/x86/mm/mmap.c `mmap_base`:
 *
 *     gap = rlimit(RLIMIT_STACK) + stack_maxrandom_size(task_size) + stack_guard_gap
 *     gap = clamp(gap, 128 MiB, task_size / 6 * 5)
 *     mmap_base = PAGE_ALIGN(task_size - gap - rnd)
 *
 * The model has no address-space randomization (it is deterministic): a process runs as with PF_RANDOMIZE
 * clear (`setarch -R`, or randomize_va_space = 0), so `stack_maxrandom_size` and `rnd` (`arch_mmap_rnd`) are 0.
 * With the default 8 MiB stack rlimit: gap = 8 MiB + 1 MiB, clamped up to 128 MiB, and mmap_base =
 * task_size - 128 MiB: 0x7ffff7fff000 in 64-bit mode (task_size_64bit(0) = DEFAULT_MAP_WINDOW = 2^47 - 4 KiB,
 * where Linux maps a process's libraries under gdb, which turns randomization off), 0xb8000000 on 32-bit
 * (TASK_SIZE = PAGE_OFFSET = 3 GiB).
 */
export function topDownMmapBase(taskSize: number): number {
  const gap = Math.min(Math.max(STK_LIM + STACK_GUARD_GAP, 128 * MiB), Math.floor(taskSize / 6) * 5);
  return Math.ceil((taskSize - gap) / PAGE) * PAGE;
}

/**
 * `mm->mmap_legacy_base` (arch/x86/mm/mmap.c `mmap_legacy_base`, rnd 0): `__TASK_UNMAPPED_BASE(task_size)` =
 * PAGE_ALIGN(task_size / 3): 0x2aaaaaaab000 in 64-bit mode, 0x40000000 on 32-bit.
 */
export function legacyMmapBase(taskSize: number): number {
  return Math.ceil(taskSize / 3 / PAGE) * PAGE;
}

/** TASK_SIZE of 32-bit paging and PAE: PAGE_OFFSET, the 3G/1G split. */
const TASK_SIZE_32 = 0xc0000000;
/** TASK_SIZE of a 64-bit process (task_size_64bit(0) = DEFAULT_MAP_WINDOW, 47 bits less a page, in 5-level paging too). */
const TASK_SIZE_64 = 2 ** 47 - PAGE;

export function modeLayout(mode: PagingModeId): ModeLayout {
  switch (mode) {
    case MODE_LEGACY32:
      // 32-bit paging: PDE 31:22, PTE 21:12 (§4.3). PAGE_OFFSET = 0xC0000000 (the 3G/1G split); PSE 4 MiB pages.
      return {
        mode,
        top: 2,
        entrySize: 4,
        entries: 1024,
        shift: [0, 12, 22],
        directMapBase: 0xc0000000,
        directMapPage: 4 * 1024 * 1024,
        kernelTopIndex: 768,
        userLimit: TASK_SIZE_32,
        maxMemory: GiB,
        stackTop: 0xbffff000,
        mmapBase: topDownMmapBase(TASK_SIZE_32),
        legacyMmapBase: legacyMmapBase(TASK_SIZE_32),
        arenaBase: 0x80000000,
        arenaSize: 0x20000000,
        textBase: 0x08048000,
      };
    case MODE_PAE:
      // PAE: PDPTE 31:30, PDE 29:21, PTE 20:12 (§4.4). PDPTE 3 points to the kernel PD, shared by all.
      return {
        mode,
        top: 3,
        entrySize: 8,
        entries: 512,
        shift: [0, 12, 21, 30],
        directMapBase: 0xc0000000,
        directMapPage: 2 * 1024 * 1024,
        kernelTopIndex: 3,
        userLimit: TASK_SIZE_32,
        maxMemory: GiB,
        stackTop: 0xbffff000,
        mmapBase: topDownMmapBase(TASK_SIZE_32),
        legacyMmapBase: legacyMmapBase(TASK_SIZE_32),
        arenaBase: 0x80000000,
        arenaSize: 0x20000000,
        textBase: 0x08048000,
      };
    case MODE_LONG4:
      // 4-level: 47:39, 38:30, 29:21, 20:12 (§4.5). Direct map at 0xffff888000000000 (PML4 slot 273).
      return {
        mode,
        top: 4,
        entrySize: 8,
        entries: 512,
        shift: [0, 12, 21, 30, 39],
        directMapBase: -0x778000000000,
        directMapPage: 2 * 1024 * 1024,
        kernelTopIndex: 256,
        userLimit: TASK_SIZE_64,
        maxMemory: 64 * 1024 * GiB,
        stackTop: 0x7ffffffff000,
        mmapBase: topDownMmapBase(TASK_SIZE_64),
        legacyMmapBase: legacyMmapBase(TASK_SIZE_64),
        arenaBase: 0x100000000000,
        arenaSize: 0x10000000000,
        textBase: 0x400000,
      };
    case MODE_LONG5:
      // 5-level: 56:48 on top of the 4-level split (§4.5). Linux keeps user space below 2^47 unless asked
      // (Documentation/arch/x86/x86_64/5level-paging.rst). The direct map sits at 0xfff0000000000000
      // (-2^52, PML5 slot 496), inside the magnitude < 2^53 that numbers hold exactly (core DESIGN.md).
      return {
        mode,
        top: 5,
        entrySize: 8,
        entries: 512,
        shift: [0, 12, 21, 30, 39, 48],
        directMapBase: -(2 ** 52),
        directMapPage: 2 * 1024 * 1024,
        kernelTopIndex: 256,
        userLimit: TASK_SIZE_64,
        maxMemory: 64 * 1024 * GiB,
        stackTop: 0x7ffffffff000,
        mmapBase: topDownMmapBase(TASK_SIZE_64),
        legacyMmapBase: legacyMmapBase(TASK_SIZE_64),
        arenaBase: 0x100000000000,
        arenaSize: 0x10000000000,
        textBase: 0x400000,
      };
  }
}

/** The index of `va` (signed-canonical) in a table of `level`. */
export function tableIndex(layout: ModeLayout, va: number, level: number): number {
  const n = level === layout.top && layout.mode === MODE_PAE ? 4 : layout.entries;
  const q = Math.floor(va / 2 ** layout.shift[level]!) % n;
  return q < 0 ? q + n : q;
}

/** The span of linear addresses one table of `level` maps. */
export function tableSpan(layout: ModeLayout, level: number): number {
  return 2 ** (layout.shift[level]! + (layout.entrySize === 4 ? 10 : 9));
}

export { MODE_LEGACY32, MODE_LONG4, MODE_LONG5, MODE_PAE };
