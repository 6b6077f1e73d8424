import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { SVM_EXIT_CODE_NAMES } from '@vmexit/backend-svm';
import { VMX_EXIT_REASON_NAMES } from '@vmexit/backend-vmx';
import { builtInCostProfile, DEFAULT_COST_PROFILE, VM_EXIT_KINDS, type CostProfile } from '@vmexit/core';
import { z } from 'zod';
import { InputError } from './errors.js';
import { array, count, describeValue, inputProblem, object, oneOf, string } from './input-schema.js';
import { readCostModel, unknownCostModel } from './variant-spec.js';
import { spread, type Spread } from './summary.js';
import type { TraceSelection } from './trace-select.js';

/** One exit reason's row of `vmexit trace stats`: what `perf kvm stat report` shows per reason, with modelled cycles. */
export interface ReasonStats {
  /** The backend's exit reason (`EXCEPTION_NMI`, `VMEXIT_EXCP14`). */
  readonly reason: string;
  readonly count: number;
  /** count / all exits counted, 0..1. */
  readonly share: number;
  /** Modelled cycles per exit (see traceStats): min, mean, max, and the total. */
  readonly cycles: Spread & { readonly total: number };
}

/** Statistics of an exit trace (`vmexit trace stats`): exits by reason with their modelled cycles, overall and per vCPU. */
export interface TraceStats {
  readonly profile: string;
  /** True when the trace had a counting window and only the exits inside it were counted (as `vmexit run` counts). */
  readonly windowed: boolean;
  readonly exits: number;
  /** What `--trace-filter` / `--trace-sample` left out of the trace (null: every exit is in it). Counts are of the lines kept. */
  readonly selection: TraceSelection | null;
  readonly reasons: readonly ReasonStats[];
  /** vCPU -> its rows. */
  readonly perVcpu: Readonly<Record<number, readonly ReasonStats[]>>;
}

/** What `traceStats` counts: one vCPU or all, inside the counting window or all, priced by which cost model. */
export interface TraceStatsOptions {
  /** Count only this vCPU's exits. */
  readonly vcpu?: number;
  /** The cost model that prices each exit (default the default profile). */
  readonly costModel?: string;
  /** Count the exits outside the window too (the boot). */
  readonly all?: boolean;
}

/**
 * The modelled cycles of one traced exit: the VM exit + entry round trip of its kind, plus the hypervisor's
 * handler figure for what it did: `emulate` is an emulated instruction (`insn_emulation`), `inject` a fault
 * reflected into the guest (`pf_guest`), and `fixed` a fault the MMU fixed before resuming, an intercepted #PF
 * (shadow paging) or an EPT violation / NPT fault (two-dimensional paging): `pf_fixed`, which both MMUs count, as
 * KVM's kvm_mmu_do_page_fault does. MMIO's extra round trip to user space is added for `mmio` exits. These are the
 * figures by which the run's modelled cycles price the same counters.
 */
export function exitCycles(p: CostProfile, kind: string, resolution: string | undefined, fixed: boolean): number {
  let c = p.exitRoundTrip[kind]?.cycles ?? 0;
  if (resolution === 'emulate') c += p.handler.insn_emulation?.cycles ?? 0;
  else if (resolution === 'inject') c += p.handler.pf_guest?.cycles ?? 0;
  else if (fixed) c += p.handler.pf_fixed?.cycles ?? 0;
  if (kind === 'mmio') c += p.userspaceExit.cycles;
  return c;
}

/**
 * Whether an exit fixed a fault, as far as its kind and resolution tell (a trace file records no counters): a #PF
 * or second-stage fault that resumed, except a PML-full exit (reason 62, a nested-fault exit that fixes nothing).
 * A fault the MMU found already fixed (`pf_spurious`) also resumes, and is priced as fixed too (the same handler ran).
 */
export function resumedFaultFixed(kind: string, resolution: string | undefined, pmlFull: boolean): boolean {
  return (kind === 'exception' || kind === 'nested-fault') && resolution === 'resume' && !pmlFull;
}

/** The record types a `vmexit run --trace` file holds (core's JsonLinesTracer, and the CLI's TraceFile and trace selection). */
const RECORD_TYPES = ['exit', 'mmu', 'window', 'page-fault', 'trace-selection', 'aborted', 'interrupted'] as const;
const EXIT_REASONS = new Set<string>([...VMX_EXIT_REASON_NAMES, ...SVM_EXIT_CODE_NAMES]);

/** What `traceStats` reads of each record: every line an object with a known type; of exits, window and selection lines their fields. */
const recordSchema = object({ type: oneOf(RECORD_TYPES, `a trace record type (${RECORD_TYPES.join(', ')})`) });
const exitSchema = object({
  vcpu: count,
  reason: string.refine((r) => EXIT_REASONS.has(r), { error: 'an exit reason of VMX or SVM (EXCEPTION_NMI, VMEXIT_EXCP14, ...)' }),
  kind: oneOf(VM_EXIT_KINDS as unknown as readonly [string, ...string[]], `an exit kind (${VM_EXIT_KINDS.join(', ')})`),
  resolution: z
    .union([z.null(), object({ kind: oneOf(['resume', 'inject', 'emulate', 'userspace'], 'a resolution kind (resume, inject, emulate, userspace)') })], {
      error: 'null or an object with a kind',
    })
    .optional(),
});
const windowSchema = object({ phase: oneOf(['start', 'end']) });
const selectionSchema = object({
  filter: z.union([z.null(), array(string)], { error: 'null or an array of exit reasons' }),
  sample: z.number({ error: 'a positive integer' }).int({ error: 'a positive integer' }).min(1, { error: 'a positive integer' }),
});
const RECORD_FIELDS: Partial<Record<(typeof RECORD_TYPES)[number], z.ZodType>> = { exit: exitSchema, window: windowSchema, 'trace-selection': selectionSchema };

const TYPES = new Set<string>(RECORD_TYPES);
const KINDS = new Set<string>(VM_EXIT_KINDS);
const RESOLUTIONS = new Set(['resume', 'inject', 'emulate', 'userspace']);

/**
 * What the schemas below accept, checked by hand for the lines a trace is made of (its exits, and the lines
 * whose fields are not read): most lines of a long trace never reach zod, which only words the problem.
 */
function plainlyValid(x: Record<string, unknown>): boolean {
  const type = x['type'];
  if (typeof type !== 'string' || !TYPES.has(type)) return false;
  if (type !== 'exit') return RECORD_FIELDS[type as (typeof RECORD_TYPES)[number]] === undefined;
  const vcpu = x['vcpu'];
  const r = x['resolution'];
  return (
    Number.isInteger(vcpu) &&
    (vcpu as number) >= 0 &&
    typeof x['reason'] === 'string' &&
    EXIT_REASONS.has(x['reason']) &&
    typeof x['kind'] === 'string' &&
    KINDS.has(x['kind']) &&
    (r === undefined || r === null || (typeof r === 'object' && !Array.isArray(r) && RESOLUTIONS.has((r as { kind?: unknown }).kind as string)))
  );
}

/** The first problem of a trace line's record (`exit record: vcpu must be ...`), or null when `traceStats` can read it. */
function checkRecord(x: unknown): string | null {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) return `a trace record must be an object with a type, not ${describeValue(x)}`;
  if (plainlyValid(x as Record<string, unknown>)) return null;
  const problem = inputProblem(recordSchema, x);
  if (problem !== null) return problem;
  const fields = RECORD_FIELDS[(x as { type: (typeof RECORD_TYPES)[number] }).type];
  const p = fields === undefined ? null : inputProblem(fields, x);
  return p === null ? null : `${(x as { type: string }).type} record: ${p}`;
}

/** The file could not be read: a directory (opened, then EISDIR on the first read), or another error code. */
function readError(file: string, code: string): InputError {
  return new InputError(code === 'EISDIR' ? `${file}: is a directory, not a trace file` : `${file}: cannot read (${code})`);
}

/**
 * The `perf kvm stat report` view of a `--trace` file: per exit reason the count, share and modelled cycles
 * (min, mean, max), over all vCPUs and per vCPU. When the trace has window lines (every `vmexit run --trace`
 * has), only the exits between them are counted, which are the exits the run's counters hold.
 */
export async function traceStats(file: string, o: TraceStatsOptions = {}): Promise<TraceStats> {
  // a name, or a JSON file as everywhere else a cost model is given
  const name = o.costModel ?? DEFAULT_COST_PROFILE;
  const profile: CostProfile | undefined = name.endsWith('.json') ? readCostModel(name, '--cost-model') : builtInCostProfile(name);
  if (profile === undefined) throw unknownCostModel(name);
  type Ex = { vcpu: number; reason: string; cycles: number; inWindow: boolean };
  const exits: Ex[] = [];
  let inWindow = false;
  let sawWindow = false;
  let selection: TraceSelection | null = null;
  let n = 0;
  const stream = createReadStream(file, 'utf8');
  const opened = new Promise<void>((resolve, reject) => {
    stream.once('open', () => resolve());
    stream.once('error', (e: NodeJS.ErrnoException) => reject(readError(file, e.code ?? e.message)));
  });
  await opened;
  try {
    for await (const line of createInterface({ input: stream, crlfDelay: Infinity })) {
      n++;
      if (line.trim() === '') continue;
      let x: unknown;
      try {
        x = JSON.parse(line);
      } catch {
        throw new InputError(`${file}:${n}: not a JSON line (is this a --trace file?)`);
      }
      const problem = checkRecord(x);
      if (problem !== null) throw new InputError(`${file}:${n}: ${problem}`);
      const e = x as {
        type: (typeof RECORD_TYPES)[number];
        vcpu: number;
        reason: string;
        kind: string;
        phase: 'start' | 'end';
        resolution?: { kind: string } | null;
        filter: string[] | null;
        sample: number;
      };
      if (e.type === 'trace-selection') {
        selection = { filter: e.filter, sample: e.sample };
      } else if (e.type === 'window') {
        sawWindow = true;
        inWindow = e.phase === 'start';
      } else if (e.type === 'exit') {
        exits.push({
          vcpu: e.vcpu,
          reason: e.reason,
          cycles: exitCycles(profile, e.kind, e.resolution?.kind, resumedFaultFixed(e.kind, e.resolution?.kind, e.reason === 'PML_FULL')),
          inWindow,
        });
      }
    }
  } catch (e) {
    // the stream failing after it opened (EISDIR for a directory, EIO): the file's fault, not ours
    if (e instanceof InputError || typeof (e as NodeJS.ErrnoException).code !== 'string') throw e;
    throw readError(file, (e as NodeJS.ErrnoException).code!);
  } finally {
    stream.destroy();
  }
  const counted = exits.filter((x) => (o.all === true || !sawWindow || x.inWindow) && (o.vcpu === undefined || x.vcpu === o.vcpu));
  const rows = (xs: readonly Ex[]): ReasonStats[] => {
    const by = new Map<string, number[]>();
    for (const x of xs) {
      let a = by.get(x.reason);
      if (a === undefined) by.set(x.reason, (a = []));
      a.push(x.cycles);
    }
    return [...by.entries()]
      .map(([reason, cs]) => ({ reason, count: cs.length, share: cs.length / xs.length, cycles: { ...spread(cs), total: cs.reduce((s, c) => s + c, 0) } }))
      .sort((a, b) => b.count - a.count || (a.reason < b.reason ? -1 : 1));
  };
  const perVcpu: Record<number, ReasonStats[]> = {};
  for (const v of [...new Set(counted.map((x) => x.vcpu))].sort((a, b) => a - b)) perVcpu[v] = rows(counted.filter((x) => x.vcpu === v));
  return { profile: profile.name, windowed: sawWindow && o.all !== true, exits: counted.length, selection, reasons: rows(counted), perVcpu };
}

/** The stats as `perf kvm stat report` lays them out: reason, samples, share, and modelled cycles min/mean/max. */
export function formatTraceStats(s: TraceStats): string {
  const table = (rows: readonly ReasonStats[]): string[] => {
    const head = ['exit reason', 'samples', 'share', 'min cycles', 'mean cycles', 'max cycles', 'total cycles'];
    const body = rows.map((r) => [
      r.reason,
      String(r.count),
      `${(r.share * 100).toFixed(2)}%`,
      String(Math.round(r.cycles.min)),
      String(Math.round(r.cycles.mean)),
      String(Math.round(r.cycles.max)),
      Math.round(r.cycles.total).toLocaleString('en-US'),
    ]);
    const all = [head, ...body];
    const w = head.map((_, c) => Math.max(...all.map((r) => r[c]!.length)));
    return all.map((r) => r.map((x, c) => (c === 0 ? x.padEnd(w[c]!) : x.padStart(w[c]!))).join('  '));
  };
  const sel = s.selection;
  const selected =
    sel === null
      ? []
      : [
          `the trace holds ${sel.filter === null ? 'every exit' : `only the exits of ${sel.filter.filter((x) => x !== 'mmu').join(', ') || 'no reason'}`}` +
            (sel.sample > 1 ? `, 1 in ${sel.sample} of them: samples (about ${sel.sample} times as many exits ran)` : '') +
            (sel.filter === null ? '' : '; shares are of the exits kept'),
        ];
  const out = [
    `${s.exits} exits${s.windowed ? ' in the counting window (boot excluded, as the run counts them)' : ''}; cycles modelled under ${s.profile}`,
    ...selected,
    ...table(s.reasons),
  ];
  const vcpus = Object.keys(s.perVcpu);
  if (vcpus.length > 1) for (const v of vcpus) out.push('', `vCPU ${v}:`, ...table(s.perVcpu[Number(v)]!));
  return `${out.join('\n')}\n`;
}
