import type { Command } from 'commander';
import { PAGING_MODE_NAMES, type PagingModeName, type Variant } from '@vmexit/core';
import { PERSONALITIES, type Personality } from '@vmexit/guest';
import {
  checkCounterPatterns,
  checkFailure,
  compareVariants,
  comparisonMetrics,
  unmatchedCounters,
  parseVariantSpec as labParseVariantSpec,
  type ComparisonDocument,
  type ComparisonOptions as LabComparisonOptions,
  type LabelledVariant,
} from '@vmexit/lab';
import { InputError } from '../errors.js';
import { CountBar } from '../progress.js';
import { traceSigsegvWarnings } from './run.js';
import { parseJobs } from './sweep.js';
import { checkVariantFlags, parseSize, type VariantOptions } from '../variant-options.js';
import { checkWorkloadSpec } from '../workload-check.js';

export {
  EXIT_KIND_NAMES,
  comparisonLabel,
  comparisonMetrics,
  comparisonTable,
  type ComparisonDocument,
  type ComparisonResult,
  type ComparisonRow,
  type Metric,
} from '@vmexit/lab';

interface CompareFlags {
  workload: string;
  variant: (string | LabelledVariant)[];
  label: (string | LabelledVariant)[];
  jobs: string;
  counter: string[];
  mode: string;
  seed: string;
  vcpus?: string;
  memory?: string;
  hostPages?: string;
  costModel?: string;
  personality?: string[];
  check?: boolean;
  audit?: boolean;
  json?: boolean;
}

/**
 * `vmexit compare --workload W --variant A --variant B ...`: runs every variant on the same workload, mode and
 * seed, and prints a side-by-side table of what they cost: exits by reason, exits per guest fault, emulated
 * writes, shadow pages zapped, TLB flushes, modelled cycles, each also as a ratio to the first variant.
 * A variant is a config file (`.json`/`.mjs`) or a flag string such as "vmx shadow pte-update,bypass-guest-pf"
 * (backend, MMU, then comma-separated policies; "native" for no hypervisor). `--label NAME=VARIANT` gives a
 * variant (a config file, typically) a column name of its own; `--variant` and `--label` keep their order on
 * the command line. `--jobs N` runs N variants at once on worker threads (the results are the same);
 * `--counter GLOB` adds rows for counters the standard rows leave out (a policy's own). A progress bar goes
 * to stderr when it is a terminal.
 */
export function registerCompare(program: Command): void {
  // --variant and --label fill one list, in command-line order: the columns.
  const columns: (string | LabelledVariant)[] = [];
  program
    .command('compare')
    .description("run several variants on the same workload and seed; print their exits, each exit reason's share and cycles, side by side")
    .requiredOption('--workload <spec>', 'NAME[:k=v,...], kbuild, or FILE.vxt')
    .option(
      '--variant <variant>',
      'a config file or a flag string such as "vmx shadow pte-update" (repeat for each variant; the first is the baseline)',
      (v: string) => (columns.push(v), columns),
    )
    .option(
      '--label <name=variant>',
      'a variant under a column name of your choosing, e.g. fast=flood.json (in order with --variant)',
      (v: string) => (columns.push(parseLabel(v)), columns),
    )
    .option('--jobs <n>', 'variants run at once, each on a worker thread (same results as one at a time)', '1')
    .option('--counter <glob>', "also show these counters, e.g. 'write_flood.*' (repeat for several)", collect, [])
    .option('--mode <mode>', `paging mode: ${PAGING_MODE_NAMES.join(', ')}`, 'long4')
    .option('--seed <n>', 'seed of every random choice', '1')
    .option('--vcpus <n>', 'number of vCPUs (overrides the variants)')
    .option('--memory <size>', 'guest RAM, e.g. 256M (overrides the variants)')
    .option('--host-pages <size>', 'host page size backing guest RAM, 4k, 2m or 1g (every variant: --mmu tdp only; or the spec word host-pages=2m)')
    .option('--cost-model <name|file>', 'the cost model for modelled cycles, a name or a JSON file (overrides the variants)')
    .option('--personality <names...>', `guest personalities: ${PERSONALITIES.join(', ')}`)
    .option('--check', 'also compare each variant with a native run of what the guest observed')
    .option('--audit', "check the MMU's invariants after every exit")
    .option('--json', 'print the results as one JSON document')
    .action(async (flags: CompareFlags) => {
      checkVariantFlags({ vcpus: flags.vcpus, memory: flags.memory, costModel: flags.costModel, hostPages: flags.hostPages });
      checkWorkloadSpec(flags.workload, '--workload');
      if (columns.length === 0) throw new InputError("required option '--variant <variant>' not specified (or --label NAME=VARIANT)");
      const jobs = parseJobs(flags.jobs);
      const counters = checkCounterPatterns(flags.counter);
      const bar = new CountBar('variants');
      let doc: ComparisonDocument;
      try {
        doc = await runComparison({
          workload: flags.workload,
          variants: [...columns],
          jobs,
          counters,
          exitReasons: true,
          onProgress: (p) => bar.update(p),
          mode: checkMode(flags.mode),
          seed: checkSeed(flags.seed),
          overrides: {
            vcpus: flags.vcpus,
            memory: flags.memory === undefined ? undefined : String(parseSize(flags.memory)),
            costModel: flags.costModel,
            hostPages: flags.hostPages,
          },
          personalities: checkPersonalities(flags.personality),
          check: flags.check === true,
          audit: flags.audit === true,
        });
      } finally {
        bar.clear();
      }
      process.stdout.write(flags.json === true ? `${JSON.stringify(doc, null, 2)}\n` : formatComparison(doc));
      if (flags.json !== true) process.stderr.write(traceSigsegvWarnings(doc.results));
      const bad = doc.results.find((r) => r.check !== undefined && !r.check.ok);
      if (bad?.check !== undefined) throw checkFailure(bad.check);
    });
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** `fast=flood.json` -> { label: 'fast', spec: 'flood.json' }. */
export function parseLabel(text: string): LabelledVariant {
  const m = /^([^=]+)=(.+)$/.exec(text);
  if (m === null || m[1]!.trim() === '' || m[2]!.trim() === '') throw new InputError(`--label: expected NAME=VARIANT (e.g. fast=flood.json), got '${text}'`);
  return { label: m[1]!.trim(), spec: m[2]!.trim() };
}

/** The options of a comparison: lab's, with the CLI's defaults for where modules come from. */
export type ComparisonOptions = LabComparisonOptions;

/** Runs every variant on the same workload and seed (one after the other, each on a fresh VM): @vmexit/lab's compareVariants. */
export function runComparison(o: ComparisonOptions): Promise<ComparisonDocument> {
  return compareVariants(o);
}

/** A variant spec (a config file or words such as "vmx shadow pte-update"), composed and checked: @vmexit/lab's parseVariantSpec. */
export function parseVariantSpec(spec: string, overrides: Pick<VariantOptions, 'vcpus' | 'memory' | 'costModel' | 'hostPages'>): Promise<Variant> {
  return labParseVariantSpec(spec, overrides);
}

/**
 * The side-by-side table: each value, and its ratio to the first variant's ('-' where a metric does not
 * apply to a variant; no ratio where the first variant's value does not apply, or is 0 and this one's is not;
 * `x1.00` where both are 0, as the JSON table's ratio 1; none for a share). A section row ('vmexits by exit
 * reason') has no values.
 */
export function formatComparison(doc: Pick<ComparisonDocument, 'workload' | 'mode' | 'seed' | 'results' | 'counters'>): string {
  const metrics = comparisonMetrics(doc.results, { counters: doc.counters });
  const head = ['', ...doc.results.map((r) => r.label)];
  const rows: string[][] = [head];
  for (const m of metrics) {
    const values = doc.results.map((r) => m.value(r));
    if (values.every((v) => v === null)) {
      rows.push([m.label, ...values.map(() => '')]);
      continue;
    }
    const base = values[0]!;
    rows.push([
      m.label,
      ...values.map((v, i) => {
        if (v === null) return '-';
        if (m.share === true) return `${(v * 100).toFixed(1)}%`;
        const text = m.digits !== undefined ? v.toFixed(m.digits) : Math.round(v).toLocaleString('en-US');
        if (i === 0 || base === null || (base === 0 && v !== 0)) return text;
        return `${text} (x${base === 0 ? '1.00' : (v / base).toFixed(2)})`;
      }),
    ]);
  }
  const widths = head.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const line = (r: string[]): string =>
    r
      .map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!)))
      .join('  ')
      .trimEnd();
  const checks = doc.results.filter((r) => r.check !== undefined);
  const unmatched = unmatchedCounters(doc.results, doc.counters ?? []).map((p) => `--counter '${p}': no counter of these runs matches\n`);
  const tail =
    unmatched.join('') + (checks.length > 0 ? `check: ${checks.map((r) => `${r.label} ${r.check!.ok ? 'same as native' : 'DIVERGED'}`).join('; ')}\n` : '');
  return `workload ${doc.workload}, mode ${doc.mode}, seed ${doc.seed}; ratios are to the first variant\n${rows.map(line).join('\n')}\n${tail}`;
}

function checkMode(mode: string): PagingModeName {
  if (!(PAGING_MODE_NAMES as readonly string[]).includes(mode))
    throw new InputError(`--mode: unknown paging mode '${mode}' (expected ${PAGING_MODE_NAMES.join(', ')})`);
  return mode as PagingModeName;
}

function checkSeed(seed: string): number {
  if (!/^\d+$/.test(seed) || Number(seed) > 0xffffffff) throw new InputError(`--seed: expected an integer from 0 to 4294967295, got '${seed}'`);
  return Number(seed);
}

function checkPersonalities(list: string[] | undefined): Personality[] {
  const out = (list ?? []).flatMap((p) => p.split(',')).filter((p) => p.length > 0);
  for (const p of out)
    if (!(PERSONALITIES as readonly string[]).includes(p))
      throw new InputError(`--personality: unknown personality '${p}' (expected ${PERSONALITIES.join(', ')})`);
  return out as Personality[];
}
