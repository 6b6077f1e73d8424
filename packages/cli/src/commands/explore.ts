import type { Command } from 'commander';
import { exploreScenario, exploreScenarios, formatExplore } from '@vmexit/lab';
import { InputError, RunFailure } from '../errors.js';

/**
 * `vmexit explore --scenario NAME [--mmu shadow|tdp] [--backend vmx|svm] [--preemptions K] [--json]` and
 * `vmexit explore --list [--mmu tdp]`: runs every interleaving of a small race scenario of the shadow MMU, or of
 * the TDP MMU on EPT (vmx) or NPT (svm), up to K preemptions (CHESS / loom) and checks after
 * each that no dirty page was lost, no writable spte escaped the dirty log, the audit passes and guest memory
 * is that of a sequential run. A violation prints the schedule that reproduces it and exits 1.
 */
export function registerExplore(program: Command): void {
  program
    .command('explore')
    .description('run every interleaving of a race scenario (vCPUs, dirty-log harvest, zap) up to K preemptions and check the invariants')
    .option('--scenario <name>', 'the scenario (see --list)')
    .option('--preemptions <k>', 'the most preemptions per interleaving (0-6)', '2')
    .option('--mmu <name>', "the MMU whose scenarios run: shadow, or tdp (KVM's TDP MMU: mmu_lock is a reader-writer lock)", 'shadow')
    .option('--backend <name>', 'the backend of a tdp scenario: vmx (EPT) or svm (NPT)', 'vmx')
    .option('--list', 'list the scenarios')
    .option('--json', 'print one document (schema vmexit.explore/1)')
    .action((flags: { scenario?: string; preemptions: string; mmu: string; backend: string; list?: boolean; json?: boolean }, cmd: Command) => {
      if (flags.mmu !== 'shadow' && flags.mmu !== 'tdp') throw new InputError(`--mmu: expected shadow or tdp, got '${flags.mmu}'`);
      if (flags.backend !== 'vmx' && flags.backend !== 'svm') throw new InputError(`--backend: expected vmx or svm, got '${flags.backend}'`);
      // The shadow MMU's scenarios model the MMU alone, the same on either backend: a --backend would be ignored.
      if (flags.mmu === 'shadow' && cmd.getOptionValueSource('backend') === 'cli')
        throw new InputError(`--backend ${flags.backend}: only the tdp scenarios have a backend (EPT or NPT); give --mmu tdp, or leave --backend out`);
      if (flags.list === true) {
        const all = exploreScenarios(flags.mmu);
        process.stdout.write(
          flags.json === true ? `${JSON.stringify({ scenarios: all }, null, 2)}\n` : all.map((s) => `${s.name}\n  ${s.description}\n`).join(''),
        );
        return;
      }
      if (flags.scenario === undefined) throw new InputError('explore: give --scenario NAME (or --list)');
      if (!/^\d+$/.test(flags.preemptions)) throw new InputError(`--preemptions: expected an integer from 0 to 6, got '${flags.preemptions}'`);
      const d = exploreScenario(flags.scenario, Number(flags.preemptions), {}, { mmu: flags.mmu, backend: flags.backend });
      process.stdout.write(flags.json === true ? `${JSON.stringify(d, null, 2)}\n` : formatExplore(d));
      if (d.violations > 0) throw new RunFailure(`explore: ${d.violations} of ${d.interleavings} interleavings of ${d.scenario} violate an invariant`);
    });
}
