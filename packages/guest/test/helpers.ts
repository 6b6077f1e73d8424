import { Machine, MODE_LONG4, type Vcpu } from '@vmexit/core';
import { Kernel, type Personality } from '../src/os/kernel.js';
import { FRAME_FREE } from '../src/os/frames.js';

export const MiB = 1024 * 1024;

/** A booted guest kernel on a small native machine. */
export function boot(
  mode: number = MODE_LONG4,
  options: { vcpus?: number; personalities?: Personality[]; memory?: number } = {},
): { m: Machine; k: Kernel; v: Vcpu } {
  const m = new Machine({ memoryBytes: options.memory ?? 16 * MiB, vcpus: options.vcpus ?? 1, seed: 1 });
  const k = new Kernel(m, mode, { personalities: options.personalities ?? [] });
  return { m, k, v: m.vcpus[0]! };
}

/** Runs `fn` in user mode (CPL 3) on `v`. */
export function user<T>(v: Vcpu, fn: () => T): T {
  v.setCpl(3);
  try {
    return fn();
  } finally {
    v.setCpl(0);
  }
}

/** The frames of every user page-table page of the tree at `root` (read from guest memory), top included. */
export function tableFrames(k: Kernel, root: number): number[] {
  const L = k.layout;
  const mem = k.machine.memory;
  const out: number[] = [root / 4096];
  const walk = (table: number, level: number): void => {
    const n = L.mode === 1 && level === 3 ? 3 : level === L.top ? L.kernelTopIndex : L.entries;
    for (let i = 0; i < n; i++) {
      const lo = mem.read32(table + i * L.entrySize);
      if ((lo & 1) === 0 || level === 1) continue;
      const child = lo & ~0xfff;
      out.push(child / 4096);
      if (level - 1 > 1) walk(child, level - 1);
    }
  };
  walk(root, L.top);
  return out;
}

export function isFree(k: Kernel, frame: number): boolean {
  return k.frames.useOf(frame) === FRAME_FREE;
}
