import { readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { Command } from 'commander';
import { PAGING_MODE_NAMES, loadVectorFile, runConformance, type ConformanceVector, type PagingModeName } from '@vmexit/core';
import { createTraceLoader } from '@vmexit/guest';
import { comparisonTable, reportHtml, type ComparisonResult } from '@vmexit/lab';
import { checkOutputTarget, writeOutputFile } from '../output-file.js';
import { checkWorkloadSpec, workloadInputs } from '../workload-check.js';
import { runVectorsOnVariant } from './conformance.js';
import { traceSigsegvWarnings } from './run.js';
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

/**
 * Two-dimensional paging (`@vmexit/mmu-tdp`: EPT on VMX, NPT on SVM), shown beside the shadow variant of the
 * same backend with the fewest modelled cycles in the comparisons above: TDP trades the exits of shadow
 * paging for longer walks on every TLB miss (up to 24 references for 4-level guest and host tables).
 */
export const TDP_VARIANTS: Readonly<Record<'vmx' | 'svm', string>> = { vmx: 'vmx tdp', svm: 'svm tdp' };

/** What SVM cannot do, shown as the refusal the composition gives. */
export const REFUSED_ON_SVM = 'svm shadow pte-update,bypass-guest-pf';

/** The directory of the conformance vectors bundled with @vmexit/core. */
export function bundledVectorDir(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve('@vmexit/core/package.json')), 'conformance');
}

/** What `vmexit main --json` prints. */
export interface MainDocument {
  readonly schema: 'vmexit.main/1';
  /** Paging conformance: natively, and as guest accesses under VMX and SVM shadow and two-dimensional paging. */
  readonly conformance: Record<string, { passed: number; failed: number }>;
  /**
   * `vmx`, `svm`, `vmx+write-flood`, `svm+write-flood`: the headline comparisons; `vmx+tdp`, `svm+tdp`: the
   * best shadow variant of each backend (fewest modelled cycles) beside two-dimensional paging.
   */
  readonly comparisons: Record<string, ComparisonDocument>;
  /** The message with which the composition refuses REFUSED_ON_SVM. */
  readonly refusedOnSvm: string;
}

export interface MainOptions {
  readonly workload: string;
  readonly mode: PagingModeName;
  readonly seed: number;
  /** Progress lines (stderr in the command). */
  readonly progress?: (line: string) => void;
}

/** The headline comparisons: [key in MainDocument.comparisons, title, variants of each backend]. */
const HEADLINE_SETS = [
  ['', '', HEADLINE_VARIANTS],
  ['+write-flood', ', with write-flood detection in every variant', WITH_FLOOD],
] as const;

/** Runs what `vmexit main` runs (deterministic but for wall time and accesses/s) and returns its document. */
export async function runMain(o: MainOptions): Promise<MainDocument> {
  const progress = o.progress ?? (() => {});
  // 1. The machine: conformance vectors.
  const dir = bundledVectorDir();
  const vectors: ConformanceVector[] = readdirSync(dir)
    .filter((f) => f.endsWith('.jsonl'))
    .sort()
    .flatMap((f) => loadVectorFile(join(dir, f)));
  const conformance: Record<string, { passed: number; failed: number }> = {};
  const native = runConformance(vectors);
  conformance.native = { passed: native.passed, failed: native.failed };
  for (const spec of ['vmx shadow', 'svm shadow', TDP_VARIANTS.vmx, TDP_VARIANTS.svm]) {
    const variant = await parseVariantSpec(spec, {});
    progress(`conformance under ${spec}...\n`);
    // a vector the machine stops (a fault loop) is that vector's failure; the others still run
    const report = await runVectorsOnVariant(vectors, variant);
    conformance[spec] = { passed: report.passed, failed: report.failed };
  }
  // 2. The headline comparisons. Every run replays one workload: a trace is read and decoded once for all.
  const loadTrace = createTraceLoader();
  const comparisons: Record<string, ComparisonDocument> = {};
  for (const [key, , sets] of HEADLINE_SETS) {
    for (const backend of ['vmx', 'svm'] as const) {
      comparisons[`${backend}${key}`] = await runComparison({
        workload: o.workload,
        variants: sets[backend],
        mode: o.mode,
        seed: o.seed,
        loadTrace,
        onVariant: (label, i, n) => progress(`[${backend} ${i + 1}/${n}] ${label} on ${o.workload}...\n`),
      });
    }
  }
  // 3. Two-dimensional paging beside the best shadow variant of the same backend (already run above).
  for (const backend of ['vmx', 'svm'] as const) {
    const shadow = HEADLINE_SETS.flatMap(([key]) => comparisons[`${backend}${key}`]!.results);
    const best = shadow.reduce((a, b) => (b.cycles.cycles < a.cycles.cycles ? b : a));
    const tdp = await runComparison({
      workload: o.workload,
      variants: [TDP_VARIANTS[backend]],
      mode: o.mode,
      seed: o.seed,
      loadTrace,
      onVariant: (label) => progress(`[${backend} tdp] ${label} on ${o.workload}...\n`),
    });
    const results: ComparisonResult[] = [best, ...tdp.results];
    comparisons[`${backend}+tdp`] = { ...tdp, results, table: comparisonTable(results) };
  }
  let refusedOnSvm: string;
  try {
    await parseVariantSpec(REFUSED_ON_SVM, {});
    refusedOnSvm = `'${REFUSED_ON_SVM}' was accepted, but SVM cannot filter page faults by error code`;
  } catch (e) {
    refusedOnSvm = e instanceof Error ? e.message : String(e);
  }
  return { schema: 'vmexit.main/1', conformance, comparisons, refusedOnSvm };
}

/**
 * The results `main --report` charts, each run once: every headline comparison's, and of each `+tdp` comparison
 * only its TDP result (its first, the best shadow variant of the backend, is a result of a headline comparison
 * already; charted twice, it made the report say 18 results for 16 runs and drew its seed point twice).
 */
export function mainReportResults(doc: Pick<MainDocument, 'comparisons'>): ComparisonResult[] {
  return Object.entries(doc.comparisons).flatMap(([key, c]) => (key.endsWith('+tdp') ? c.results.slice(1) : c.results));
}

/** The conformance part of what `vmexit main` prints. */
export function formatConformance(doc: Pick<MainDocument, 'conformance'>): string {
  const n = Object.values(doc.conformance)[0];
  let out = `paging conformance (${n === undefined ? 0 : n.passed + n.failed} vectors, SDM Vol. 3A ch. 4):\n`;
  for (const [k, c] of Object.entries(doc.conformance)) out += `  ${k.padEnd(12)} ${c.passed} passed, ${c.failed} failed\n`;
  return out;
}

/** The headline part of what `vmexit main` prints (the README shows it): each comparison table, and SVM's refusal. */
export function formatHeadline(doc: Pick<MainDocument, 'comparisons' | 'refusedOnSvm'>): string {
  let out = '';
  for (const [key, title] of HEADLINE_SETS) {
    for (const backend of ['vmx', 'svm'] as const) {
      const c = doc.comparisons[`${backend}${key}`];
      if (c === undefined) continue;
      out += `\n${backend.toUpperCase()}, shadow paging${title}:\n${formatComparison(c)}`;
    }
  }
  for (const backend of ['vmx', 'svm'] as const) {
    const c = doc.comparisons[`${backend}+tdp`];
    if (c !== undefined)
      out += `\n${backend.toUpperCase()}, the best shadow variant against two-dimensional paging (${backend === 'vmx' ? 'EPT' : 'NPT'}):\n${formatComparison(c)}`;
  }
  return `${out}\n${REFUSED_ON_SVM}: refused:\n${doc.refusedOnSvm}\n`;
}

/**
 * `vmexit main` (what `npm start` runs): first shows the machine under the numbers is right (the bundled
 * paging conformance vectors natively, and as guest accesses under VMX and SVM shadow paging), then runs the
 * headline comparison on the bundled workload (`kbuild`, a real compile) and prints it.
 */
export function registerMain(program: Command): void {
  program
    .command('main')
    .description("the headline job: paging conformance, then KVM's shadow-paging optimizations and two-dimensional paging compared on the bundled kbuild")
    .option('--workload <spec>', 'the workload of the comparison', 'kbuild')
    .option('--mode <mode>', `paging mode: ${PAGING_MODE_NAMES.join(', ')}`, 'long4')
    .option('--seed <n>', 'seed', '1')
    .option('--json', 'print one JSON document: the conformance counts and both comparisons')
    .option('--report <file>', "also write the headline comparisons' results as one self-contained HTML report")
    .action(async (flags: { workload: string; mode: string; seed: string; json?: boolean; report?: string }) => {
      if (!(PAGING_MODE_NAMES as readonly string[]).includes(flags.mode))
        throw new InputError(`--mode: unknown paging mode '${flags.mode}' (expected ${PAGING_MODE_NAMES.join(', ')})`);
      if (!/^\d+$/.test(flags.seed) || Number(flags.seed) > 0xffffffff)
        throw new InputError(`--seed: expected an integer from 0 to 4294967295, got '${flags.seed}'`);
      // the workload is checked before the conformance vectors run (they take seconds)
      checkWorkloadSpec(flags.workload, '--workload');
      // the report's target is checked before anything runs (a bad one costs nothing and leaves nothing)
      // (the workload's trace file is an input: --report naming it would replace the trace with the report)
      if (flags.report !== undefined) checkOutputTarget('--report', flags.report, workloadInputs(flags.workload));
      const doc = await runMain({
        workload: flags.workload,
        mode: flags.mode as PagingModeName,
        seed: Number(flags.seed),
        progress: (s) => process.stderr.write(s),
      });
      process.stdout.write(flags.json === true ? `${JSON.stringify(doc, null, 2)}\n` : formatConformance(doc) + formatHeadline(doc));
      if (flags.json !== true) process.stderr.write(traceSigsegvWarnings(Object.values(doc.comparisons).flatMap((c) => c.results)));
      if (flags.report !== undefined)
        writeOutputFile(
          '--report',
          flags.report,
          Buffer.from(reportHtml(mainReportResults(doc), `vmexit main: ${flags.workload}`)),
          workloadInputs(flags.workload),
        );
      const failed = Object.entries(doc.conformance).filter(([, c]) => c.failed > 0);
      if (failed.length > 0) throw new RunFailure(`paging conformance failed: ${failed.map(([k, c]) => `${k} ${c.failed}`).join(', ')}`);
    });
}
