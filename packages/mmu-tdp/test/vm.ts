import { createVm, type ExitRecorder, type VariantInput, type Vm, type VmExit } from '@vmexit/core';
import vmxModule from '@vmexit/backend-vmx';
import svmModule from '@vmexit/backend-svm';
import shadowModule from '@vmexit/mmu-shadow';
import { runWorkload, type RunOutcome } from '@vmexit/guest';
import { tdpMmuModule, type TdpMmu, type TdpMmuOptions } from '../src/index.js';

/** The module sources of a test VM: the monorepo's backends, this package's MMU (and the shadow MMU to compare). */
export function sources(options: TdpMmuOptions = {}) {
  return { backends: { vmx: vmxModule, svm: svmModule }, mmus: { tdp: tdpMmuModule(options), shadow: shadowModule }, policies: [] };
}

export interface TdpRun {
  readonly vm: Vm;
  readonly out: RunOutcome;
  /** The counters of the workload's measured window (its steady state), under KVM's names. */
  readonly window: Record<string, number>;
  /** The counters of the whole run (boot included). */
  readonly total: Record<string, number>;
  readonly exits: VmExit[];
}

/**
 * Runs `workload` on a VM of `variant` (the real guest OS model on a VM made by createVm), auditing the MMU
 * after every exit as `--audit` does, and fully at the end.
 */
export async function runTdp(
  variant: VariantInput,
  workload: string,
  options: { memory?: number; hostPages?: TdpMmuOptions['hostPages']; audit?: boolean } = {},
): Promise<TdpRun> {
  const memory = options.memory ?? 16 * 1024 * 1024;
  const exits: VmExit[] = [];
  let vm: Vm | null = null;
  const audit = options.audit ?? true;
  const recorder: ExitRecorder = {
    recordExit(e) {
      exits.push(e);
      if (audit) vm!.mmu!.audit!();
    },
    recordMmuEvent() {},
  };
  vm = await createVm({ memory, ...variant }, { sources: sources({ hostPages: options.hostPages }), recorder, seed: 1 });
  const out = runWorkload({
    workload,
    mode: vm.variant.guest.mode,
    memory,
    machine: vm.machine,
    vcpus: vm.variant.vcpus,
    seed: 1,
    counters: () => {
      const c = vm!.counters();
      return { total: c.total, vcpus: [...c.perVcpu] };
    },
  });
  if (vm.mmu!.name === 'tdp') (await import('../src/audit.js')).auditTdpMmu(vm.mmu as TdpMmu, { full: true });
  return { vm, out, window: out.result.counters.total, total: vm.counters().total, exits };
}

/** The native run of the same workload (no hypervisor), for guest-visible equivalence. */
export function runNative(workload: string, mode: 'legacy32' | 'pae' | 'long4' | 'long5' = 'long4', memory = 16 * 1024 * 1024): RunOutcome {
  return runWorkload({ workload, mode, memory, seed: 1 });
}
