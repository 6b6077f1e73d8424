import * as fs from 'node:fs';
import type { Command } from 'commander';
import { COST_PROFILES } from '@vmexit/core';

// The variant's reading, composing and checking are @vmexit/lab's (one home for the CLI, sweeps and workers).
export {
  checkGuestMemory,
  checkHostPages,
  checkVariantFlags,
  memoryLimitText,
  parseSize,
  rawVariant,
  readConfig,
  readCostModel,
  variantFromOptions,
  variantInputError,
  type VariantContext,
  type VariantOptions,
} from '@vmexit/lab';

/**
 * Adds the variant flags to `cmd`: `--backend vmx|svm|none --mmu shadow|tdp --policy a,b --config FILE --cost-model NAME --vcpus N --memory SIZE
 * --host-pages 4k|2m|1g`. `shadow` is @vmexit/mmu-shadow, `tdp` (two-dimensional paging: EPT on VMX, NPT on SVM) @vmexit/mmu-tdp;
 * `--host-pages` is the host page size backing guest RAM, the largest second-stage leaf the TDP MMU builds (refused with `--mmu shadow`).
 */
export function addVariantOptions(cmd: Command): Command {
  return cmd
    .option('--backend <name>', 'the hypervisor backend: vmx, svm or none (native)')
    .option('--mmu <name>', 'the MMU: shadow (shadow paging) or tdp (two-dimensional paging: EPT on VMX, NPT on SVM); not with --backend none')
    .option('--policy <list>', 'fault policies in order, comma-separated: built-in names, package names or paths')
    .option('--config <file>', 'a variant file: vmexit.config.json or vmexit.config.mjs (flags override its fields)')
    .option('--cost-model <name|file>', `the cost model for modelled cycles: ${Object.keys(COST_PROFILES).join(', ')}, or a JSON file (docs/cost-models.md)`)
    .option('--vcpus <n>', 'number of vCPUs')
    .option('--memory <size>', 'guest RAM, e.g. 256M or 1G')
    .option('--host-pages <size>', 'host page size backing guest RAM: 4k (default), 2m or 1g; the largest EPT/NPT leaf, --mmu tdp only');
}

/**
 * The files the variant flags read (`--config`, a `--cost-model` file, `--policy` paths): inputs that an output
 * file of the same command must not replace (`run --cost-model m.json --trace m.json` wrote the trace over the
 * model). Only names of existing regular files: a built-in name or a package name is no file.
 */
export function variantInputFiles(flags: { readonly config?: string; readonly costModel?: string; readonly policy?: string }): string[] {
  const named = [flags.config, flags.costModel, ...(flags.policy ?? '').split(',').map((p) => p.trim())];
  return named.filter((f): f is string => {
    if (f === undefined || f === '') return false;
    try {
      return fs.statSync(f).isFile();
    } catch {
      return false;
    }
  });
}
