import { PAGE_SIZE, type Vcpu } from '@vmexit/core';
import { FRAME_TABLE } from '../../src/os/frames.js';
import type { Kernel } from '../../src/os/kernel.js';

/** One store to a page-table page: its guest-physical address and size, and the value stored (low half, high half). */
export interface Store {
  pa: number;
  size: number;
  lo: number;
  hi: number;
}

/**
 * Records every store `v` makes to a page-table page through the direct map, from now on: under shadow paging each
 * is an emulated write, so the stores' number and order are what the pte-sequence tests pin.
 */
export function recordStores(k: Kernel, v: Vcpu): Store[] {
  const log: Store[] = [];
  const dm = k.directMap(0);
  const write = v.write.bind(v);
  v.write = (va: number, size: number, lo: number, hi = 0): void => {
    const pa = va - dm;
    if (pa >= 0 && k.frames.useOf(Math.floor(pa / PAGE_SIZE)) >= FRAME_TABLE) log.push({ pa, size, lo: lo >>> 0, hi: hi >>> 0 });
    write(va, size, lo, hi);
  };
  return log;
}
