import type { Command } from 'commander';
import { VectorError, formatFailure, formatSummary, loadVectorFile, reportToJson, runConformance } from '@vmexit/core';
import type { ConformanceVector } from '@vmexit/core';
import { InputError } from '../errors.js';

/**
 * `vmexit conformance FILE... [--json]`: runs paging conformance vectors (JSON Lines, the format of
 * shared/conformance/FORMAT.md) on the architectural walker of @vmexit/core.
 *
 * Every file is read and validated before any vector runs: a file that cannot be read or a line that is not
 * a valid vector is an InputError (exit 2) naming the file, the line and the field, and nothing is run.
 * Then one line per failed vector (id, where it is, each differing field with expected and observed values)
 * and last `conformance: N passed, M failed`; with --json, one JSON report instead. Exit 0 when all pass, 1
 * when any fails.
 */
export function registerConformance(program: Command): void {
  program
    .command('conformance')
    .description('run paging conformance vectors (JSON Lines) against the architectural page walker')
    .argument('<files...>', 'vector files, one vector per line')
    .option('--json', 'print a machine-readable report instead of the failure lines and summary')
    .action((files: string[], opts: { json?: boolean }) => {
      const vectors: ConformanceVector[] = [];
      for (const file of files) {
        try {
          vectors.push(...loadVectorFile(file));
        } catch (e) {
          if (e instanceof VectorError) throw new InputError(e.message);
          throw e;
        }
      }
      const report = runConformance(vectors);
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
