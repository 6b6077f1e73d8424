import { createVm, walk, WalkResult, WALK_OK, type ExitRecorder, type PagingModeId, type Vcpu, type Vm, type VariantInput, type VmExit } from '@vmexit/core';
import vmxModule from '@vmexit/backend-vmx';
import svmModule from '@vmexit/backend-svm';
import { Kernel, PROT_READ, PROT_WRITE, runWorkload, VMA_ANON, type Process, type RunOutcome } from '@vmexit/guest';
import { shadowMmuModule, type ShadowMmu } from '@vmexit/mmu-shadow';
import policiesModule from '../src/index.js';

/** The module sources of a test VM: the monorepo's backends, the shadow MMU and this package's policies. */
export const SOURCES = { backends: { vmx: vmxModule, svm: svmModule }, mmus: { shadow: shadowMmuModule() }, policies: [policiesModule] };

export interface Run {
  readonly vm: Vm;
  readonly out: RunOutcome;
  /** Every exit, in order (empty with `record: false`). */
  readonly exits: VmExit[];
  /** For each exit, the number of #PFs the guest had been delivered when it happened (empty with `record: false`). */
  readonly faultsAt: number[];
  /** How many exits there were. */
  readonly exitCount: number;
}

/**
 * Runs `workload` on a VM of `variant` (real guest OS model, real createVm). `onExit` sees each exit after
 * its resolution; `auditEvery` audits the MMU every that many exits (1: after every exit, as `--audit` does;
 * the audit is incremental, see mmu-shadow/src/audit.ts) and at the end. `record: false` only counts the
 * exits (a run of many thousand exits then keeps none of them alive).
 */
export async function runOn(
  variant: VariantInput,
  workload: string,
  options: { auditEvery?: number; memory?: number; seed?: number; record?: boolean; onExit?: (vm: Vm, e: VmExit) => void } = {},
): Promise<Run> {
  const exits: VmExit[] = [];
  const faultsAt: number[] = [];
  const record = options.record ?? true;
  let exitCount = 0;
  let vm: Vm | null = null;
  const recorder: ExitRecorder = {
    recordExit(e) {
      exitCount++;
      if (record) {
        exits.push(e);
        faultsAt.push(vm!.vcpus[0]!.pageFaultsDelivered);
      }
      options.onExit?.(vm!, e);
      if (options.auditEvery !== undefined && exitCount % options.auditEvery === 0) (vm!.mmu as ShadowMmu).audit();
    },
    recordMmuEvent() {},
  };
  // Yield to the event loop first: the previous run's VM (its guest memory, its shadow pages) is released
  // only once the task that made it has ended, and a test that awaits one run after another in a loop never
  // ends its task otherwise (measured: +17 MB of ArrayBuffers per 16 MiB VM, never collected, without this).
  await new Promise((resolve) => setImmediate(resolve));
  const memory = options.memory ?? 64 * 1024 * 1024;
  // The same scheduler seed as runWorkload's own machine (seed 1 by default), so that a native run is comparable.
  const seed = options.seed ?? 1;
  vm = await createVm({ memory, ...variant }, { sources: SOURCES, recorder, seed });
  const out = runWorkload({ workload, mode: vm.variant.guest.mode, memory, machine: vm.machine, vcpus: vm.variant.vcpus, seed });
  (vm.mmu as ShadowMmu).audit();
  return { vm, out, exits, faultsAt, exitCount };
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

/** A guest kernel booted on a VM, with one process that has touched (written) `pages` pages of anonymous memory from user mode. */
export interface BootedGuest {
  readonly vm: Vm;
  readonly v: Vcpu;
  readonly kernel: Kernel;
  readonly proc: Process;
  /** The first of the process's pages. */
  readonly base: number;
}

/**
 * Boots the guest OS model (packages/guest `Kernel`) on vCPU 0 of a VM of `variant`, creates a process, maps
 * `pages` pages of anonymous memory and writes each once from user mode (CPL 3): demand faults through the
 * VM, which leave their page table shadowed and write-protected. A test then drives the guest as its kernel
 * would: `v.write(kernel.directMap(pa), ...)` stores through the kernel direct map at CPL 0.
 */
export async function bootGuest(variant: VariantInput, guestMode: PagingModeId, pages: number): Promise<BootedGuest> {
  await new Promise((resolve) => setImmediate(resolve));
  const vm = await createVm(variant, { sources: SOURCES, seed: 1 });
  const v = vm.vcpus[0]!;
  const kernel = new Kernel(vm.machine, guestMode);
  const proc = kernel.createProcess(v, 'init');
  kernel.switchTo(v, proc);
  // A fixed address (mmap with an address replaces what is there, as MAP_FIXED does) at the start of a page table
  // of every mode (4 MiB-aligned): the tests index the area's gptes from 0 of its table. mmap(NULL) would not do:
  // it is top-down (arch/x86/mm/mmap.c, arch_get_unmapped_area_topdown) and ends the area at mmap_base.
  const at = kernel.layout.userLimit > 2 ** 32 ? 0x7f00_0000_0000 : 0x4000_0000;
  const base = kernel.mmap(v, proc, at, pages * 4096, PROT_READ | PROT_WRITE, VMA_ANON);
  v.setCpl(3);
  for (let i = 0; i < pages; i++) v.write(base + i * 4096, 4, i + 1);
  v.setCpl(0);
  return { vm, v, kernel, proc, base };
}

/** A function that returns how much each VM counter grew since the last call (the first call: since now). */
export function counterDelta(vm: Vm): () => Record<string, number> {
  let last: Record<string, number> = { ...vm.counters().total };
  return () => {
    const now = vm.counters().total;
    const d: Record<string, number> = {};
    for (const [k, n] of Object.entries(now)) if (n !== (last[k] ?? 0)) d[k] = n - (last[k] ?? 0);
    last = { ...now };
    return d;
  };
}
