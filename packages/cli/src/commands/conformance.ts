import type { Command } from 'commander';
import { VectorError, formatFailure, formatSummary, loadVectorFile, reportToJson, runConformance, runVector } from '@vmexit/core';
import type { ConformanceReport, ConformanceVector, VectorResult } from '@vmexit/core';
import { createVmVectorMachine } from '../conformance-vm.js';
import { InputError } from '../errors.js';
import { addVariantOptions, variantFromOptions, type VariantOptions } from '../variant-options.js';

/**
 * `vmexit conformance FILE... [--json]`: runs paging conformance vectors (JSON Lines, the format of
 * shared/conformance/FORMAT.md) on the architectural walker of @vmexit/core.
 *
 * Every file is read and validated before any vector runs: a file that cannot be read or a line that is not
 * a valid vector is an InputError (exit 2) naming the file, the line and the field, and nothing is run.
 * Then one line per failed vector (id, where it is, each differing field with expected and observed values)
 * and last `conformance: N passed, M failed`; with --json, one JSON report instead. Exit 0 when all pass, 1
 * when any fails. A file with no vector (empty, or blank lines only) is bad input too.
 *
 * Variant flags without a backend (`--mmu shadow` alone, or with `--backend none`) are an InputError: the
 * vectors would run natively and the flag would be silently ignored.
 */
export function registerConformance(program: Command): void {
  const cmd = program
    .command('conformance')
    .description('run paging conformance vectors (JSON Lines) natively, or as guest accesses under a hypervisor variant')
    .argument('<files...>', 'vector files, one vector per line')
    .option('--json', 'print a machine-readable report instead of the failure lines and summary');
  addVariantOptions(cmd).action(async (files: string[], opts: { json?: boolean } & VariantOptions) => {
    checkVariantFlags(opts);
    const vectors: ConformanceVector[] = [];
    for (const file of files) {
      try {
        vectors.push(...loadVectorFile(file));
      } catch (e) {
        if (e instanceof VectorError) throw new InputError(e.message);
        throw e;
      }
    }
    // With variant flags, each vector runs as a guest access on a VM of that variant (vCPU 0), and must
    // give exactly the native outcome; without them, on the architectural walker.
    const underVariant = (opts.backend !== undefined && opts.backend !== 'none') || opts.config !== undefined;
    let report: ConformanceReport;
    if (underVariant) {
      const variant = await variantFromOptions(opts);
      if (variant.backend === 'none') {
        // --config chose no backend: the flags that configure one would be ignored.
        const ignored = ignoredFlags(opts);
        if (ignored.length > 0) {
          throw new InputError(`${ignored.join(', ')}: meaningless with backend 'none' (from --config ${opts.config}): the vectors run natively`);
        }
        report = runConformance(vectors);
      } else {
        const results: VectorResult[] = [];
        for (const vector of vectors) {
          const machine = await createVmVectorMachine(vector, variant);
          results.push(runVector(vector, () => machine));
        }
        const failed = results.filter((r) => !r.passed).length;
        report = { results, passed: results.length - failed, failed };
      }
    } else {
      report = runConformance(vectors);
    }
    if (opts.json === true) {
      process.stdout.write(`${JSON.stringify(reportToJson(report), null, 2)}\n`);
    } else {
      let text = '';
      for (const r of report.results) if (!r.passed) text += `${formatFailure(r)}\n`;
      process.stdout.write(`${text}${formatSummary(report)}\n`);
    }
    process.exitCode = report.failed > 0 ? 1 : 0;
  });
}

/** The variant flags given that only a hypervisor variant uses (as `--mmu shadow`, for the message). */
function ignoredFlags(opts: VariantOptions): string[] {
  const given: Array<[string, string | undefined]> = [
    ['--mmu', opts.mmu],
    ['--policy', opts.policy],
    ['--cost-model', opts.costModel],
    ['--vcpus', opts.vcpus],
    ['--memory', opts.memory],
  ];
  return given.filter(([, v]) => v !== undefined).map(([flag, v]) => `${flag} ${v}`);
}

/**
 * Without `--backend vmx|svm` (or `--config`), the vectors run natively on the walker: a variant flag such as
 * `--mmu shadow` would be ignored, so it is an error (exit 2), and with `--backend none` it is meaningless.
 */
function checkVariantFlags(opts: VariantOptions): void {
  const ignored = ignoredFlags(opts);
  if (ignored.length === 0) return;
  if (opts.backend === 'none') {
    throw new InputError(`${ignored.join(', ')}: meaningless with --backend none: the vectors run natively on the architectural walker`);
  }
  if (opts.backend === undefined && opts.config === undefined) {
    const it = ignored.length === 1 ? 'it' : 'they';
    throw new InputError(
      `${ignored.join(', ')}: needs --backend vmx|svm (or --config FILE); without a backend the vectors run natively and ${it} would be ignored`,
    );
  }
}
