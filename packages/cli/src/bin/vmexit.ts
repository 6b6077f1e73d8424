#!/usr/bin/env node
import { quietOnEpipe } from '../epipe.js';
import { main } from '../program.js';

quietOnEpipe();

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`vmexit: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 70;
  },
);
