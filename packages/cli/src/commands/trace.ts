import * as fs from 'node:fs';
import type { Command } from 'commander';
import { TraceError, decodeVxt, describeVxt, encodeVxt, importLackey, readVxtFile, traceFit } from '@vmexit/guest';
import type { TraceFit, VxtDescription } from '@vmexit/guest';
import { InputError } from '../errors.js';
import { checkOutputTarget, writeOutputFile } from '../output-file.js';

/**
 * `vmexit trace import lackey LOGS... -o FILE.vxt` and `vmexit trace info FILE [--json]`.
 *
 * Bad input (a log that is not a lackey log, logs that are not one recording, a corrupt or truncated
 * `.vxt`) is an InputError (exit 2) naming the file. Inputs are size-checked before they are read (regular
 * files; a `.vxt` whose header agrees with its size and claims an honest body). The output goes through
 * OutputFile: a regular file or a new one (never a device, FIFO or symbolic link, never one of the logs),
 * written beside it and renamed over it with its mode kept, so a failed import leaves no file behind.
 */
export function registerTrace(program: Command): void {
  const trace = program.command('trace').description('import real-program traces and describe .vxt traces');
  registerTraceStats(trace);

  const imp = trace.command('import').description('convert recordings into a .vxt trace');
  imp
    .command('lackey')
    .description(
      'import the per-process logs of one recording made with valgrind --tool=lackey --trace-mem=yes ' +
        '--trace-syscalls=yes --trace-children=yes --log-file=PREFIX.%p.%n',
    )
    .argument('<logs...>', 'the lackey logs (all processes of the recording)')
    .requiredOption('-o, --output <file>', 'the .vxt file to write')
    .option('--collapse <mode>', 'how accesses collapse into records: class (fetch and data streams) or run (exact interleaving)', 'class')
    .option('--quality <n>', 'brotli quality 0..11', '9')
    .action((logs: string[], opts: { output: string; quality: string; collapse: string }) => {
      if (opts.collapse !== 'class' && opts.collapse !== 'run') {
        throw new InputError(`--collapse: expected class or run, got ${JSON.stringify(opts.collapse)}`);
      }
      const collapse = opts.collapse;
      // Decimal digits only: Number() would also take '' (0), '0x5', '1e1' and ' 5'.
      const quality = /^\d+$/.test(opts.quality) ? Number(opts.quality) : NaN;
      if (!Number.isInteger(quality) || quality < 0 || quality > 11) {
        throw new InputError(`--quality: expected an integer 0..11, got ${JSON.stringify(opts.quality)}`);
      }
      checkOutputTarget('-o', opts.output, logs);
      const t = translate(() => importLackey(logs, { collapse }));
      const bytes = encodeVxt(t, { quality });
      writeOutputFile('-o', opts.output, bytes, logs);
      const d = describeVxt(t, bytes.length);
      process.stdout.write(`${opts.output}: ${d.processes.length} processes, ${d.records} records, ${d.accesses} accesses, ${bytes.length} bytes\n`);
    });

  trace
    .command('info')
    .description('describe a .vxt trace: processes, tree, events, accesses by kind, pages, size')
    .argument('<file>', 'the .vxt trace')
    .option('--json', 'print the description as JSON')
    .action((file: string, opts: { json?: boolean }) => {
      const bytes = translate(() => readVxtFile(file));
      const t = translate(() => decodeVxt(bytes, file));
      // How it replays in each paging mode: as recorded, relocated into a 32-bit user space, or refused (relocate.ts).
      const d = { ...describeVxt(t, bytes.length), modes: traceFit(t) };
      process.stdout.write(opts.json ? `${JSON.stringify(d, null, 2)}\n` : formatDescription(file, d));
    });
}

/**
 * `vmexit trace stats TRACE.jsonl [--vcpu N] [--cost-model NAME] [--all] [--json]`: the `perf kvm stat report`
 * view of a `vmexit run --trace` file: per exit reason the count, share and modelled cycles (min, mean, max),
 * over all vCPUs and per vCPU; the exits of the counting window only (as the run counts them) unless --all.
 */
function registerTraceStats(trace: Command): void {
  trace
    .command('stats')
    .description('per exit reason: count, share and modelled cycles of the exits in a --trace file (perf kvm stat report)')
    .argument('<file>', 'a trace written by vmexit run --trace')
    .option('--vcpu <n>', "only this vCPU's exits")
    .option('--cost-model <name>', 'the cost model that prices each exit')
    .option('--all', 'count the exits outside the counting window too (the boot)')
    .option('--json', 'print the stats as JSON')
    .action(async (file: string, opts: { vcpu?: string; costModel?: string; all?: boolean; json?: boolean }) => {
      if (opts.vcpu !== undefined && !/^\d+$/.test(opts.vcpu)) throw new InputError(`--vcpu: expected a vCPU number, got '${opts.vcpu}'`);
      checkStatsInput(file);
      const { traceStats, formatTraceStats } = await import('@vmexit/lab');
      const s = await traceStats(file, { vcpu: opts.vcpu === undefined ? undefined : Number(opts.vcpu), costModel: opts.costModel, all: opts.all });
      process.stdout.write(opts.json === true ? `${JSON.stringify(s, null, 2)}\n` : formatTraceStats(s));
    });
}

/**
 * A --trace file is a regular file (or a directory, which traceStats names as such): /dev/zero was read as one
 * endless line until node died with a stack trace, and a FIFO waited for a writer.
 */
function checkStatsInput(file: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return; // traceStats says why it cannot read it
  }
  if (!st.isFile() && !st.isDirectory()) {
    throw new InputError(`${file}: not a regular file (a device, FIFO or socket); give a trace written by vmexit run --trace`);
  }
}

/** Runs `f`, turning the trace layer's errors (which name the file) into InputError (exit 2). */
function translate<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof TraceError) throw new InputError(e.message);
    throw e;
  }
}

const mib = (n: number): string => `${(n / 2 ** 20).toFixed(1)} MiB`;
const size = (n: number): string => (n >= 2 ** 40 ? `${(n / 2 ** 40).toFixed(1)} TiB` : n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : mib(n));

/** One line per paging mode: how the trace replays there (`vmexit run --mode M` with it). */
function formatFit(f: TraceFit): string {
  const where = `${f.mode.padEnd(8)} (user space ${size(f.userLimit)}): `;
  if (f.replay === 'as-recorded') return `${where}as recorded`;
  if (f.replay === 'relocated') {
    const g = f.groups ?? [];
    const regions = g.reduce((n, x) => n + x.regions.length, 0);
    const span = Math.max(0, ...g.map((x) => x.span));
    return `${where}relocated: ${g.length} process tree${g.length === 1 ? '' : 's'}, ${regions} regions moved down (page offsets, order and sizes kept; largest span ${mib(span)})`;
  }
  const worst = (f.misfits ?? []).reduce((a, m) => (m.span > a.span ? m : a), { span: 0, bytes: 0, pids: [0] as readonly number[] });
  return `${where}does not fit: the process tree of pid ${worst.pids[0]} needs ${mib(worst.span)} relocated (its mappings cover ${mib(worst.bytes)})`;
}

function formatDescription(file: string, d: VxtDescription & { modes: TraceFit[] }): string {
  const lines = [
    `${file}: ${d.source.tool} trace of: ${d.source.command}`,
    `collapse: ${d.collapse}`,
    `records: ${d.records}  accesses: ${d.accesses} (fetch ${d.accessesByKind.fetch}, load ${d.accessesByKind.load}, store ${d.accessesByKind.store}, modify ${d.accessesByKind.modify})`,
    `distinct pages: ${d.distinctPages}`,
    `events: ${Object.entries(d.events)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
    `size: ${d.size.fileBytes} bytes, ${(d.size.bytesPerAccess ?? 0).toFixed(4)} bytes/access, ${(d.size.ratio ?? 0).toFixed(1)}x smaller than the decoded columns (${d.size.columnBytes} bytes)`,
    `processes (${d.processes.length}):`,
    ...d.tree.map((t) => `  ${t}`),
    'replay by paging mode (--mode):',
    ...d.modes.map((f) => `  ${formatFit(f)}`),
  ];
  return `${lines.join('\n')}\n`;
}
