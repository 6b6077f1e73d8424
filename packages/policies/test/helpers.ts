import { of, lastValueFrom, type MonoTypeOperatorFunction } from 'rxjs';
import type { FaultPolicy, MmuEvent } from '@vmexit/core';
import { policyVcpuContext } from '@vmexit/core/testing';
import type { ShadowMmu } from '@vmexit/mmu-shadow';

// Shared by the per-policy unit tests: MMU events as the shadow MMU asks them, and a policy's answer.

export const base = { vcpu: 0, seq: 1, decidedBy: null, decision: null };
export const pteWrite = (level: number, misaligned: boolean): MmuEvent => ({
  ...base,
  kind: 'pte-write',
  gpa: 0x1000,
  size: 8,
  oldLo: 0,
  oldHi: 0,
  newLo: 0x2023,
  newHi: 0,
  level,
  misaligned,
});
export const flood = (level: number, writeCount: number, vcpuWriteCount: number): MmuEvent => ({
  ...base,
  kind: 'flood',
  gfn: 1,
  level,
  writeCount,
  vcpuWriteCount,
});

/** The decision a policy's MMU-event operator takes for `ev` (null: passed on). */
export async function decide<O>(p: FaultPolicy<O>, ev: MmuEvent, options: O): Promise<unknown> {
  const op = p.mmuEvents!(policyVcpuContext(options)) as MonoTypeOperatorFunction<MmuEvent>;
  const out = await lastValueFrom(of({ ...ev }).pipe(op));
  return out.decision;
}

export function parse<O>(p: FaultPolicy<O>, v: unknown): O {
  const r = p.optionsSchema!.safeParse(v);
  if (!r.success) throw new Error(r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  return r.data;
}

/** The counters that the VM-level policy tests assert, each 0 when absent. */
export function pick(d: Record<string, number>, names: readonly string[]): Record<string, number> {
  return Object.fromEntries(names.map((n) => [n, d[n] ?? 0]));
}

/** The shadow pte of entry `index` of the (first) level-1 shadow page of guest table `gfn`. */
export function leafSpte(mmu: ShadowMmu, gfn: number, index: number): { lo: number; hi: number } {
  const sp = mmu.indirectPagesOf(gfn).find((p) => p.level === 1);
  if (sp === undefined) throw new Error(`gfn ${gfn} has no level-1 shadow page`);
  return { lo: mmu.pool.lo(sp.base + index), hi: mmu.pool.hi(sp.base + index) };
}
