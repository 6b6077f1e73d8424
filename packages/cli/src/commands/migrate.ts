import type { Command } from 'commander';
import { PAGING_MODE_NAMES, type PagingModeName } from '@vmexit/core';
import { DEFAULT_DIRTY_RING_ENTRIES, DIRTY_LOG_MODES, formatMigrate, migrate, type DirtyLogMode } from '@vmexit/lab';
import { InputError, RunFailure } from '../errors.js';
import { addVariantOptions, variantFromOptions, type VariantOptions } from '../variant-options.js';
import { checkWorkloadSpec } from '../workload-check.js';

interface MigrateFlags extends VariantOptions {
  workload: string;
  mode: string;
  seed: string;
  dirtyLog: string;
  dirtyRingSize: string;
  maxRounds: string;
  stopPages: string;
  copyRate: string;
  json?: boolean;
}

function integer(text: string, option: string, min: number, max: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < min || n > max) throw new InputError(`${option}: expected an integer from ${min} to ${max}, got '${text}'`);
  return n;
}

/**
 * `vmexit migrate --workload W [variant flags] [--dirty-log bitmap|clear|ring|pml] [--dirty-ring-size N] [--max-rounds N] [--stop-pages N]
 * [--copy-rate R] [--json]`: pre-copy live migration of the source VM running the workload (lab `migrate`).
 * Prints a table per round (dirty pages, pages sent, exits, fast fixes, lock acquisitions), the modelled copy
 * time and downtime, and the two digests; a mismatch (a dirty page lost) exits 1.
 */
export function registerMigrate(program: Command): void {
  const cmd = program
    .command('migrate')
    .description('pre-copy live migration of a VM running a workload: rounds of dirty-log harvest and copy, then stop-and-copy; digests must match')
    .requiredOption('--workload <spec>', 'NAME[:k=v,...] (dirty-log-test is made for it), kbuild, or FILE.vxt')
    .option('--mode <mode>', `paging mode: ${PAGING_MODE_NAMES.join(', ')}`, 'long4')
    .option('--seed <n>', 'seed of every random choice', '1')
    .option('--dirty-log <mode>', `how the log is harvested: ${DIRTY_LOG_MODES.join(', ')}`, 'bitmap')
    .option(
      '--dirty-ring-size <entries>',
      'ring mode: entries per vCPU ring (a power of two, 256..65536; KVM_CAP_DIRTY_LOG_RING)',
      String(DEFAULT_DIRTY_RING_ENTRIES),
    )
    .option('--max-rounds <n>', 'harvest rounds after the first full copy before the guest is stopped', '10')
    .option('--stop-pages <n>', 'stop when a round dirties at most this many pages', '64')
    .option('--copy-rate <r>', 'pages the link copies per 1000 guest accesses (a round lasts until its pages are sent)', '4')
    .option('--json', 'print one document (schema vmexit.migrate/1)');
  addVariantOptions(cmd).action(async (flags: MigrateFlags) => {
    if (!(PAGING_MODE_NAMES as readonly string[]).includes(flags.mode))
      throw new InputError(`--mode: unknown paging mode '${flags.mode}' (expected ${PAGING_MODE_NAMES.join(', ')})`);
    if (!(DIRTY_LOG_MODES as readonly string[]).includes(flags.dirtyLog))
      throw new InputError(`--dirty-log: unknown mode '${flags.dirtyLog}' (expected ${DIRTY_LOG_MODES.join(', ')})`);
    const seed = integer(flags.seed, '--seed', 0, 0xffffffff);
    const ringEntries = integer(flags.dirtyRingSize, '--dirty-ring-size', 1, 2 ** 31);
    if (flags.dirtyLog !== 'ring' && cmd.getOptionValueSource('dirtyRingSize') === 'cli')
      throw new InputError(`--dirty-ring-size: sizes the rings of --dirty-log ring; this migration harvests with --dirty-log ${flags.dirtyLog}`);
    const maxRounds = integer(flags.maxRounds, '--max-rounds', 0, 10_000);
    const stopPages = integer(flags.stopPages, '--stop-pages', 0, 2 ** 31);
    const copyRate = Number(flags.copyRate);
    if (!/^\d+(\.\d+)?$/.test(flags.copyRate) || !(copyRate > 0))
      throw new InputError(`--copy-rate: expected a positive decimal number (digits and an optional fraction, as 4 or 0.5), got '${flags.copyRate}'`);
    checkWorkloadSpec(flags.workload, '--workload');
    const variant = await variantFromOptions(flags);
    const r = await migrate({
      workload: flags.workload,
      mode: flags.mode as PagingModeName,
      seed,
      personalities: [],
      variant,
      dirtyLog: flags.dirtyLog as DirtyLogMode,
      ringEntries,
      maxRounds,
      stopPages,
      copyRate,
    });
    process.stdout.write(flags.json === true ? `${JSON.stringify(r, null, 2)}\n` : formatMigrate(r));
    if (!r.digestMatch) throw new RunFailure(`migrate: the destination's memory digest differs from the source's: a dirty page was lost`);
  });
}
