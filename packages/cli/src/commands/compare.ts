import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { PAGING_MODE_NAMES, type PagingModeName, type Variant } from '@vmexit/core';
import { PERSONALITIES, type Personality } from '@vmexit/guest';
import { InputError } from '../errors.js';
import { checkFailure, runChecked, runOnVariant, type CheckReport, type VariantRunResult } from '../run-variant.js';
import { variantFromOptions, type VariantOptions } from '../variant-options.js';
import { variantLabel } from './run.js';
import { checkVariantFlags, parseSize } from '../variant-options.js';
import { checkWorkloadSpec } from '../workload-check.js';

interface CompareFlags {
  workload: string;
  variant: string[];
  mode: string;
  seed: string;
  vcpus?: string;
  memory?: string;
  costModel?: string;
  personality?: string[];
  check?: boolean;
  audit?: boolean;
  json?: boolean;
}

/**
 * One row of the comparison: a label and how to read its value from a result; `null` where the metric does
 * not exist for that variant (an exit reason of the other backend, or any exit reason of a native run).
 */
interface Metric {
  readonly label: string;
  readonly value: (r: VariantRunResult) => number | null;
  readonly digits?: number;
}
/**
 * `vmexit compare --workload W --variant A --variant B ...`: runs every variant on the same workload, mode and
 * seed, and prints a side-by-side table of what they cost: exits by reason, exits per guest fault, emulated
 * writes, shadow pages zapped, TLB flushes, modelled cycles, each also as a ratio to the first variant.
 * A variant is a config file (`.json`/`.mjs`) or a flag string such as "vmx shadow pte-update,bypass-guest-pf"
 * (backend, MMU, then comma-separated policies; "native" for no hypervisor).
 */
export function registerCompare(program: Command): void {
  program
    .command('compare')
    .description('run several variants on the same workload and seed; print their exits and costs side by side')
    .requiredOption('--workload <spec>', 'NAME[:k=v,...], kbuild, or FILE.vxt')
    .requiredOption(
      '--variant <variant>',
      'a config file or a flag string such as "vmx shadow pte-update" (repeat for each variant; the first is the baseline)',
      collect,
      [],
    )
    .option('--mode <mode>', `paging mode: ${PAGING_MODE_NAMES.join(', ')}`, 'long4')
    .option('--seed <n>', 'seed of every random choice', '1')
    .option('--vcpus <n>', 'number of vCPUs (overrides the variants)')
    .option('--memory <size>', 'guest RAM, e.g. 256M (overrides the variants)')
    .option('--cost-model <name|file>', 'the cost model for modelled cycles, a name or a JSON file (overrides the variants)')
    .option('--personality <names...>', `guest personalities: ${PERSONALITIES.join(', ')}`)
    .option('--check', 'also compare each variant with a native run of what the guest observed')
    .option('--audit', "check the MMU's invariants after every exit")
    .option('--json', 'print the results as one JSON document')
    .action(async (flags: CompareFlags) => {
      checkVariantFlags({ vcpus: flags.vcpus, memory: flags.memory, costModel: flags.costModel });
      checkWorkloadSpec(flags.workload, '--workload');
      const doc = await runComparison({
        workload: flags.workload,
        variants: flags.variant,
        mode: checkMode(flags.mode),
        seed: checkSeed(flags.seed),
        overrides: { vcpus: flags.vcpus, memory: flags.memory === undefined ? undefined : String(parseSize(flags.memory)), costModel: flags.costModel },
        personalities: checkPersonalities(flags.personality),
        check: flags.check === true,
        audit: flags.audit === true,
      });
      process.stdout.write(flags.json === true ? `${JSON.stringify(doc, null, 2)}\n` : formatComparison(doc));
      const bad = doc.results.find((r) => r.check !== undefined && !r.check.ok);
      if (bad?.check !== undefined) throw checkFailure(bad.check);
    });
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

export interface ComparisonOptions {
  readonly workload: string;
  /** Variant specs: config files or flag strings. */
  readonly variants: readonly string[];
  readonly mode: PagingModeName;
  readonly seed: number;
  readonly overrides?: Pick<VariantOptions, 'vcpus' | 'memory' | 'costModel'>;
  readonly personalities?: readonly Personality[];
  readonly check?: boolean;
  readonly audit?: boolean;
  /** Called before each variant runs (progress for long comparisons). */
  readonly onVariant?: (label: string, index: number, count: number) => void;
}

/** One metric of the table: its value for each variant (null: not applicable) and the ratio to the first variant's. */
export interface ComparisonRow {
  readonly metric: string;
  readonly values: readonly (number | null)[];
  /** value / first variant's value; 1 when both are 0; null when either is not applicable or only the first is 0. */
  readonly ratios: readonly (number | null)[];
}

export interface ComparisonDocument {
  readonly schema: 'vmexit.compare/1';
  readonly workload: string;
  readonly mode: PagingModeName;
  readonly seed: number;
  readonly results: readonly (VariantRunResult & { label: string; spec: string; check?: CheckReport })[];
  /** The side-by-side table as data: the rows `formatComparison` prints, columns in `results` order. */
  readonly table: readonly ComparisonRow[];
}

/** Runs every variant on the same workload and seed (one after the other, each on a fresh VM). */
export async function runComparison(o: ComparisonOptions): Promise<ComparisonDocument> {
  if (o.variants.length === 0) throw new InputError('--variant: give at least one variant');
  const variants: { spec: string; variant: Variant }[] = [];
  for (const spec of o.variants) variants.push({ spec, variant: await parseVariantSpec(spec, o.overrides ?? {}) });
  const results: (VariantRunResult & { label: string; spec: string; check?: CheckReport })[] = [];
  for (const [i, { spec, variant }] of variants.entries()) {
    o.onVariant?.(spec, i, variants.length);
    const runOpts = { workload: o.workload, mode: o.mode, seed: o.seed, personalities: o.personalities ?? [], variant, audit: o.audit };
    if (o.check === true && variant.backend !== 'none') {
      const c = await runChecked(runOpts);
      results.push({ ...c.run.result, label: comparisonLabel(c.run.result.variant), spec, check: c.check });
    } else {
      const r = await runOnVariant(runOpts);
      results.push({ ...r.result, label: comparisonLabel(r.result.variant), spec });
    }
  }
  return { schema: 'vmexit.compare/1', workload: o.workload, mode: o.mode, seed: o.seed, results, table: comparisonTable(results) };
}

/**
 * A variant spec: a config file (`.json`/`.mjs`, which must exist), or words: a backend (`vmx`, `svm`,
 * `none`/`native`), an MMU (`shadow`, `tdp`) and comma-separated policies, in any order.
 */
export async function parseVariantSpec(spec: string, overrides: Pick<VariantOptions, 'vcpus' | 'memory' | 'costModel'>): Promise<Variant> {
  const trimmed = spec.trim();
  if (/\.(json|mjs|js)$/.test(trimmed)) {
    if (!existsSync(trimmed)) throw new InputError(`--variant ${spec}: no such config file`);
    return variantFromOptions({ config: trimmed, ...overrides });
  }
  const opts: VariantOptions = { ...overrides };
  const policies: string[] = [];
  // Each of backend and MMU is named at most once: "vmx svm shadow" or "native vmx" is a mistake, not a
  // choice of the last word.
  const backends: string[] = [];
  const mmus: string[] = [];
  for (const word of trimmed.split(/\s+/).filter((w) => w.length > 0)) {
    if (word === 'vmx' || word === 'svm' || word === 'none' || word === 'native') backends.push(word);
    else if (word === 'shadow' || word === 'tdp') mmus.push(word);
    else policies.push(...word.split(',').filter((p) => p.length > 0));
  }
  if (backends.length > 1) throw new InputError(`--variant "${spec}": names ${backends.length} backends (${backends.join(', ')}); a variant has one`);
  if (mmus.length > 1) throw new InputError(`--variant "${spec}": names ${mmus.length} MMUs (${mmus.join(', ')}); a variant has one`);
  if (backends.length === 0) throw new InputError(`--variant "${spec}": name a backend (vmx, svm, or native)`);
  opts.backend = backends[0] === 'native' ? 'none' : backends[0];
  if (mmus.length === 1) {
    if (opts.backend === 'none') throw new InputError(`--variant "${spec}": ${mmus[0]} is an MMU of a hypervisor; a native variant has none`);
    opts.mmu = mmus[0];
  }
  if (opts.backend === 'none' && policies.length > 0)
    throw new InputError(`--variant "${spec}": policies (${policies.join(', ')}) need a hypervisor; a native variant has none`);
  if (policies.length > 0) opts.policy = policies.join(',');
  try {
    return await variantFromOptions(opts);
  } catch (e) {
    if (e instanceof InputError) throw new InputError(`--variant "${spec}": ${e.message}`);
    throw e;
  }
}

/**
 * A variant's column label: backend, MMU and policies, each policy with the options it was given
 * (`write-flood(count=per-vcpu,threshold=4)`), so that two variants that differ only in options differ.
 */
export function comparisonLabel(v: VariantRunResult['variant']): string {
  if (v.backend === 'none') return 'native';
  const pol = (v.policies as (string | { use: string; options?: Record<string, unknown> })[] | undefined) ?? [];
  const names = pol.map((p) => {
    if (typeof p === 'string') return p;
    const opts = Object.entries(p.options ?? {});
    return opts.length === 0 ? p.use : `${p.use}(${opts.map(([k, x]) => `${k}=${typeof x === 'string' ? x : JSON.stringify(x)}`).join(',')})`;
  });
  return variantLabel({ ...v, policies: [] }) + (names.length > 0 ? ` ${names.join(',')}` : '');
}

/**
 * The exit kinds (core's VmExit kinds, counted as `exits.kind.<kind>` on either backend) under the names a
 * reader comparing VMX with SVM looks for: the same event has a different exit reason on each (a #PF is VMX
 * EXCEPTION_NMI and SVM VMEXIT_EXCP14; a CR3 load CR_ACCESS and VMEXIT_CR3_WRITE).
 */
export const EXIT_KIND_NAMES: Readonly<Record<string, string>> = {
  exception: '#PF (intercepted exception)',
  'cr-write': 'CR / EFER write',
  invlpg: 'INVLPG',
  'nested-fault': 'EPT / NPT fault',
  mmio: 'MMIO',
};

const exitsOf = (r: VariantRunResult): number => r.counters.total.exits ?? 0;
const counter =
  (name: string) =>
  (r: VariantRunResult): number =>
    r.counters.total[name] ?? 0;
const backendOf = (r: VariantRunResult): string => String(r.variant.backend);

/**
 * The rows of the table, in order: guest faults, vmexits by common exit kind, then by the backend's own exit
 * reason (`vmx EXCEPTION_NMI`, `svm VMEXIT_EXCP14`: not applicable, '-', to a variant of the other backend or
 * a native run), exits per guest fault, and the MMU's and the cost model's figures.
 */
export function comparisonMetrics(results: readonly VariantRunResult[]): Metric[] {
  const kinds = new Set<string>();
  const reasons = new Map<string, Set<string>>(); // backend (in the order of the variants) -> reasons seen on it
  for (const r of results) {
    for (const [k, n] of Object.entries(r.counters.total)) {
      if (!k.startsWith('exits.') || n <= 0) continue;
      if (k.startsWith('exits.kind.')) kinds.add(k.slice('exits.kind.'.length));
      else {
        let set = reasons.get(backendOf(r));
        if (set === undefined) reasons.set(backendOf(r), (set = new Set()));
        set.add(k.slice('exits.'.length));
      }
    }
  }
  const kindOrder = Object.keys(EXIT_KIND_NAMES);
  const byReason: Metric[] = [];
  for (const backend of reasons.keys()) {
    for (const reason of [...reasons.get(backend)!].sort()) {
      byReason.push({ label: `  ${backend} ${reason}`, value: (r) => (backendOf(r) === backend ? counter(`exits.${reason}`)(r) : null) });
    }
  }
  return [
    { label: 'guest faults', value: (r) => r.guest.faults.total },
    { label: 'vmexits', value: exitsOf },
    ...[...kinds]
      .sort((a, b) => kindOrder.indexOf(a) - kindOrder.indexOf(b))
      .map((k) => ({ label: `  ${EXIT_KIND_NAMES[k] ?? k}`, value: counter(`exits.kind.${k}`) })),
    ...(byReason.length > 0 ? [{ label: 'vmexits by exit reason', value: () => null }, ...byReason] : []),
    { label: 'exits per guest fault', value: (r) => (r.guest.faults.total > 0 ? exitsOf(r) / r.guest.faults.total : 0), digits: 3 },
    { label: 'faults fixed (pf_fixed)', value: counter('pf_fixed') },
    { label: 'faults injected (pf_guest)', value: counter('pf_guest') },
    { label: 'emulated writes', value: counter('insn_emulation') },
    { label: 'shadow pages zapped', value: counter('mmu_shadow_zapped') },
    { label: 'TLB flushes', value: (r) => (r.counters.total.tlb_flush ?? 0) + (r.counters.total.remote_tlb_flush ?? 0) },
    { label: 'modelled cycles', value: (r) => r.cycles.cycles },
  ];
}

/** The table as data: every metric's values and ratios to the first variant (see ComparisonRow). */
export function comparisonTable(results: readonly VariantRunResult[]): ComparisonRow[] {
  return comparisonMetrics(results).map((m) => {
    const values = results.map((r) => m.value(r));
    const base = values[0] ?? null;
    const ratios = values.map((v) => (v === null || base === null ? null : base === 0 ? (v === 0 ? 1 : null) : v / base));
    return { metric: m.label.trim(), values, ratios };
  });
}

/**
 * The side-by-side table: each value, and its ratio to the first variant's ('-' where a metric does not
 * apply to a variant; no ratio where the first variant's value is 0 or does not apply). A section row
 * ('vmexits by exit reason') has no values.
 */
export function formatComparison(doc: Pick<ComparisonDocument, 'workload' | 'mode' | 'seed' | 'results'>): string {
  const metrics = comparisonMetrics(doc.results);
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
  const tail = checks.length > 0 ? `check: ${checks.map((r) => `${r.label} ${r.check!.ok ? 'same as native' : 'DIVERGED'}`).join('; ')}\n` : '';
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
