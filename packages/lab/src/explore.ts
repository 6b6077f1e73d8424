import { explore, type ExploreResult, type RaceScenario, type RaceViolation } from '@vmexit/core';
import { VmxBackend } from '@vmexit/backend-vmx';
import { SvmBackend } from '@vmexit/backend-svm';
import { RACE_SCENARIOS, shadowRaceScenario, type RaceMutation } from '@vmexit/mmu-shadow';
import { TDP_RACE_SCENARIOS, tdpRaceScenario } from '@vmexit/mmu-tdp';
import { InputError } from './errors.js';

/** What `vmexit explore --json` prints. */
export interface ExploreDocument {
  readonly schema: 'vmexit.explore/1';
  readonly scenario: string;
  readonly description: string;
  readonly mmu: 'shadow' | 'tdp';
  /** The backend of a TDP scenario (EPT on vmx, NPT on svm); the shadow scenarios run the MMU without one. */
  readonly backend?: 'vmx' | 'svm';
  readonly preemptions: number;
  readonly interleavings: number;
  readonly violations: number;
  readonly steps: number;
  readonly complete: boolean;
  readonly wallSeconds: number;
  readonly stats: Readonly<Record<string, number>>;
  /** Up to 10 violating interleavings, each with the schedule (thread indices) that reproduces it. */
  readonly examples: readonly RaceViolation[];
}

/** Where `explore` runs a scenario: the shadow MMU's scenarios, or the TDP MMU's on a backend (`--mmu tdp [--backend vmx|svm]`). */
export interface ExploreTarget {
  readonly mmu?: 'shadow' | 'tdp';
  /** The TDP scenarios' backend; default vmx. */
  readonly backend?: 'vmx' | 'svm';
}

/** The race scenarios `explore` runs for `mmu` (mmu-shadow src/race.ts; mmu-tdp src/race.ts). */
export function exploreScenarios(mmu: 'shadow' | 'tdp' = 'shadow'): { name: string; description: string }[] {
  if (mmu === 'tdp') return TDP_RACE_SCENARIOS.map((name) => ({ name, description: tdpRaceScenario(name, new VmxBackend()).description }));
  return RACE_SCENARIOS.map((name) => ({ name, description: shadowRaceScenario(name).description }));
}

/**
 * Every interleaving of race scenario `name` up to `preemptions` preemptions (core's explorer), with the checks
 * after each. `mutation` runs a deliberately broken MMU (tests, and to see what the explorer catches); `target`
 * picks the MMU (and, for TDP, the backend).
 */
export function exploreScenario(name: string, preemptions: number, mutation: RaceMutation = {}, target: ExploreTarget = {}): ExploreDocument {
  const mmu = target.mmu ?? 'shadow';
  if (mmu !== 'shadow' && mmu !== 'tdp') throw new InputError(`--mmu: expected shadow or tdp, got '${String(mmu)}'`);
  const names = mmu === 'tdp' ? TDP_RACE_SCENARIOS : RACE_SCENARIOS;
  if (!names.includes(name)) throw new InputError(`--scenario: unknown scenario '${name}' of the ${mmu} MMU (scenarios: ${names.join(', ')})`);
  if (!Number.isInteger(preemptions) || preemptions < 0 || preemptions > 6)
    throw new InputError(`--preemptions: expected an integer from 0 to 6, got '${preemptions}'`);
  const backend = target.backend ?? 'vmx';
  if (mmu === 'tdp' && backend !== 'vmx' && backend !== 'svm') throw new InputError(`--backend: expected vmx or svm, got '${String(backend)}'`);
  const scenario: RaceScenario =
    mmu === 'tdp' ? tdpRaceScenario(name, backend === 'svm' ? new SvmBackend() : new VmxBackend(), mutation) : shadowRaceScenario(name, mutation);
  const t0 = performance.now();
  const r: ExploreResult = explore(scenario, { preemptions });
  return {
    schema: 'vmexit.explore/1',
    scenario: name,
    description: scenario.description,
    mmu,
    ...(mmu === 'tdp' ? { backend } : {}),
    preemptions,
    interleavings: r.interleavings,
    violations: r.violations,
    steps: r.steps,
    complete: r.complete,
    wallSeconds: (performance.now() - t0) / 1000,
    stats: r.stats,
    examples: r.examples,
  };
}

/** The text `vmexit explore` prints. */
export function formatExplore(d: ExploreDocument): string {
  const s = d.stats;
  const lines = [
    `${d.scenario}${d.mmu === 'tdp' ? ` (tdp on ${d.backend})` : ''}: ${d.description}`,
    `${d.interleavings} interleavings (at most ${d.preemptions} preemptions${d.complete ? '' : ', stopped early'}), ${d.steps} steps, ${d.wallSeconds.toFixed(1)} s`,
    `mmu_lock acquired ${s['mmu_lock.acquired'] ?? 0}, contended ${s['mmu_lock.contended'] ?? 0}; pf_fast ${s['pf_fast'] ?? 0}, pf_spurious ${s['pf_spurious'] ?? 0}, cmpxchg failures ${s['pf_fast_cmpxchg_fail'] ?? 0}${s['map_retry'] !== undefined ? `, slow-path retries ${s['map_retry']}` : ''} (summed over the interleavings)`,
    `${d.violations} violations`,
  ];
  for (const v of d.examples) {
    lines.push('', `violation: ${v.problems.join('; ')}`, `schedule: ${v.schedule.join(' ')}`);
    for (const st of v.steps) lines.push(`  ${st.thread.padEnd(18)} ${st.action}`);
  }
  return `${lines.join('\n')}\n`;
}
