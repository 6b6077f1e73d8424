#!/usr/bin/env node
// The `vmexit` command. This launcher is committed (not built) so that the file exists when `npm ci` links the
// workspace's bins, before anything is built; it runs the compiled entry point in dist/.
import { existsSync } from 'node:fs';

const entry = new URL('../dist/bin/vmexit.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write('vmexit: @vmexit/cli is not built (no dist/bin/vmexit.js): run `npm run build` at the root of the repository first\n');
  process.exit(2);
}
await import(entry.href);
