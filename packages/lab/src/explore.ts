import { explore, type ExploreResult, type RaceViolation } from '@vmexit/core';
import { RACE_SCENARIOS, shadowRaceScenario, type RaceMutation } from '@vmexit/mmu-shadow';
import { InputError } from './errors.js';

/** What `vmexit explore --json` prints. */
export interface ExploreDocument {
  readonly schema: 'vmexit.explore/1';
  readonly scenario: string;
  readonly description: string;
  readonly mmu: 'shadow';
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

/** The race scenarios `explore` runs (the shadow MMU's; mmu-shadow src/race.ts). */
export function exploreScenarios(): { name: string; description: string }[] {
  return RACE_SCENARIOS.map((name) => ({ name, description: shadowRaceScenario(name).description }));
}

/**
 * Every interleaving of race scenario `name` up to `preemptions` preemptions (core's explorer), with the checks
 * after each. `mutation` runs a deliberately broken MMU (tests, and to see what the explorer catches).
 */
export function exploreScenario(name: string, preemptions: number, mutation: RaceMutation = {}): ExploreDocument {
  if (!RACE_SCENARIOS.includes(name)) throw new InputError(`--scenario: unknown scenario '${name}' (scenarios: ${RACE_SCENARIOS.join(', ')})`);
  if (!Number.isInteger(preemptions) || preemptions < 0 || preemptions > 6)
    throw new InputError(`--preemptions: expected an integer from 0 to 6, got '${preemptions}'`);
  const scenario = shadowRaceScenario(name, mutation);
  const t0 = performance.now();
  const r: ExploreResult = explore(scenario, { preemptions });
  return {
    schema: 'vmexit.explore/1',
    scenario: name,
    description: scenario.description,
    mmu: 'shadow',
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
    `${d.scenario}: ${d.description}`,
    `${d.interleavings} interleavings (at most ${d.preemptions} preemptions${d.complete ? '' : ', stopped early'}), ${d.steps} steps, ${d.wallSeconds.toFixed(1)} s`,
    `mmu_lock acquired ${s['mmu_lock.acquired'] ?? 0}, contended ${s['mmu_lock.contended'] ?? 0}; pf_fast ${s['pf_fast'] ?? 0}, pf_spurious ${s['pf_spurious'] ?? 0}, cmpxchg failures ${s['pf_fast_cmpxchg_fail'] ?? 0} (summed over the interleavings)`,
    `${d.violations} violations`,
  ];
  for (const v of d.examples) {
    lines.push('', `violation: ${v.problems.join('; ')}`, `schedule: ${v.schedule.join(' ')}`);
    for (const st of v.steps) lines.push(`  ${st.thread.padEnd(18)} ${st.action}`);
  }
  return `${lines.join('\n')}\n`;
}
