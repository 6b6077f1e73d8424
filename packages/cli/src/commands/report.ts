import * as fs from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { readReportData, reportHtml } from '@vmexit/lab';
import { checkOutputTarget, writeOutputFile } from '../output-file.js';
import { InputError } from '../errors.js';

/**
 * `vmexit report DIR|results.jsonl|migrate.json -o report.html`: one self-contained HTML page (it works offline)
 * with the charts of a sweep's results (exits per variant by exit reason, the modelled-cycle breakdown, exits
 * per guest fault, the spread across seeds) and of migrations (`vmexit migrate --json`, one document, or JSON
 * Lines of them: the dirty pages and the pages sent per round). Written through a temporary file and a rename.
 */
export function registerReport(program: Command): void {
  program
    .command('report')
    .description("write a sweep's results or migrations as one self-contained HTML report with charts")
    .argument('<results>', 'a sweep directory, its results.jsonl, or the output of vmexit migrate --json (one document, or JSON Lines of them)')
    .requiredOption('-o, --output <file>', 'the HTML file to write')
    .action((input: string, opts: { output: string }) => {
      checkOutputTarget('--output', opts.output, [input]);
      let file = input;
      try {
        if (fs.statSync(input).isDirectory()) file = join(input, 'results.jsonl');
      } catch (e) {
        throw new InputError(`${input}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
      }
      const { results, migrations } = readReportData(file);
      if (results.length === 0 && migrations.length === 0) throw new InputError(`${file}: no results`);
      writeOutputFile('--output', opts.output, Buffer.from(reportHtml(results, `vmexit report: ${input}`, migrations)), [input]);
      const held = [
        ...(results.length > 0 ? [`${results.length} results`] : []),
        ...(migrations.length > 0 ? [`${migrations.length} migration${migrations.length === 1 ? '' : 's'}`] : []),
      ];
      process.stdout.write(`${opts.output}: ${held.join(', ')}\n`);
    });
}
