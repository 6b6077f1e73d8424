#!/usr/bin/env node
import { tuneV8 } from '@vmexit/core';
import { quietOnEpipe } from '../epipe.js';
import { main } from '../program.js';

// Before anything runs the simulator: V8's inlining budget for the exit path (core's engine.ts).
tuneV8();
quietOnEpipe();

let settled = false;
// Node leaves when nothing is left to run, even with `main` still waiting: a module the command imports (a
// --config or --policy file, a variant file) whose top-level await never settles. That is bad input, not
// success: exit 2 with a message, instead of exit 0 with nothing.
process.once('beforeExit', () => {
  if (settled) return;
  process.stderr.write(
    'vmexit: the command never finished: a module it loaded (--config, --policy or a variant file) waits on a promise that never settles (a top-level await?)\n',
  );
  process.exitCode = 2;
});

main(process.argv.slice(2)).then(
  (code) => {
    settled = true;
    process.exitCode = code;
  },
  (e: unknown) => {
    settled = true;
    process.stderr.write(`vmexit: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 70;
  },
);
