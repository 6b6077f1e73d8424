import { GuestAbort, MODE_LEGACY32, MODE_LONG4, MODE_LONG5, MODE_PAE, PAGE_SIZE } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { legacyMmapBase, STACK_GUARD_GAP, STK_LIM, topDownMmapBase } from '../../src/os/layout.js';
import { PROT_READ, PROT_WRITE, VMA_ANON, VMA_FILE_PRIVATE } from '../../src/os/vma.js';
import { boot, MiB } from '../helpers.js';

const RW = PROT_READ | PROT_WRITE;

/*
 * Where mmap(NULL) puts an area: Linux x86's default layout is top-down (arch/x86/mm/mmap.c
 * `arch_pick_mmap_layout`, legacy only with ADDR_COMPAT_LAYOUT or the legacy_va_layout sysctl), so
 * `arch_get_unmapped_area_topdown` (arch/x86/kernel/sys_x86_64.c) takes the highest free range below
 * mm->mmap_base (mm/mmap.c `unmapped_area_topdown`, low_limit PAGE_SIZE), and falls back to the bottom-up
 * search from TASK_UNMAPPED_BASE when that range has no room.
 */
describe('doMmap', () => {
  describe('.layout', () => {
    it('puts mmap_base 128 MiB below TASK_SIZE and the legacy base at TASK_SIZE / 3 (arch/x86/mm/mmap.c)', () => {
      // mmap_base: gap = 8 MiB (_STK_LIM) + 0 (stack_maxrandom_size: no PF_RANDOMIZE) + 1 MiB
      // (stack_guard_gap, 256 pages), clamped to [128 MiB, TASK_SIZE / 6 * 5] = 128 MiB; rnd 0.
      expect(STK_LIM + STACK_GUARD_GAP).toBe(9 * MiB);
      // 64-bit: TASK_SIZE = DEFAULT_MAP_WINDOW = 2^47 - 4 KiB = 0x7ffffffff000; less 128 MiB (0x8000000).
      expect(topDownMmapBase(2 ** 47 - PAGE_SIZE)).toBe(0x7ffff7fff000);
      // 32-bit: TASK_SIZE = PAGE_OFFSET = 0xc0000000.
      expect(topDownMmapBase(0xc0000000)).toBe(0xb8000000);
      // __TASK_UNMAPPED_BASE = PAGE_ALIGN(TASK_SIZE / 3): 0x7ffffffff000 / 3 = 0x2aaaaaaaa555, rounded up.
      expect(legacyMmapBase(2 ** 47 - PAGE_SIZE)).toBe(0x2aaaaaaab000);
      expect(legacyMmapBase(0xc0000000)).toBe(0x40000000);
      // A 1 GiB task: gap = 128 MiB still (1 GiB / 6 * 5 = 853 MiB is above it).
      expect(topDownMmapBase(1024 * MiB)).toBe(896 * MiB);
      // A 96 MiB task: the upper clamp wins, gap = 96 MiB / 6 * 5 = 80 MiB.
      expect(topDownMmapBase(96 * MiB)).toBe(16 * MiB);
      for (const [mode, base, legacy] of [
        [MODE_LONG4, 0x7ffff7fff000, 0x2aaaaaaab000],
        [MODE_LONG5, 0x7ffff7fff000, 0x2aaaaaaab000],
        [MODE_PAE, 0xb8000000, 0x40000000],
        [MODE_LEGACY32, 0xb8000000, 0x40000000],
      ] as const) {
        const { k } = boot(mode);
        expect(k.layout.mmapBase).toBe(base);
        expect(k.layout.legacyMmapBase).toBe(legacy);
      }
    });
  });

  describe('.placement', () => {
    it('puts each area at the top of the highest gap below mmap_base that fits (unmapped_area_topdown)', () => {
      for (const [mode, top] of [
        [MODE_LONG4, 0x7ffff7fff000],
        [MODE_PAE, 0xb8000000],
        [MODE_LEGACY32, 0xb8000000],
      ] as const) {
        const { k, v } = boot(mode);
        const p = k.createProcess(v, 'p');
        k.switchTo(v, p);
        // The first area ends at mmap_base, each next one where the one before starts.
        const a = k.mmap(v, p, null, 4 * PAGE_SIZE, RW, VMA_ANON);
        expect(a).toBe(top - 4 * PAGE_SIZE);
        const b = k.mmap(v, p, null, PAGE_SIZE, RW, VMA_ANON);
        expect(b).toBe(a - PAGE_SIZE);
        const c = k.mmap(v, p, null, 2 * PAGE_SIZE, RW, VMA_ANON);
        expect(c).toBe(b - 2 * PAGE_SIZE);
        // b's page freed: a one-page area goes back there (the highest gap that fits), a two-page one below c.
        k.munmap(v, p, b, PAGE_SIZE);
        expect(k.mmap(v, p, null, 2 * PAGE_SIZE, RW, VMA_ANON)).toBe(c - 2 * PAGE_SIZE);
        expect(k.mmap(v, p, null, PAGE_SIZE, RW, VMA_ANON)).toBe(b);
        // An area mapped (MAP_FIXED) above mmap_base does not count: the search ends at mmap_base.
        const { k: k2, v: v2 } = boot(mode);
        const q = k2.createProcess(v2, 'q');
        k2.switchTo(v2, q);
        k2.mmap(v2, q, top, PAGE_SIZE, RW, VMA_ANON);
        expect(k2.mmap(v2, q, null, PAGE_SIZE, RW, VMA_ANON)).toBe(top - PAGE_SIZE);
        // [top - 16 pages, top - 3 pages) leaves a 2-page gap under the page at top - 1 page: a 3-page area
        // goes below the lowest area, a 2-page one in that gap.
        k2.mmap(v2, q, top - 16 * PAGE_SIZE, 13 * PAGE_SIZE, RW, VMA_ANON);
        expect(k2.mmap(v2, q, null, 3 * PAGE_SIZE, RW, VMA_ANON)).toBe(top - 19 * PAGE_SIZE);
        expect(k2.mmap(v2, q, null, 2 * PAGE_SIZE, RW, VMA_ANON)).toBe(top - 3 * PAGE_SIZE);
      }
    });

    it('falls back to the bottom-up search from TASK_UNMAPPED_BASE when nothing below mmap_base fits, and fails when that fails too', () => {
      // legacy32: [PAGE_SIZE, 0xb8000000) taken (MAP_FIXED: no page is touched, no table made): the top-down
      // search fails; arch_get_unmapped_area then takes the lowest gap at or above 0x40000000, below
      // TASK_SIZE: the first page at mmap_base, 0xb8000000.
      const { k, v } = boot(MODE_LEGACY32);
      const p = k.createProcess(v, 'p');
      k.switchTo(v, p);
      k.mmap(v, p, PAGE_SIZE, 0xb8000000 - PAGE_SIZE, RW, VMA_ANON);
      expect(k.mmap(v, p, null, PAGE_SIZE, RW, VMA_ANON)).toBe(0xb8000000);
      expect(k.mmap(v, p, null, PAGE_SIZE, RW, VMA_ANON)).toBe(0xb8001000);
      // The rest of user space taken: ENOMEM.
      k.mmap(v, p, 0xb8002000, 0xc0000000 - 0xb8002000, RW, VMA_ANON);
      expect(() => k.mmap(v, p, null, PAGE_SIZE, RW, VMA_ANON)).toThrow(GuestAbort);
    });

    it('keeps stack_guard_gap (1 MiB) free below an area that grows down, top-down and bottom-up (vm_start_gap)', () => {
      const { k, v } = boot(MODE_LEGACY32);
      const p = k.createProcess(v, 'p');
      k.switchTo(v, p);
      // A 16 MiB stack right under mmap_base: the highest gap is under it, but unmapped_area_topdown finds the
      // stack above that gap with its guard gap reaching in (vm_start_gap(tmp) < gap_end) and searches again
      // below 0xb7000000 - 1 MiB: the page goes at 0xb6eff000, not 0xb6fff000.
      const stack = k.mmap(v, p, 0xb7000000, 16 * MiB, RW, VMA_ANON);
      p.vmas.find(stack)!.growsDown = true;
      expect(k.mmap(v, p, null, PAGE_SIZE, RW, VMA_ANON)).toBe(0xb7000000 - MiB - PAGE_SIZE);
      // An area that does not grow down has no guard gap: the next page goes right under the last one.
      expect(k.mmap(v, p, null, PAGE_SIZE, RW, VMA_ANON)).toBe(0xb7000000 - MiB - 2 * PAGE_SIZE);
      // Bottom-up (nothing free below mmap_base): [0xb8000000, 0xb8100000) is free under a stack at 0xb8100000,
      // but all of it is that stack's guard gap: unmapped_area goes on above the stack (low_limit = vm_end).
      const q = k.createProcess(v, 'q');
      k.switchTo(v, q);
      k.mmap(v, q, PAGE_SIZE, 0xb8000000 - PAGE_SIZE, RW, VMA_ANON);
      const s2 = k.mmap(v, q, 0xb8100000, MiB, RW, VMA_ANON);
      q.vmas.find(s2)!.growsDown = true;
      expect(k.mmap(v, q, null, PAGE_SIZE, RW, VMA_ANON)).toBe(0xb8200000);
    });

    it('aliased-pdes: a file mapping stays out of the arena and its alias view', () => {
      // legacy32: the arena is [0x80000000, 0xa0000000) and its alias view [0xa0000000, 0xc0000000), which
      // hold mmap_base (0xb8000000): a file mapping goes top-down below the arena, an anonymous one (bottom-up)
      // in the arena. In long4 the arena (16 TiB) is far below mmap_base: the file mapping ends at mmap_base.
      for (const [mode, top] of [
        [MODE_LEGACY32, 0x80000000],
        [MODE_LONG4, 0x7ffff7fff000],
      ] as const) {
        const { k, v } = boot(mode, { personalities: ['aliased-pdes'] });
        const p = k.createProcess(v, 'xen');
        k.switchTo(v, p);
        const f = k.mmap(v, p, null, 3 * PAGE_SIZE, PROT_READ, VMA_FILE_PRIVATE, k.file('/lib/libc.so'), 0);
        expect(f).toBe(top - 3 * PAGE_SIZE);
        expect(k.mmap(v, p, null, PAGE_SIZE, RW, VMA_ANON)).toBe(k.layout.arenaBase);
      }
    });
  });

  describe('.length', () => {
    it('refuses a length of 0 with EINVAL and maps nothing, MAP_FIXED or not (mm/mmap.c do_mmap)', () => {
      // do_mmap: `if (!len) return -EINVAL;`, before the area is placed and before MAP_FIXED unmaps what is
      // there. So mmap(NULL, 0) maps nothing, and mmap(addr, 0, MAP_FIXED) in the middle of an area leaves that
      // area whole (one area, not two halves around an empty one).
      const { k, v } = boot(MODE_LONG4);
      const p = k.createProcess(v, 'p');
      k.switchTo(v, p);
      const base = k.mmap(v, p, null, 4 * PAGE_SIZE, RW, VMA_ANON);
      expect(() => k.mmap(v, p, null, 0, RW, VMA_ANON)).toThrow(GuestAbort);
      expect(() => k.mmap(v, p, null, 0, RW, VMA_ANON)).toThrow('EINVAL');
      expect(() => k.mmap(v, p, base + 2 * PAGE_SIZE, 0, PROT_READ, VMA_ANON)).toThrow('EINVAL');
      expect(p.vmas.list.map((a) => [a.start, a.end, a.prot])).toEqual([[base, base + 4 * PAGE_SIZE, RW]]);
      // The next mmap(NULL) goes right under the area, as if the failed calls had not been made.
      expect(k.mmap(v, p, null, PAGE_SIZE, RW, VMA_ANON)).toBe(base - PAGE_SIZE);
    });

    it('refuses a length above user space with ENOMEM (do_mmap: PAGE_ALIGN(len) > TASK_SIZE)', () => {
      // A length the unsigned argument would read as huge (here negative) fails the same way, never as an empty area.
      const { k, v } = boot(MODE_LONG4);
      const p = k.createProcess(v, 'p');
      k.switchTo(v, p);
      expect(() => k.mmap(v, p, null, k.layout.userLimit + 1, RW, VMA_ANON)).toThrow('ENOMEM');
      expect(() => k.mmap(v, p, null, -PAGE_SIZE, RW, VMA_ANON)).toThrow('ENOMEM');
      expect(p.vmas.size).toBe(0);
    });
  });
});
