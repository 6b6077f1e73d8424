import { readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { Command } from 'commander';
import { PAGING_MODE_NAMES, loadVectorFile, runConformance, runVector, type ConformanceVector, type PagingModeName, type VectorResult } from '@vmexit/core';
import { createVmVectorMachine } from '../conformance-vm.js';
import { InputError, RunFailure } from '../errors.js';
import { parseVariantSpec, formatComparison, runComparison, type ComparisonDocument } from './compare.js';

/**
 * The headline comparison: KVM's page-fault optimizations on shadow paging, VMX and SVM. `pte-update`
 * (update the shadow pte on a guest pte write instead of clearing it, KVM 2007), `bypass-guest-pf` (let
 * not-present guest faults bypass the hypervisor, VMX only), and `unsync` (KVM 2008, what replaced them).
 */
export const HEADLINE_VARIANTS: Readonly<Record<'vmx' | 'svm', readonly string[]>> = {
  vmx: ['vmx shadow', 'vmx shadow pte-update', 'vmx shadow pte-update,bypass-guest-pf', 'vmx shadow unsync'],
  svm: ['svm shadow', 'svm shadow pte-update', 'svm shadow unsync'],
};

/**
 * The same comparison with write-flood detection in every variant (KVM has zapped flooded shadow pages
 * since the same 2007 series): without it, the stores to page-table pages the guest freed and reuses as data
 * all exit and are emulated, and on kbuild they outnumber every other exit.
 */
export const WITH_FLOOD: Readonly<Record<'vmx' | 'svm', readonly string[]>> = {
  vmx: ['vmx shadow write-flood', 'vmx shadow write-flood,pte-update', 'vmx shadow write-flood,pte-update,bypass-guest-pf', 'vmx shadow write-flood,unsync'],
  svm: ['svm shadow write-flood', 'svm shadow write-flood,pte-update', 'svm shadow write-flood,unsync'],
};

/** What SVM cannot do, shown as the refusal the composition gives. */
export const REFUSED_ON_SVM = 'svm shadow pte-update,bypass-guest-pf';

/** The directory of the conformance vectors bundled with @vmexit/core. */
export function bundledVectorDir(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve('@vmexit/core/package.json')), 'conformance');
}

/**
 * `vmexit main` (what `npm start` runs): first shows the machine under the numbers is right (the bundled
 * paging conformance vectors natively, and as guest accesses under VMX and SVM shadow paging), then runs the
 * headline comparison on the bundled workload (`kbuild`, a real compile) and prints it.
 */
export function registerMain(program: Command): void {
  program
    .command('main')
    .description("the headline job: paging conformance, then KVM's shadow-paging optimizations compared on the bundled kbuild")
    .option('--workload <spec>', 'the workload of the comparison', 'kbuild')
    .option('--mode <mode>', `paging mode: ${PAGING_MODE_NAMES.join(', ')}`, 'long4')
    .option('--seed <n>', 'seed', '1')
    .option('--json', 'print one JSON document: the conformance counts and both comparisons')
    .action(async (flags: { workload: string; mode: string; seed: string; json?: boolean }) => {
      if (!(PAGING_MODE_NAMES as readonly string[]).includes(flags.mode)) throw new InputError(`--mode: unknown paging mode '${flags.mode}'`);
      if (!/^\d+$/.test(flags.seed)) throw new InputError(`--seed: expected an integer, got '${flags.seed}'`);
      const say = (s: string): void => {
        if (flags.json !== true) process.stdout.write(s);
      };
      const progress = (s: string): void => {
        process.stderr.write(s);
      };

      // 1. The machine: conformance vectors.
      const dir = bundledVectorDir();
      const vectors: ConformanceVector[] = readdirSync(dir)
        .filter((f) => f.endsWith('.jsonl'))
        .sort()
        .flatMap((f) => loadVectorFile(join(dir, f)));
      const conformance: Record<string, { passed: number; failed: number }> = {};
      const native = runConformance(vectors);
      conformance.native = { passed: native.passed, failed: native.failed };
      for (const backend of ['vmx', 'svm'] as const) {
        const variant = await parseVariantSpec(`${backend} shadow`, {});
        progress(`conformance under ${backend} shadow...\n`);
        const results: VectorResult[] = [];
        for (const v of vectors) {
          const machine = await createVmVectorMachine(v, variant);
          results.push(runVector(v, () => machine));
        }
        const failed = results.filter((r) => !r.passed).length;
        conformance[`${backend} shadow`] = { passed: results.length - failed, failed };
      }
      say(`paging conformance (${vectors.length} vectors, SDM Vol. 3A ch. 4):\n`);
      for (const [k, c] of Object.entries(conformance)) say(`  ${k.padEnd(12)} ${c.passed} passed, ${c.failed} failed\n`);

      // 2. The headline comparison.
      const docs: Record<string, ComparisonDocument> = {};
      let refusal: string;
      for (const [title, sets] of [
        ['', HEADLINE_VARIANTS],
        [', with write-flood detection in every variant', WITH_FLOOD],
      ] as const) {
        for (const backend of ['vmx', 'svm'] as const) {
          say(`\n${backend.toUpperCase()}, shadow paging${title}:\n`);
          const doc = await runComparison({
            workload: flags.workload,
            variants: sets[backend],
            mode: flags.mode as PagingModeName,
            seed: Number(flags.seed),
            onVariant: (label, i, n) => progress(`[${backend} ${i + 1}/${n}] ${label} on ${flags.workload}...\n`),
          });
          docs[`${backend}${title === '' ? '' : '+write-flood'}`] = doc;
          say(formatComparison(doc));
        }
      }
      try {
        await parseVariantSpec(REFUSED_ON_SVM, {});
        refusal = `'${REFUSED_ON_SVM}' was accepted, but SVM cannot filter page faults by error code`;
      } catch (e) {
        refusal = e instanceof Error ? e.message : String(e);
      }
      say(`\n${REFUSED_ON_SVM}: refused:\n${refusal}\n`);
      if (flags.json === true) process.stdout.write(`${JSON.stringify({ schema: 'vmexit.main/1', conformance, comparisons: docs, refusedOnSvm: refusal }, null, 2)}\n`);
      const failed = Object.entries(conformance).filter(([, c]) => c.failed > 0);
      if (failed.length > 0) throw new RunFailure(`paging conformance failed: ${failed.map(([k, c]) => `${k} ${c.failed}`).join(', ')}`);
    });
}
