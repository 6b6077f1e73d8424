import type { ExitTracer, ModuleSources, PagingModeName, Variant } from '@vmexit/core';
import type { Personality, TraceLoader } from '@vmexit/guest';
import { provenance, type Provenance } from './provenance.js';
import { runOnVariant, type VariantRunResult } from './run-variant.js';
import { parseVariantSpec, type VariantContext, type VariantOverrides } from './variant-spec.js';

/** How one run goes; everything but the variant and workload has the CLI's default. */
export interface RunOptions {
  /** Paging mode (default `long4`). */
  readonly mode?: PagingModeName;
  /** Seed of every random choice (default 1). */
  readonly seed?: number;
  readonly personalities?: readonly Personality[];
  /** Check the MMU's invariants after every exit. */
  readonly audit?: boolean;
  readonly tracer?: ExitTracer;
  /** Called as the run goes: accesses made so far, and the total when the workload knows it. */
  readonly onProgress?: (accesses: number, total: number | null) => void;
  /** What a spec's variant has overridden (`{ memory: '16M', vcpus: '2' }`), as `--memory` and `--vcpus` do; ignored for a composed Variant. */
  readonly overrides?: VariantOverrides;
  /** Where a spec's relative paths are resolved from, and where modules come from. */
  readonly context?: VariantContext;
  /** The variant's modules (tests bind their own MMU here); defaults to context.sources. */
  readonly sources?: ModuleSources;
  /** Loads a trace workload (default: read and decode the file); runs on one trace may share one (`createTraceLoader`). */
  readonly loadTrace?: TraceLoader;
}

/** A run's result (what `vmexit run --json` prints): the deterministic RunResult with cycles, and where it came from. */
export type LabRunResult = VariantRunResult & { readonly provenance: Provenance };

/**
 * Runs `workload` on `variant` (a composed Variant, or a spec such as `"vmx shadow pte-update"` or a config
 * file) exactly as `vmexit run` does: the guest OS model boots on the variant's VM, and the counters are the
 * VM's from the end of boot to the end of the run (the window), priced under the variant's cost model. The
 * same variant, workload, mode and seed give the same counters, cycles and memory digest; `provenance` says
 * which packages, Node and host ran it, and when.
 *
 * @example
 *   const r = await runVariant('vmx shadow pte-update', 'fork-cow:pages=16', { seed: 1 });
 *   r.counters.total.exits; r.cycles.cycles; r.memoryDigest;
 */
export async function runVariant(variant: Variant | string, workload: string, options: RunOptions = {}): Promise<LabRunResult> {
  const v = typeof variant === 'string' ? await parseVariantSpec(variant, options.overrides ?? {}, options.context) : variant;
  const prov = provenance(v);
  const { result } = await runOnVariant({
    workload,
    mode: options.mode ?? 'long4',
    seed: options.seed ?? 1,
    personalities: options.personalities ?? [],
    variant: v,
    audit: options.audit,
    tracer: options.tracer,
    onProgress: options.onProgress,
    sources: options.sources ?? options.context?.sources,
    loadTrace: options.loadTrace,
  });
  return { ...result, provenance: prov };
}

/** A result less what differs from run to run (wall time, accesses/s, provenance): what must be equal for the same inputs. */
export function deterministicPart<T extends object>(r: T): Omit<T, 'wallSeconds' | 'accessesPerSecond' | 'provenance'> {
  const {
    wallSeconds: _w,
    accessesPerSecond: _a,
    provenance: _p,
    ...rest
  } = r as T & { wallSeconds?: unknown; accessesPerSecond?: unknown; provenance?: unknown };
  return rest;
}
