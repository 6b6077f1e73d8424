let installed = false;

/**
 * `vmexit ... | head`: once the reader has closed the pipe, a write fails with EPIPE, which node reports as an
 * 'error' event on stdout (an uncaught exception with a stack trace when nobody listens). The output is then
 * of no use to anyone: exit at once, quietly, with the status the run has set. Any other stdout error is
 * still thrown. Installed once, by the process entry point (bin/vmexit.ts), for every command.
 */
export function quietOnEpipe(): void {
  if (installed) return;
  installed = true;
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
    process.exit();
  });
}
