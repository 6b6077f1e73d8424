import { availableParallelism } from 'node:os';
import { configDefaults, defineConfig } from 'vitest/config';

const TESTS = 'test/**/*.test.ts';

/**
 * The vitest settings every package shares: the default reporter for people, and a JSON report that
 * `scripts/test.mjs` sums into the closing "N passed, N failed" line.
 */
export function vmexitVitestConfig(overrides: { testTimeout?: number; isolate?: boolean; isolated?: readonly string[] } = {}) {
  // `isolated` only means something when the other files share their workers (`isolate: false`).
  const isolated = overrides.isolate === false ? (overrides.isolated ?? []) : [];
  return defineConfig({
    test: {
      // (With `isolated`, each project says which files it runs: a project's list would add to this one.)
      ...(isolated.length > 0 ? {} : { include: [TESTS] }),
      reporters: ['default', 'json'],
      outputFile: { json: '.test-report.json' },
      testTimeout: overrides.testTimeout ?? 60_000,
      pool: 'forks',
      // The workspace's packages are imported from their built dist/ as Node imports any package, not through
      // vitest's module runner, whose transform reaches every imported binding through a getter on a module
      // object: the simulator's hot paths ran about 3x slower that way (runMain on kbuild: 51 s under vitest,
      // 17 s in plain Node). A test's own package's src/ still goes through the runner (TypeScript, vi.mock).
      server: { deps: { external: [/\/(packages|examples)\/[^/]+\/dist\//] } },
      // Every core (vitest's default leaves one idle: on a 2-core CI machine the last package's files then ran
      // one at a time while the other core waited).
      maxWorkers: availableParallelism(),
      // `isolate: false` (a package whose tests mock no module and patch nothing global): a worker keeps the modules
      // it imported for its next test file instead of importing the simulator again for each (that import was a
      // third of these packages' test time on a 2-core machine).
      isolate: overrides.isolate ?? true,
      // `isolated` (with `isolate: false`): the files that mock a module (vi.mock) or depend on what ran before them in
      // the process (a count of its garbage collections) run in a project of their own, each with a fresh module graph;
      // the others share their worker's, as above.
      ...(isolated.length > 0
        ? {
            projects: [
              { extends: true, test: { name: 'shared', include: [TESTS], exclude: [...configDefaults.exclude, ...isolated], isolate: false } },
              { extends: true, test: { name: 'isolated', include: [...isolated], isolate: true } },
            ],
          }
        : {}),
    },
  });
}
