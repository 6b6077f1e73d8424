import { createVm, walk, WalkResult, WALK_OK, type ExitRecorder, type Vm, type VariantInput, type VmExit } from '@vmexit/core';
import vmxModule from '@vmexit/backend-vmx';
import svmModule from '@vmexit/backend-svm';
import { runWorkload, type RunOutcome } from '@vmexit/guest';
import { shadowMmuModule, type ShadowMmu } from '@vmexit/mmu-shadow';
import policiesModule from '../src/index.js';

/** The module sources of a test VM: the monorepo's backends, the shadow MMU and this package's policies. */
export const SOURCES = { backends: { vmx: vmxModule, svm: svmModule }, mmus: { shadow: shadowMmuModule() }, policies: [policiesModule] };

export interface Run {
  readonly vm: Vm;
  readonly out: RunOutcome;
  readonly exits: VmExit[];
  /** For each exit, the number of #PFs the guest had been delivered when it happened. */
  readonly faultsAt: number[];
}

/**
 * Runs `workload` on a VM of `variant` (real guest OS model, real createVm). `onExit` sees each exit after
 * its resolution; `auditEvery` audits the MMU every that many exits (1: after every exit, as `--audit` does;
 * the audit is incremental, see mmu-shadow/src/audit.ts) and at the end.
 */
export async function runOn(variant: VariantInput, workload: string, options: { auditEvery?: number; memory?: number; seed?: number; onExit?: (vm: Vm, e: VmExit) => void } = {}): Promise<Run> {
  const exits: VmExit[] = [];
  const faultsAt: number[] = [];
  let vm: Vm | null = null;
  const recorder: ExitRecorder = {
    recordExit(e) {
      exits.push(e);
      faultsAt.push(vm!.vcpus[0]!.pageFaultsDelivered);
      options.onExit?.(vm!, e);
      if (options.auditEvery !== undefined && exits.length % options.auditEvery === 0) (vm!.mmu as ShadowMmu).audit();
    },
    recordMmuEvent() {},
  };
  const memory = options.memory ?? 64 * 1024 * 1024;
  // The same scheduler seed as runWorkload's own machine (seed 1 by default), so that a native run is comparable.
  const seed = options.seed ?? 1;
  vm = await createVm({ memory, ...variant }, { sources: SOURCES, recorder, seed });
  const out = runWorkload({ workload, mode: vm.variant.guest.mode, memory, machine: vm.machine, vcpus: vm.variant.vcpus, seed });
  (vm.mmu as ShadowMmu).audit();
  return { vm, out, exits, faultsAt };
}

/**
 * Exits per guest #PF in steady state: how many exits happened while the guest's delivered-fault count had
 * each value, as a histogram { exits: how many fault counts }.
 */
export function exitsPerFault(run: Run): Map<number, number> {
  const per = new Map<number, number>();
  for (const n of run.faultsAt) per.set(n, (per.get(n) ?? 0) + 1);
  const hist = new Map<number, number>();
  for (const [n, c] of per) if (n > 0) hist.set(c, (hist.get(c) ?? 0) + 1);
  return hist;
}

/** The most frequent value of a histogram, and the share of the total it has. */
export function mode(hist: Map<number, number>): { value: number; share: number } {
  let best = -1;
  let bestN = -1;
  let total = 0;
  for (const [v, n] of hist) {
    total += n;
    if (n > bestN) [best, bestN] = [v, n];
  }
  return { value: best, share: bestN / total };
}

/** The gfn `va` maps to in the guest's own tables (-1 when unmapped). */
export function guestGfn(vm: Vm, va: number): number {
  const r = new WalkResult();
  const v = vm.vcpus[0]!;
  return walk(v.ctx, v.memory, va, 0, 0, r) === WALK_OK ? Math.floor(r.pa / 4096) : -1;
}
