import * as fs from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { readReportData, reportHtml } from '@vmexit/lab';
import { checkOutputTarget, writeOutputFile } from '../output-file.js';
import { InputError } from '../errors.js';

/**
 * The largest results file a report reads: it is read whole into one string (V8's limit is 512 MiB) and
 * every result is held for the charts. A sweep of 10000 cells writes about 50 MiB.
 */
const MAX_REPORT_INPUT_BYTES = 2 ** 28;

/**
 * The results file is checked before it is read: a regular file (not /dev/zero, which was read until memory
 * ran out, nor a FIFO, which waited for a writer forever) of at most MAX_REPORT_INPUT_BYTES.
 */
function checkReportInput(file: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return; // readReportData says why it cannot read it
  }
  if (!st.isFile()) {
    throw new InputError(
      `${file}: not a regular file (${st.isDirectory() ? 'a directory' : 'a device, FIFO or socket'}); give a sweep directory, its results.jsonl or the output of vmexit migrate --json`,
    );
  }
  if (st.size > MAX_REPORT_INPUT_BYTES) throw new InputError(`${file}: ${st.size} bytes, over the ${MAX_REPORT_INPUT_BYTES} bytes (256 MiB) a report reads`);
}

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
      let file = input;
      let unreadable: unknown = null;
      try {
        if (fs.statSync(input).isDirectory()) file = join(input, 'results.jsonl');
      } catch (e) {
        unreadable = e;
      }
      // The file read is an input too, not only the argument: `report DIR -o DIR/results.jsonl` wrote the HTML
      // over the sweep's results.
      const inputs = file === input ? [input] : [input, file];
      checkOutputTarget('--output', opts.output, inputs);
      if (unreadable !== null) {
        throw new InputError(`${input}: cannot read (${(unreadable as NodeJS.ErrnoException).code ?? (unreadable as Error).message})`);
      }
      checkReportInput(file);
      const { results, migrations } = readReportData(file);
      if (results.length === 0 && migrations.length === 0) throw new InputError(`${file}: no results`);
      writeOutputFile('--output', opts.output, Buffer.from(reportHtml(results, `vmexit report: ${input}`, migrations)), inputs);
      const held = [
        ...(results.length > 0 ? [`${results.length} results`] : []),
        ...(migrations.length > 0 ? [`${migrations.length} migration${migrations.length === 1 ? '' : 's'}`] : []),
      ];
      process.stdout.write(`${opts.output}: ${held.join(', ')}\n`);
    });
}
