// The command line that every benchmark script shares (scripts/bench.mjs, packages/core/bench/paging.bench.mjs,
// packages/cli/bench/main.bench.mjs): `--json FILE`, `--runs N`, `--quick`, and each script's own options.
// A usage error is one line on stderr, the synopsis, and exit code 2.
import { writeFileSync } from 'node:fs';
import process from 'node:process';

/**
 * Parses `argv` (default: this process's arguments).
 * - `name`: the script's name in messages; `synopsis`: its usage line;
 * - `runs`: the default of `--runs`, `maxRuns` its largest value (from 1);
 * - `options`: the script's own options, each `(next, usage) => void`, where `next()` takes the option's value
 *   (the next argument, undefined when there is none) and `usage(message)` fails.
 * `--json FILE` is written empty at once, so that a run whose figures could not be saved fails before it
 * starts, not after. Returns `{ json, runs, quick, usage }` (`json` null without --json).
 */
export function parseBenchArgs({ name, synopsis, runs, maxRuns, options = {} }, argv = process.argv.slice(2)) {
  const usage = (message) => {
    process.stderr.write(`${name}: ${message}\nusage: ${synopsis}\n`);
    process.exit(2);
  };
  const opts = { json: null, runs, quick: false, usage };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') {
      if (argv[i + 1] === undefined || argv[i + 1].startsWith('--')) usage('--json needs a file name');
      opts.json = argv[++i];
    } else if (a === '--runs') {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 1 || n > maxRuns) usage(`--runs ${argv[i]} is not an integer from 1 to ${maxRuns}`);
      opts.runs = n;
    } else if (a === '--quick') {
      opts.quick = true;
    } else if (Object.hasOwn(options, a)) {
      options[a](() => argv[++i], usage);
    } else {
      usage(`unknown argument '${a}'`);
    }
  }
  if (opts.json !== null) {
    try {
      writeFileSync(opts.json, '');
    } catch (e) {
      usage(`cannot write --json file '${opts.json}': ${e.message}`);
    }
  }
  return opts;
}
