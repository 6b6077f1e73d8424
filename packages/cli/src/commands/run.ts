import type { Command } from 'commander';
import { hexU64, JsonLinesTracer, PAGING_MODE_NAMES, type ExitTracer, type PagingModeName } from '@vmexit/core';
import { PERSONALITIES, type GuestEventLog, type Personality } from '@vmexit/guest';
import { InputError, RunFailure } from '../errors.js';
import { OutputFile } from '../output-file.js';
import { checkWorkloadSpec, workloadInputs } from '../workload-check.js';
import { Progress, rate } from '../progress.js';
import {
  SelectingTracer,
  checkFailure,
  parseTraceFilter,
  parseTraceSample,
  provenance,
  runChecked,
  runOnVariant,
  traceSelectionLine,
  variantLabel,
  type CheckReport,
  type TraceSelection,
  type VariantRunResult,
} from '@vmexit/lab';
import { addVariantOptions, variantFromOptions, variantInputFiles, type VariantOptions } from '../variant-options.js';

export { parseSize } from '../variant-options.js';

interface RunFlags extends VariantOptions {
  workload: string;
  mode: string;
  seed: string;
  personality?: string[];
  json?: boolean;
  trace?: string;
  traceFilter?: string;
  traceSample?: string;
  audit?: boolean;
  check?: boolean;
}

/**
 * `vmexit run --workload NAME[:k=v,...]|kbuild|FILE.vxt [--mode M] [--backend vmx|svm|none] [--mmu shadow]
 * [--policy a,b] [--config FILE] [--vcpus N] [--memory SIZE] [--seed N] [--personality P...] [--audit]
 * [--check] [--json] [--trace FILE]`: boots the guest OS model on the variant and runs the workload; prints a
 * summary table (or one RunResult document with --json). A progress bar goes to stderr when it is a
 * terminal and the run takes over a second. Bad input is exit 2 with a message that names it; a --check
 * divergence or an --audit violation is exit 1.
 */
export function registerRun(program: Command): void {
  const cmd = program
    .command('run')
    .description('boot the guest OS model on a variant and run a workload; print its counters')
    .requiredOption(
      '--workload <spec>',
      'NAME[:k=v,...] (demand-fault, fork-cow, exec-storm, mprotect-storm, pt-recycle, scan, random-ws, zipf), kbuild, or FILE.vxt',
    )
    .option('--mode <mode>', `paging mode: ${PAGING_MODE_NAMES.join(', ')}`, 'long4')
    .option('--seed <n>', 'seed of every random choice (scheduler, workload)', '1')
    .option('--personality <names...>', `guest personalities: ${PERSONALITIES.join(', ')}`)
    .option('--audit', "check the MMU's invariants after every exit; the first violation stops the run")
    .option('--check', 'also run natively and compare what the guest observed (faults, SIGSEGVs, final memory)')
    .option('--json', 'print one RunResult document (schema vmexit.run/1)')
    .option(
      '--trace <file>',
      'write every exit, MMU decision and guest-visible fault as JSON Lines, as the run goes (window lines mark what the counters cover)',
    )
    .option(
      '--trace-filter <reasons>',
      'trace only these exits: reasons (EXCEPTION_NMI,CR_ACCESS) or kinds (exception, cr-write, ...); add mmu for MMU decisions',
    )
    .option('--trace-sample <n>', 'trace 1 in N of the exits (and of the MMU decisions) that pass the filter');
  addVariantOptions(cmd).action(async (flags: RunFlags) => {
    const opts = checkFlags(flags);
    const variant = await variantFromOptions(flags);
    // Everything is checked before the trace file is opened: bad input leaves no file and the old one as it was.
    checkWorkloadSpec(flags.workload, '--workload');
    const selection = traceSelection(flags, variant.backend);
    const progress = new Progress();
    const started = provenance(variant);
    const inputs = [...workloadInputs(flags.workload), ...variantInputFiles(flags)];
    const traceFile = flags.trace === undefined ? null : new TraceFile(flags.trace, inputs);
    let tracer: ExitTracer | undefined = traceFile === null ? undefined : new JsonLinesTracer(traceFile.write);
    let selecting: SelectingTracer | null = null;
    if (traceFile !== null && selection !== null) {
      traceFile.write(traceSelectionLine(selection));
      tracer = selecting = new SelectingTracer(tracer!, selection);
    }
    const runOpts = { ...opts, variant, audit: flags.audit === true, tracer, onProgress: (n: number, total: number | null) => progress.update(n, total) };
    let result: VariantRunResult;
    let events: GuestEventLog;
    let check: CheckReport | null = null;
    try {
      if (flags.check === true) {
        const c = await runChecked(runOpts);
        result = c.run.result;
        events = c.run.outcome.events;
        check = c.check;
      } else {
        const r = await runOnVariant(runOpts);
        result = r.result;
        events = r.outcome.events;
      }
    } catch (e) {
      if (e instanceof InputError)
        traceFile?.discard(); // bad input: no trace of a run that should not have started
      else traceFile?.abort(e); // a run that failed: the trace up to the failure, and why it stops there
      if (e instanceof Error && (e as { code?: string }).code === 'E_MMU_AUDIT') throw new RunFailure(`--audit: ${e.message}`);
      throw e;
    } finally {
      progress.clear();
    }
    traceFile?.finish(events);
    for (const name of selecting?.unmatched() ?? []) process.stderr.write(`vmexit: --trace-filter: ${name} matched nothing in this run\n`);
    const doc = check === null ? { ...result, provenance: started } : { ...result, check, provenance: started };
    process.stdout.write(flags.json === true ? `${JSON.stringify(doc, null, 2)}\n` : summary(result, check));
    const segv = flags.json === true ? null : traceSigsegvWarning(result);
    if (segv !== null) process.stderr.write(segv);
    if (check !== null && !check.ok) throw checkFailure(check);
    // dirty-log-test with harvest=...: a page whose contents changed since a harvest but that the next one did
    // not report is a lost dirty page (KVM's dirty_log_test fails on it).
    const lost = result.dirtyLog?.lost ?? 0;
    if (lost > 0)
      throw new RunFailure(`dirty-log-test: ${lost} dirty pages lost (changed since a harvest, not reported by the next; harvest=${result.dirtyLog!.mode})`);
  });
}

/** `--trace-filter` / `--trace-sample`, checked (they need `--trace`); null when neither is given. */
function traceSelection(f: RunFlags, backend: string): TraceSelection | null {
  if (f.traceFilter === undefined && f.traceSample === undefined) return null;
  const which = f.traceFilter !== undefined ? '--trace-filter' : '--trace-sample';
  if (f.trace === undefined) throw new InputError(`${which}: selects what --trace FILE writes; give --trace too`);
  return {
    filter: f.traceFilter === undefined ? null : parseTraceFilter(f.traceFilter, backend),
    sample: f.traceSample === undefined ? 1 : parseTraceSample(f.traceSample),
  };
}

function checkFlags(f: RunFlags): { workload: string; mode: PagingModeName; seed: number; personalities: Personality[] } {
  if (!(PAGING_MODE_NAMES as readonly string[]).includes(f.mode))
    throw new InputError(`--mode: unknown paging mode '${f.mode}' (expected ${PAGING_MODE_NAMES.join(', ')})`);
  const seed = Number(f.seed);
  if (!/^\d+$/.test(f.seed) || seed > 0xffffffff) throw new InputError(`--seed: expected an integer from 0 to 4294967295, got '${f.seed}'`);
  const personalities = (f.personality ?? []).flatMap((p) => p.split(',')).filter((p) => p.length > 0);
  for (const p of personalities) {
    if (!(PERSONALITIES as readonly string[]).includes(p))
      throw new InputError(`--personality: unknown personality '${p}' (expected ${PERSONALITIES.join(', ')})`);
  }
  return { workload: f.workload, mode: f.mode as PagingModeName, seed, personalities: personalities as Personality[] };
}

/**
 * The `--trace` file, written as the run goes: each line (exit, MMU decision, window marker) is appended to
 * a chunk that is written with one write when it reaches 64 KiB, so memory stays bounded on long runs. The
 * lines go to `FILE.partial-<pid>` beside FILE (OutputFile: FILE must be a regular file or new, and not an
 * input of the run) and replace FILE only at the end:
 *
 * - a run that completes: the guest-visible faults follow the exits (they come from the guest's own log);
 * - a run that fails (an --audit violation, a policy that throws, a panic): every line up to the failure, then
 *   one `{"type":"aborted"}` line that says why, left in the partial file (named on stderr); the old FILE is
 *   untouched, as for bad input, since the command failed;
 * - bad input: no file, and the old FILE untouched;
 * - a run stopped from outside (SIGINT, a kill, running out of memory), where no code of ours runs: every
 *   write of a chunk also writes an `{"type":"interrupted"}` line after it, which the next chunk overwrites,
 *   so the partial file always ends with a record that says it was cut short. The old FILE is untouched and
 *   the partial file stays beside it. (A SIGINT handler cannot help: the run is synchronous, and a handler
 *   would only make Ctrl-C wait for the end of the run.)
 */
class TraceFile {
  private static readonly CHUNK = 64 * 1024;
  static readonly INTERRUPTED = `${JSON.stringify({
    type: 'interrupted',
    reason: 'the run was stopped here from outside (SIGINT, a kill, or out of memory): the trace is cut short, its counters windows incomplete',
  })}\n`;
  private readonly out: OutputFile;
  private chunk: string[] = [];
  private size = 0;
  /** Bytes of lines written (the interrupted line after them is not counted). */
  private position = 0;

  constructor(
    readonly file: string,
    inputs: readonly string[],
  ) {
    this.out = OutputFile.open('--trace', file, inputs);
    this.out.write(TraceFile.INTERRUPTED, 0);
  }

  /** Appends one line (with its newline). Hot: called for every traced exit. */
  readonly write = (line: string): void => {
    this.chunk.push(line);
    this.size += line.length;
    if (this.size >= TraceFile.CHUNK) this.flush(true);
  };

  private flush(marked: boolean): void {
    if (this.chunk.length === 0 && marked) return;
    const text = this.chunk.join('');
    this.chunk = [];
    this.size = 0;
    try {
      this.out.write(marked ? text + TraceFile.INTERRUPTED : text, this.position);
    } catch (e) {
      throw new RunFailure(e instanceof Error ? e.message : String(e));
    }
    this.position += Buffer.byteLength(text);
  }

  /** A run that completed: the guest-visible faults in the order the guest received them, then FILE. */
  finish(events: GuestEventLog): void {
    for (const e of events) {
      this.write(
        `${JSON.stringify({ type: 'page-fault', seq: e.seq, vcpu: e.vcpu, pid: e.pid, address: hexU64(e.address), errorCode: e.errorCode, kind: e.kind })}\n`,
      );
    }
    this.close();
  }

  /** A run that failed: what was traced up to the failure, and the failure, in the partial file (FILE untouched). */
  abort(error: unknown): void {
    this.write(`${JSON.stringify({ type: 'aborted', error: error instanceof Error ? error.message : String(error) })}\n`);
    this.settle();
    this.out.keepPartial();
    process.stderr.write(`vmexit: --trace: the run failed; ${this.file} keeps its old contents, and ${this.out.partial} holds the trace up to the failure\n`);
  }

  /** Bad input: no trace at all, the old file untouched. */
  discard(): void {
    this.chunk = [];
    this.size = 0;
    this.out.discard();
  }

  private close(): void {
    this.settle();
    this.out.commit();
  }

  /** The last lines written and the interrupted record cut off: the partial file as it is to stay (or discarded on error). */
  private settle(): void {
    try {
      this.flush(false);
      this.out.truncate(this.position);
    } catch (e) {
      this.out.discard();
      throw e;
    }
  }
}

function num(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** The summary table `vmexit run` prints (without --json): one `name  value` row per line. */
export function summary(r: VariantRunResult, check: CheckReport | null = null): string {
  const g = r.guest;
  const t = r.counters.total;
  const exitRows: [string, string][] = [];
  if (r.variant.backend !== 'none') {
    const byReason = Object.entries(t)
      .filter(([k, n]) => k.startsWith('exits.') && !k.startsWith('exits.kind.') && n > 0)
      .sort(([, a], [, b]) => b - a)
      .map(([k, n]) => `${k.slice(6)} ${num(n)}`)
      .join(', ');
    const exits = t.exits ?? 0;
    exitRows.push(
      ['vmexits', `${num(exits)}${byReason.length > 0 ? ` (${byReason})` : ''}`],
      ['exits/guest fault', g.faults.total > 0 ? (exits / g.faults.total).toFixed(3) : '-'],
      [
        'MMU',
        `${num(t.pf_fixed ?? 0)} faults fixed, ${num(t.pf_guest ?? 0)} injected, ${num(t.insn_emulation ?? 0)} emulated, ${num(t.mmu_pte_write ?? 0)} pte writes, ${num(t.mmu_shadow_zapped ?? 0)} pages zapped`,
      ],
      ['modelled cycles', `${num(r.cycles.cycles)} (${r.cycles.profile})`],
    );
    const policies = ((r.variant.policies as readonly (string | { use: string })[] | undefined) ?? []).map((p) => (typeof p === 'string' ? p : p.use));
    if (policies.length > 0) exitRows.push(['policies', policiesRow(policies, r.policyCounters ?? [], t)]);
  }
  const kinds = Object.entries(g.faults)
    .filter(([k, n]) => k !== 'total' && n > 0)
    .map(([k, n]) => `${k} ${num(n)}`)
    .join(', ');
  const rows: [string, string][] = [
    ['workload', `${r.workload.input} (${r.workload.kind})`],
    [
      'variant',
      `${variantLabel(r.variant)}, mode ${r.variant.mode}, ${r.variant.vcpus} vCPU${r.variant.vcpus === 1 ? '' : 's'}, ${r.variant.memory / 2 ** 20} MiB, seed ${r.seed}` +
        (r.variant.personalities.length > 0 ? `, ${r.variant.personalities.join(' ')}` : ''),
    ],
    ['accesses', num(g.accesses)],
    ['processes', num(g.processes)],
    ['guest faults', `${num(g.faults.total)}${kinds.length > 0 ? ` (${kinds})` : ''}`],
    ['SIGSEGVs', num(g.sigsegv)],
    ...exitRows,
    ['TLB misses', num(t.tlb_misses ?? 0)],
    ['TLB flushes', `${num(t.tlb_flush ?? 0)} full, ${num(t.invlpg ?? 0)} INVLPG, ${num(g.tlb.shootdowns)} shootdowns`],
    [
      'page tables',
      `${num(sum(g.pageTables.allocated))} allocated, ${num(sum(g.pageTables.freed))} freed, ${num(sum(g.pageTables.reusedAsData))} reused as data`,
    ],
    ['wall time', `${r.wallSeconds.toFixed(3)} s`],
    ['accesses/s', rate(r.accessesPerSecond)],
    ['memory digest', r.memoryDigest],
  ];
  const d = r.dirtyLog;
  if (d !== undefined)
    rows.push([
      'dirty log',
      `${d.mode}: ${num(d.harvests)} harvests, ${num(d.checked)} page checks, ${num(d.lost)} lost, ${num(d.falseDirty)} false dirty` +
        (d.ring === undefined ? '' : `; rings of ${num(d.ring.entries)}, ${num(d.ring.harvested)} entries harvested, ${num(d.ring.fullExits)} full exits`),
    ]);
  if (check !== null) {
    const allowed =
      check.allowedTotal === 0
        ? ''
        : `; ${num(check.allowedTotal)} differences the SDM allows (${[...new Set(check.allowed.map((d) => `${d.id}: ${d.rule}`))].join(', ')})`;
    rows.push([
      'check',
      check.ok
        ? `same as native (${num(check.compared.faults)} guest faults, ${num(check.compared.sigsegv)} SIGSEGVs, final memory)${allowed}`
        : `DIVERGED: ${check.divergence}`,
    ]);
  }
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}\n`).join('');
}

export { variantLabel };

/** One composed policy's declared counters, as a result carries them. */
type PolicyCounters = NonNullable<VariantRunResult['policyCounters']>[number];

/**
 * The `policies` row: each composed policy in the variant's order (as the variant names it: a built-in name, a
 * package or a path) with its nonzero counters under their --json names: the ones it declares
 * (`FaultPolicy.counters`, which the result carries as `policyCounters`, in the same order), `-` when it declares
 * none or all of them are zero.
 */
function policiesRow(policies: readonly string[], declared: readonly PolicyCounters[], t: Readonly<Record<string, number>>): string {
  return policies
    .map((p, i) => {
      const shown = (declared[i]?.counters ?? []).filter((k) => (t[k] ?? 0) > 0).map((k) => `${k} ${num(t[k]!)}`);
      return `${p}: ${shown.length > 0 ? shown.join(', ') : '-'}`;
    })
    .join('; ');
}

/**
 * A warning for a trace replay that took SIGSEGVs, or null (a synthetic workload, some of which segfault on
 * purpose, or a clean replay). A recording is of a run that completed, so no access of it segfaulted: a record
 * that ends in SIGSEGV on replay (`guest.trace.sigsegvRecords`; `guest.sigsegv` counts the signals) is an
 * access the guest model's address space does not allow, where the model disagrees with the recording.
 */
export function traceSigsegvWarning(r: Pick<VariantRunResult, 'workload' | 'guest'>): string | null {
  if (r.workload.kind !== 'trace') return null;
  const records = r.guest.trace?.sigsegvRecords ?? 0;
  if (records === 0 && r.guest.sigsegv === 0) return null;
  return (
    `vmexit: warning: the replay of trace '${r.workload.input}' took SIGSEGVs (guest.trace.sigsegvRecords ${num(records)}, ` +
    `guest.sigsegv ${num(r.guest.sigsegv)}): the recorded run completed without them, so the guest model disagrees with ` +
    `the recording (an access outside what the model mapped for the process) and those accesses were not replayed as recorded\n`
  );
}

/**
 * `traceSigsegvWarning` once per workload of `results` (the runs of one workload on several variants: what the
 * guest model does is the same on every variant, so the first run's counts stand for all).
 */
export function traceSigsegvWarnings(results: readonly Pick<VariantRunResult, 'workload' | 'guest'>[]): string {
  const seen = new Set<string>();
  let out = '';
  for (const r of results) {
    if (seen.has(r.workload.input)) continue;
    seen.add(r.workload.input);
    out += traceSigsegvWarning(r) ?? '';
  }
  return out;
}

function sum(o: Record<string, number>): number {
  return Object.values(o).reduce((a, b) => a + b, 0);
}
