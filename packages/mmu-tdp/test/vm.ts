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

/**
 * The backends a TDP test runs on: the name, the exits of the boot's CR0 and CR4 writes (the paging bits the
 * hypervisor owns) and its EFER write, and the counter of a second-stage fault (EPT violation / #NPF).
 */
export const TDP_BACKENDS = [
  ['vmx', { 'exits.CR_ACCESS': 2, 'exits.MSR_WRITE': 1 }, 'exits.EPT_VIOLATION'],
  ['svm', { 'exits.VMEXIT_CR0_WRITE': 1, 'exits.VMEXIT_CR4_WRITE': 1, 'exits.VMEXIT_MSR': 1 }, 'exits.VMEXIT_NPF'],
] as const;

/**
 * The whole-run counters of the guest OS model on 16 MiB (4096 frames) of 4 KiB host pages: the 3 exits of
 * `crExits`, and one second-stage fault (`violation`) per frame the hardware touches, 4094 (every frame but
 * frame 0 and the zero page), each fixed by one 4 KiB leaf; the TDP tables: PML4 + PDPT + PD + 8 PTs = 11 pages.
 */
export function bootCounters4k(crExits: Readonly<Record<string, number>>, violation: string): Record<string, number> {
  return {
    exits: 3 + 4094,
    ...crExits,
    [violation]: 4094,
    'exits.kind.nested-fault': 4094,
    pf_taken: 4094,
    pf_fixed: 4094,
    pages_4k: 4094,
    tdp_mmu_pages: 11,
  };
}
