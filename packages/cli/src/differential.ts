import {
  ACCESS_CASE_MAXPHYADDRS,
  accessCaseSpace,
  accessCaseVector,
  formatFailure,
  parseVariant,
  runVector,
  VariantError,
  type AccessCase,
  type ConformanceVector,
  type ModuleSources,
  type PagingModeName,
  type Variant,
  type VariantInput,
} from '@vmexit/core';
import { createVmVectorMachine } from './conformance-vm.js';

/*
 * The differential sweep: generated paging vectors (core's `accessCaseSpace` / `accessCaseVector`: every
 * case of the flag space of kvm-unit-tests' access.c, crossed with MAXPHYADDR 36/46/52 and the four paging
 * modes), each run as a guest access under hypervisor variants. A vector expects what core's reference machine
 * (a reading of the SDM apart from the walker) gives, which the walker gives natively too (core's tests), and
 * the hypervisor must be invisible: any difference in fault, error code, physical address or the A/D bits of
 * the guest's entries (memory after), or a run the machine stops (a fault loop), fails the case and names it.
 * `runVectorsDifferential` does the same for a list of vectors (core's `extendedCaseVectors`, sample files).
 */

/** A variant of the sweep, under its short name. */
export interface SweepVariant {
  readonly name: string;
  readonly variant: VariantInput;
}

/**
 * The variants every case runs under: each backend with each MMU (shadow and TDP), and each policy that
 * changes the fault path where it applies: `bypass-guest-pf` on VMX shadow only (it needs VMX's PFEC
 * filter and shadow ptes), `pte-update` and `unsync` on shadow paging under both backends (under TDP there
 * are no shadowed guest tables for them to act on).
 */
export const SWEEP_VARIANTS: readonly SweepVariant[] = [
  { name: 'vmx shadow', variant: { backend: 'vmx', mmu: 'shadow' } },
  { name: 'svm shadow', variant: { backend: 'svm', mmu: 'shadow' } },
  { name: 'vmx tdp', variant: { backend: 'vmx', mmu: 'tdp' } },
  { name: 'svm tdp', variant: { backend: 'svm', mmu: 'tdp' } },
  { name: 'vmx shadow bypass-guest-pf', variant: { backend: 'vmx', mmu: 'shadow', policies: [{ use: 'bypass-guest-pf' }] } },
  { name: 'vmx shadow pte-update', variant: { backend: 'vmx', mmu: 'shadow', policies: [{ use: 'pte-update' }] } },
  { name: 'svm shadow pte-update', variant: { backend: 'svm', mmu: 'shadow', policies: [{ use: 'pte-update' }] } },
  { name: 'vmx shadow unsync', variant: { backend: 'vmx', mmu: 'shadow', policies: [{ use: 'unsync' }] } },
  { name: 'svm shadow unsync', variant: { backend: 'svm', mmu: 'shadow', policies: [{ use: 'unsync' }] } },
];

/** The paging modes of the sweep, in the order of its strata. */
export const SWEEP_MODES: readonly PagingModeName[] = ['legacy32', 'pae', 'long4', 'long5'];

/**
 * The whole flag space as one list: stratum by stratum (MAXPHYADDR 36, 46, 52, each with the four modes),
 * each stratum the cases of core's `accessCaseSpace` in its order. Case `i` of the sweep is `at(i)`.
 */
export class SweepSpace {
  /** The strata, in order: mode, MAXPHYADDR, the stratum's flags and the sweep index of its first case. */
  readonly strata: readonly { mode: PagingModeName; maxPhyAddr: 36 | 46 | 52; flags: Uint32Array; first: number }[];
  /** The number of cases (vectors) in the whole space. */
  readonly size: number;

  constructor() {
    const strata: { mode: PagingModeName; maxPhyAddr: 36 | 46 | 52; flags: Uint32Array; first: number }[] = [];
    let first = 0;
    for (const maxPhyAddr of ACCESS_CASE_MAXPHYADDRS) {
      for (const mode of SWEEP_MODES) {
        const flags = accessCaseSpace(mode, maxPhyAddr);
        strata.push({ mode, maxPhyAddr, flags, first });
        first += flags.length;
      }
    }
    this.strata = strata;
    this.size = first;
  }

  /** Case `index` (0 <= index < size). */
  at(index: number): AccessCase {
    for (const s of this.strata) {
      if (index < s.first + s.flags.length) return { mode: s.mode, maxPhyAddr: s.maxPhyAddr, flags: s.flags[index - s.first]! };
    }
    throw new RangeError(`sweep case ${index}: the space has ${this.size} cases`);
  }

  /** The indices of shard `k` of `n` (1 <= k <= n): every n-th case, from case k - 1. */
  *shard(k: number, n: number): Generator<number> {
    for (let i = k - 1; i < this.size; i += n) yield i;
  }

  /** `perStratum` cases of each stratum, evenly spaced through it (a fixed sample of every stratum). */
  sample(perStratum: number): number[] {
    const out: number[] = [];
    for (const s of this.strata) {
      const step = s.flags.length / perStratum;
      for (let j = 0; j < perStratum; j++) out.push(s.first + Math.floor(j * step + step / 2));
    }
    return out;
  }
}

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
  /** The space the indices refer to. */
  readonly space: SweepSpace;
  /** The cases to run (indices into the space); every one runs under every variant. */
  readonly indices: Iterable<number>;
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

/** Runs the cases `indices` of the sweep space under every variant. */
export async function runDifferentialSweep(options: SweepOptions): Promise<SweepResult> {
  return runUnderVariants(
    (function* () {
      for (const i of options.indices) yield [i, accessCaseVector(options.space.at(i), 'sweep', i)] as const;
    })(),
    options,
  );
}

/** Options of `runVectorsDifferential`: SweepOptions without the space and its indices. */
export type VectorsDifferentialOptions = Omit<SweepOptions, 'space' | 'indices'>;

/**
 * Runs given vectors (core's `extendedCaseVectors`, or the vectors of a file) under every variant, as the
 * sweep runs its cases: each must give exactly the outcome it expects. A failure's `index` is the vector's
 * position in `vectors`.
 */
export async function runVectorsDifferential(vectors: readonly ConformanceVector[], options: VectorsDifferentialOptions = {}): Promise<SweepResult> {
  return runUnderVariants(
    vectors.map((v, i) => [i, v] as const),
    options,
  );
}

async function runUnderVariants(vectorsOf: Iterable<readonly [number, ConformanceVector]>, options: VectorsDifferentialOptions): Promise<SweepResult> {
  const variants = (options.variants ?? SWEEP_VARIANTS).map((v) => ({ name: v.name, variant: checkedVariant(v.variant) }));
  const failures: SweepFailure[] = [];
  let cases = 0;
  let vectors = 0;
  for (const [i, vector] of vectorsOf) {
    if (vectors % 64 === 63) await turnOfEventLoop();
    vectors++;
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
    options.progress?.(vectors, cases, failures.length);
  }
  return { vectors, cases, failures };
}

/**
 * Lets the event loop turn. A loop of awaits that never waits for I/O is one job to V8, and every object
 * reached through a WeakRef during a job is kept until the job ends (inversify's binding caches are WeakRefs):
 * without a turn now and then, each VM built stays alive to the end (4 GB after 3,500 vectors).
 */
export function turnOfEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
