import { PT_PRESENT, type Machine } from '@vmexit/core';
import { MODE_PAE, tableIndex, type ModeLayout } from './layout.js';
import { HI_XD, KERNEL_LARGE, KERNEL_TABLE } from './pte.js';

/**
 * Writes the idle top table and the direct map of the first `mem` bytes of RAM with physical writes (paging is still off; Linux
 * builds the same in `init_mem_mapping`). Returns the top table and, in PAE, the kernel PD that PDPTE 3 of
 * every process will share.
 */
export function buildDirectMap(m: Machine['memory'], mem: number, L: ModeLayout, nx: boolean, bootAlloc: () => number): { root: number; kernelPd: number } {
  const esz = L.entrySize;
  const root = bootAlloc();
  let kernelPd = 0;
  const put = (tablePa: number, idx: number, lo: number, hi: number): void => {
    m.write32(tablePa + idx * esz, lo >>> 0);
    if (esz === 8) m.write32(tablePa + idx * 8 + 4, hi >>> 0);
  };
  const get = (tablePa: number, idx: number): number => m.read32(tablePa + idx * esz);
  const leafHi = nx ? HI_XD : 0;
  for (let pa = 0; pa < mem; pa += L.directMapPage) {
    const va = L.directMapBase + pa;
    let table = root;
    for (let level = L.top; level > 2; level--) {
      const idx = tableIndex(L, va, level);
      let e = get(table, idx);
      if ((e & PT_PRESENT) === 0) {
        const t = bootAlloc();
        // A PAE PDPTE has only P (bits 2:1 and 8:5 are reserved, SDM Vol. 3A §4.4.1).
        e = (t | (L.mode === MODE_PAE ? PT_PRESENT : KERNEL_TABLE)) >>> 0;
        put(table, idx, e, 0);
        if (L.mode === MODE_PAE) kernelPd = t;
      }
      table = e & ~0xfff;
    }
    put(table, tableIndex(L, va, 2), (pa | KERNEL_LARGE) >>> 0, leafHi);
  }
  return { root, kernelPd };
}
