import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The default reporter, and a JSON summary in .test-report.json for tools that count tests.
    reporters: ['default', 'json'],
    outputFile: { json: '.test-report.json' },
    // A test runs a VM: give it time on a slow machine.
    testTimeout: 60_000,
  },
});
