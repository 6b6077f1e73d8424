import { SVM_EXIT_CODE_NAMES } from '@vmexit/backend-svm';
import { VMX_EXIT_REASON_NAMES } from '@vmexit/backend-vmx';
import type { ExitTracer, MmuEvent, VmExit } from '@vmexit/core';
import { InputError } from './errors.js';

/** Which lines of a `--trace` go to the file: `--trace-filter` and `--trace-sample`. */
export interface TraceSelection {
  /**
   * Exit reasons (`EXCEPTION_NMI`, `VMEXIT_NPF`) or exit kinds (`exception`, `cr-write`, `invlpg`,
   * `nested-fault`, `mmio`) whose exits are kept, and `mmu` to keep the MMU's decision lines; null: all.
   */
  readonly filter: readonly string[] | null;
  /** Keep one line in `sample` (the 1st, the N+1st, ...) of the exits that pass the filter, and of the MMU lines (default 1: all). */
  readonly sample: number;
}

const KINDS = ['exception', 'cr-write', 'invlpg', 'nested-fault', 'mmio'];

/** The exit reasons of each backend, as its `hw.name` spells them (the SDM's basic exit reasons, the APM's exit codes). */
const REASONS: Readonly<Record<string, readonly string[]>> = { vmx: VMX_EXIT_REASON_NAMES, svm: SVM_EXIT_CODE_NAMES };

/** `names` for a message, a run of numbered names (VMEXIT_EXCP0, VMEXIT_EXCP1, ...) written as its first..last. */
function listNames(names: readonly string[]): string {
  const out: string[] = [];
  for (let i = 0; i < names.length;) {
    const m = /^(.*?)(\d+)$/.exec(names[i]!);
    let j = i + 1;
    if (m !== null) while (j < names.length && names[j] === `${m[1]}${Number(m[2]) + (j - i)}`) j++;
    out.push(j - i > 2 ? `${names[i]}..${names[j - 1]}` : names.slice(i, j).join(', '));
    i = j;
  }
  return out.join(', ');
}

/**
 * `EXCEPTION_NMI,CR_ACCESS,mmu` -> its names, checked: the exit reasons of `backend` as the manuals spell them
 * (those of either backend for `none` or when not given), exit kinds, or `mmu`. An unknown name is an InputError
 * that names it and lists the valid ones.
 */
export function parseTraceFilter(text: string, backend?: string): string[] {
  const names = text
    .split(',')
    .map((x) => x.trim())
    .filter((x) => x.length > 0);
  if (names.length === 0) throw new InputError(`--trace-filter: expected exit reasons, e.g. EXCEPTION_NMI,CR_ACCESS, got '${text}'`);
  const reasons = REASONS[backend ?? ''];
  const valid = new Set(reasons ?? [...VMX_EXIT_REASON_NAMES, ...SVM_EXIT_CODE_NAMES]);
  for (const n of names) {
    if (valid.has(n) || KINDS.includes(n) || n === 'mmu') continue;
    const which =
      reasons === undefined
        ? `an exit reason (VMX: ${listNames(VMX_EXIT_REASON_NAMES)}; SVM: ${listNames(SVM_EXIT_CODE_NAMES)})`
        : `an exit reason of ${backend!.toUpperCase()} (${listNames(reasons)})`;
    throw new InputError(`--trace-filter: '${n}' is not ${which}, an exit kind (${KINDS.join(', ')}) or mmu`);
  }
  return [...new Set(names)];
}

/** `--trace-sample N`: an integer from 1 to 2^31-1. */
export function parseTraceSample(text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > 0x7fffffff)
    throw new InputError(`--trace-sample: expected an integer from 1 to 2147483647, got '${text}'`);
  return Number(text);
}

/** The first line of a selected trace, which says what was left out (`vmexit trace stats` reads it). */
export function traceSelectionLine(s: TraceSelection): string {
  return `${JSON.stringify({ type: 'trace-selection', filter: s.filter, sample: s.sample })}\n`;
}

/**
 * A tracer that passes on to `inner` only the selected exits and MMU lines; window lines always pass. The
 * selection is a pure function of the order of exits, so the same run gives the same trace. A filter name
 * that matched no exit by the end is listed by `unmatched` (a typo, or an exit the backend never takes).
 */
export class SelectingTracer implements ExitTracer {
  private readonly filter: ReadonlySet<string> | null;
  private readonly matched = new Set<string>();
  private exits = 0;
  private mmu = 0;
  readonly traceWindow?: (phase: 'start' | 'end') => void;

  constructor(
    private readonly inner: ExitTracer,
    readonly selection: TraceSelection,
  ) {
    this.filter = selection.filter === null ? null : new Set(selection.filter);
    if (inner.traceWindow !== undefined) this.traceWindow = (phase) => inner.traceWindow!(phase);
  }

  traceExit(exit: VmExit): void {
    const f = this.filter;
    if (f !== null) {
      const byReason = f.has(exit.hw.name);
      const byKind = f.has(exit.kind);
      if (!byReason && !byKind) return;
      if (byReason) this.matched.add(exit.hw.name);
      if (byKind) this.matched.add(exit.kind);
    }
    if (this.exits++ % this.selection.sample === 0) this.inner.traceExit(exit);
  }

  traceMmuEvent(ev: MmuEvent): void {
    if (this.filter !== null && !this.filter.has('mmu')) return;
    this.matched.add('mmu');
    if (this.mmu++ % this.selection.sample === 0) this.inner.traceMmuEvent(ev);
  }

  /** The filter's names that no line matched. */
  unmatched(): string[] {
    return this.selection.filter === null ? [] : this.selection.filter.filter((n) => !this.matched.has(n));
  }
}
