import type { Command } from 'commander';
import { COST_PROFILES } from '@vmexit/core';

// The variant's reading, composing and checking are @vmexit/lab's (one home for the CLI, sweeps and workers).
export {
  checkGuestMemory,
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
 * Adds the variant flags to `cmd`: `--backend vmx|svm|none --mmu shadow|tdp --policy a,b --config FILE --cost-model NAME --vcpus N --memory SIZE`.
 * `tdp` loads only where a package `@vmexit/mmu-tdp` is installed (this release has none).
 */
export function addVariantOptions(cmd: Command): Command {
  return cmd
    .option('--backend <name>', 'the hypervisor backend: vmx, svm or none (native)')
    .option(
      '--mmu <name>',
      'the MMU: shadow (tdp, two-dimensional paging, needs the @vmexit/mmu-tdp package, which this release does not include); not with --backend none',
    )
    .option('--policy <list>', 'fault policies in order, comma-separated: built-in names, package names or paths')
    .option('--config <file>', 'a variant file: vmexit.config.json or vmexit.config.mjs (flags override its fields)')
    .option('--cost-model <name|file>', `the cost model for modelled cycles: ${Object.keys(COST_PROFILES).join(', ')}, or a JSON file (docs/cost-models.md)`)
    .option('--vcpus <n>', 'number of vCPUs')
    .option('--memory <size>', 'guest RAM, e.g. 256M or 1G');
}
