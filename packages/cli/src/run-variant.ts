import {
  COST_PROFILES,
  JsonLinesTracer,
  VariantError,
  createVm,
  modelCycles,
  type CostReport,
  type ExitTracer,
  type PagingModeName,
  type Variant,
  type Vm,
} from '@vmexit/core';
import { GuestConfigError, TraceError, WorkloadError, nativeCounters, runWorkload, type GuestFaultEvent, type Personality, type RunOutcome, type RunResult } from '@vmexit/guest';
import { InputError, RunFailure } from './errors.js';

/** What one run needs: the workload and guest shape, and the variant below it. */
export interface VariantRunOptions {
  readonly workload: string;
  readonly mode: PagingModeName;
  readonly seed: number;
  readonly personalities: readonly Personality[];
  /** The composed variant (backend, mmu, policies, vcpus, memory, cost model). */
  readonly variant: Variant;
  /** Check the MMU's invariants after every exit (`--audit`). */
  readonly audit?: boolean;
  /** Where exits and MMU decisions are traced (`--trace`). */
  readonly tracer?: ExitTracer;
  readonly onProgress?: (accesses: number, total: number | null) => void;
}

/** A RunResult with the modelled cycles of the variant's cost model. */
export type VariantRunResult = RunResult & { cycles: CostReport };

export interface VariantRunOutcome {
  readonly result: VariantRunResult;
  readonly outcome: RunOutcome;
  readonly vm: Vm | null;
}

/**
 * Runs a workload on a variant: natively for backend `none`, otherwise on a VM composed by `createVm` (the
 * guest OS model boots on the VM's machine, so every exit of its page-table writes, faults and CR3 loads goes
 * through the variant). The counters are the VM's, per vCPU and merged, from the end of boot to the end of the
 * run; modelled cycles price them under the variant's cost model. Bad input becomes an InputError (exit 2).
 */
export async function runOnVariant(o: VariantRunOptions): Promise<VariantRunOutcome> {
  const v = o.variant;
  let vm: Vm | null = null;
  if (v.backend !== 'none') {
    try {
      vm = await createVm({ ...v, guest: { ...v.guest, mode: o.mode, personality: o.personalities.length > 0 ? o.personalities.join(',') : 'linux' } }, { seed: o.seed, tracer: o.tracer });
    } catch (e) {
      if (e instanceof VariantError) throw new InputError(`invalid variant:\n${e.message}`);
      throw e;
    }
    if (o.audit === true) {
      const mmu = vm.mmu;
      if (mmu === null || mmu.audit === undefined) throw new InputError(`--audit: the '${v.mmu}' MMU has no audit`);
      for (const h of vm.hooks) h.afterExit = () => mmu.audit!();
    }
  }
  const theVm = vm;
  let outcome: RunOutcome;
  try {
    outcome = runWorkload({
      workload: o.workload,
      mode: o.mode,
      vcpus: v.vcpus,
      memory: v.memory,
      seed: o.seed,
      personalities: o.personalities,
      machine: theVm === null ? undefined : theVm.machine,
      variant: describeVariant(v),
      counters:
        theVm === null
          ? undefined
          : (_machine, at) => {
              o.tracer?.traceWindow?.(at);
              const c = theVm.counters();
              return { total: c.total, vcpus: c.perVcpu.map((x) => ({ ...x })) };
            },
      onProgress: o.onProgress,
    });
  } catch (e) {
    if (e instanceof WorkloadError || e instanceof TraceError || e instanceof GuestConfigError) throw new InputError(e.message);
    throw e;
  }
  const profile = COST_PROFILES[v.costModel]!;
  const total = v.backend === 'none' ? { ...outcome.result.counters.total, 'guest.page_faults': outcome.result.guest.faults.total } : outcome.result.counters.total;
  const result: VariantRunResult = { ...outcome.result, cycles: modelCycles(profile, total) };
  return { result, outcome, vm };
}

/** The variant as it appears in a result: what it is, not where its modules came from. */
export function describeVariant(v: Variant): Record<string, unknown> {
  return { backend: v.backend, ...(v.backend === 'none' ? {} : { mmu: v.mmu, policies: v.policies.map((p) => (Object.keys(p.options).length > 0 ? p : p.use)) }), costModel: v.costModel };
}

/** What `--check` compares, and where the first difference is. */
export interface CheckReport {
  readonly ok: boolean;
  readonly compared: { readonly faults: number; readonly sigsegv: number };
  /** The first difference, in words, or null. */
  readonly divergence: string | null;
}

/**
 * `--check`: compares what the guest observed natively and under the variant: the sequence of #PFs its
 * handler received (address and error code, in order), its SIGSEGVs, and its final memory. A guest must not
 * be able to tell that it runs virtualized (ARCHITECTURE.md); the guest model flushes its TLB whenever it
 * lowers rights, so the SDM leaves no room for a difference on these workloads (a stale translation after
 * a missing flush, SDM Vol. 3A §4.10.4.3, is the only case it allows, and the guest never leaves one).
 */
export function compareGuestViews(native: RunOutcome, virt: RunOutcome): CheckReport {
  const a = native.events;
  const b = virt.events;
  const n = Math.min(a.length, b.length);
  const fmt = (e: GuestFaultEvent): string => `#PF at ${hex(e.address)} error code ${e.errorCode} on vCPU ${e.vcpu} (pid ${e.pid}, ${e.kind})`;
  let divergence: string | null = null;
  for (let i = 0; i < n; i++) {
    const x = a.at(i);
    const y = b.at(i);
    if (x.address !== y.address || x.errorCode !== y.errorCode || x.vcpu !== y.vcpu || x.pid !== y.pid) {
      divergence = `guest fault #${i}: natively ${fmt(x)}, under the variant ${fmt(y)}`;
      break;
    }
  }
  if (divergence === null && a.length !== b.length) {
    const longer = a.length > b.length ? a : b;
    divergence = `the guest received ${a.length} faults natively and ${b.length} under the variant; the first extra one: ${fmt(longer.at(n))} (${a.length > b.length ? 'native' : 'variant'})`;
  }
  if (divergence === null && native.result.guest.sigsegv !== virt.result.guest.sigsegv) {
    divergence = `SIGSEGVs: ${native.result.guest.sigsegv} natively, ${virt.result.guest.sigsegv} under the variant`;
  }
  if (divergence === null && native.result.memoryDigest !== virt.result.memoryDigest) {
    divergence = `final guest memory differs: digest ${native.result.memoryDigest} natively, ${virt.result.memoryDigest} under the variant${firstMemoryDifference(native, virt)}`;
  }
  return { ok: divergence === null, compared: { faults: a.length, sigsegv: native.result.guest.sigsegv }, divergence };
}

function firstMemoryDifference(native: RunOutcome, virt: RunOutcome): string {
  const x = native.machine.memory.u32;
  const y = virt.machine.memory.u32;
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return ` (first at guest-physical ${hex(native.machine.memory.offsetToGpa(i * 4))}: 0x${x[i]!.toString(16)} natively, 0x${y[i]!.toString(16)} under the variant)`;
  }
  return '';
}

/** Runs natively and under the variant and compares; a divergence is a RunFailure naming the first difference. */
export async function runChecked(o: VariantRunOptions): Promise<{ run: VariantRunOutcome; check: CheckReport }> {
  const native = await runOnVariant({ ...o, variant: { ...o.variant, backend: 'none', policies: [] }, audit: false, tracer: undefined, onProgress: undefined });
  const run = await runOnVariant(o);
  const check = compareGuestViews(native.outcome, run.outcome);
  return { run, check };
}

export function checkFailure(check: CheckReport): RunFailure {
  return new RunFailure(`--check: the guest can tell it runs virtualized: ${check.divergence}`);
}

export { JsonLinesTracer, nativeCounters };

function hex(n: number): string {
  return n < 0 ? `0x${BigInt.asUintN(64, BigInt(n)).toString(16)}` : `0x${n.toString(16)}`;
}
