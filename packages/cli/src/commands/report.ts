import * as fs from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { readResults, reportHtml } from '@vmexit/lab';
import { checkOutputTarget, writeOutputFile } from '../output-file.js';
import { InputError } from '../errors.js';

/**
 * `vmexit report DIR|results.jsonl -o report.html`: one self-contained HTML page (it works offline) with the
 * charts of a sweep's results: exits per variant by exit reason, the modelled-cycle breakdown, exits per
 * guest fault, and the spread across seeds. Written through a temporary file and a rename.
 */
export function registerReport(program: Command): void {
  program
    .command('report')
    .description("write a sweep's results as one self-contained HTML report with charts")
    .argument('<results>', 'a sweep directory, or its results.jsonl')
    .requiredOption('-o, --output <file>', 'the HTML file to write')
    .action((input: string, opts: { output: string }) => {
      checkOutputTarget('--output', opts.output, [input]);
      let file = input;
      try {
        if (fs.statSync(input).isDirectory()) file = join(input, 'results.jsonl');
      } catch (e) {
        throw new InputError(`${input}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
      }
      const results = readResults(file);
      if (results.length === 0) throw new InputError(`${file}: no results`);
      writeOutputFile('--output', opts.output, Buffer.from(reportHtml(results, `vmexit report: ${input}`)), [input]);
      process.stdout.write(`${opts.output}: ${results.length} results\n`);
    });
}
