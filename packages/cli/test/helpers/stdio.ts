import { afterEach, beforeEach, vi } from 'vitest';

/** What the CLI wrote to stdout and stderr during one test, one string per write. */
export interface CapturedStdio {
  readonly out: string[];
  readonly err: string[];
}

/**
 * Captures process.stdout and process.stderr writes in every test of the calling file, and resets
 * `process.exitCode` before and after each test (the CLI's `main` reads it). The arrays are the same
 * objects for the whole file and are emptied in place before each test (`io.err.length = 0` empties one
 * within a test).
 */
export function captureStdio(): CapturedStdio {
  const io: CapturedStdio = { out: [], err: [] };
  beforeEach(() => {
    io.out.length = 0;
    io.err.length = 0;
    vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => (io.out.push(String(s)), true));
    vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => (io.err.push(String(s)), true));
    process.exitCode = undefined;
  });
  afterEach(() => {
    vi.restoreAllMocks();
    process.exitCode = undefined;
  });
  return io;
}
