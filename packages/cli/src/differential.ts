import {
  accessCaseVector,
  formatFailure,
  parseVariant,
  runVector,
  sweepCase,
  VariantError,
  type ModuleSources,
  type Variant,
  type VariantInput,
} from '@vmexit/core';
import { createVmVectorMachine } from './conformance-vm.js';

/*
 * The differential sweep: generated paging vectors (core's `sweepCase` / `accessCaseVector`, the matrix of
 * kvm-unit-tests' access.c crossed with MAXPHYADDR 36/46/52 and the four paging modes), each run natively
 * and as a guest access under hypervisor variants. The native walker is the reference and the hypervisor
 * must be invisible: any difference in fault, error code, physical address or the A/D bits of the guest's
 * entries (memory after), or a run the machine stops (a fault loop), fails the case and names it.
 */

/** A variant of the sweep, under its short name. */
export interface SweepVariant {
  readonly name: string;
  readonly variant: VariantInput;
}

/**
 * The variants every case runs under: each backend with the shadow MMU, and VMX with each policy that
 * changes the fault path (bypass-guest-pf needs VMX's PFEC filter; TDP joins when an MMU provides it).
 */
export const SWEEP_VARIANTS: readonly SweepVariant[] = [
  { name: 'vmx shadow', variant: { backend: 'vmx', mmu: 'shadow' } },
  { name: 'svm shadow', variant: { backend: 'svm', mmu: 'shadow' } },
  { name: 'vmx shadow bypass-guest-pf', variant: { backend: 'vmx', mmu: 'shadow', policies: [{ use: 'bypass-guest-pf' }] } },
  { name: 'vmx shadow pte-update', variant: { backend: 'vmx', mmu: 'shadow', policies: [{ use: 'pte-update' }] } },
  { name: 'vmx shadow unsync', variant: { backend: 'vmx', mmu: 'shadow', policies: [{ use: 'unsync' }] } },
];

/** One failed (vector, variant) case. */
export interface SweepFailure {
  readonly index: number;
  readonly variant: string;
  /** The vector's id (mode, MAXPHYADDR and flags) and each difference, or why the run stopped. */
  readonly detail: string;
}

export interface SweepResult {
  /** Vectors generated. */
  readonly vectors: number;
  /** (vector, variant) runs compared. */
  readonly cases: number;
  readonly failures: SweepFailure[];
}

export interface SweepOptions {
  readonly seed: number;
  /** The first case index and how many vectors to generate (every vector runs under every variant). */
  readonly from?: number;
  readonly count: number;
  readonly variants?: readonly SweepVariant[];
  /** Preloaded modules (a sweep builds one VM per case; resolving packages each time would dominate). */
  readonly sources?: ModuleSources;
  /** Called after each vector with the cases done so far. */
  readonly progress?: (vectorsDone: number, casesDone: number, failures: number) => void;
}

/** `input` as a variant, or VariantError naming each field that is wrong. */
function checkedVariant(input: VariantInput): Variant {
  const r = parseVariant(input);
  if (r.variant === null) throw new VariantError(r.problems);
  return r.variant;
}

/** Runs vectors `from`..`from + count - 1` of the sweep with `seed` under every variant. */
export async function runDifferentialSweep(options: SweepOptions): Promise<SweepResult> {
  const variants = (options.variants ?? SWEEP_VARIANTS).map((v) => ({ name: v.name, variant: checkedVariant(v.variant) }));
  const from = options.from ?? 0;
  const failures: SweepFailure[] = [];
  let cases = 0;
  for (let i = from; i < from + options.count; i++) {
    if ((i - from) % 64 === 63) await turnOfEventLoop();
    const vector = accessCaseVector(sweepCase(options.seed, i), `sweep seed ${options.seed}`, i);
    for (const { name, variant } of variants) {
      cases++;
      let detail: string | null;
      try {
        const machine = await createVmVectorMachine(vector, variant, options.sources);
        const r = runVector(vector, () => machine);
        detail = r.passed ? null : formatFailure(r);
      } catch (e) {
        // A machine error (a fault loop, a triple fault, an unresolved exit) is this case's failure.
        detail = `${vector.id}: stopped by ${e instanceof Error ? `${e.name}${'code' in e ? ` ${String(e.code)}` : ''}: ${e.message}` : String(e)}`;
      }
      if (detail !== null) failures.push({ index: i, variant: name, detail });
    }
    options.progress?.(i - from + 1, cases, failures.length);
  }
  return { vectors: options.count, cases, failures };
}

/**
 * Lets the event loop turn. A loop of awaits that never waits for I/O is one job to V8, and every object
 * reached through a WeakRef during a job is kept until the job ends (inversify's binding caches are WeakRefs):
 * without a turn now and then, each VM built stays alive to the end (4 GB after 3,500 vectors).
 */
export function turnOfEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
