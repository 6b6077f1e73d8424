import { availableParallelism } from 'node:os';
import { defineConfig } from 'vitest/config';

/**
 * The vitest settings every package shares: the default reporter for people, and a JSON report that
 * `scripts/test.mjs` sums into the closing "N passed, N failed" line.
 */
export function vmexitVitestConfig(overrides: { testTimeout?: number } = {}) {
  return defineConfig({
    test: {
      include: ['test/**/*.test.ts'],
      reporters: ['default', 'json'],
      outputFile: { json: '.test-report.json' },
      testTimeout: overrides.testTimeout ?? 60_000,
      pool: 'forks',
      // Every core (vitest's default leaves one idle: on a 2-core CI machine the last package's files then ran
      // one at a time while the other core waited).
      maxWorkers: availableParallelism(),
    },
  });
}
