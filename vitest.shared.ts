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
    },
  });
}
