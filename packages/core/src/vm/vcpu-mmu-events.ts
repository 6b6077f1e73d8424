import type { MonoTypeOperatorFunction, Observable } from 'rxjs';
import { mmuEventKindsOf, type MmuDecisionOf, type MmuEvent, type MmuEventKind } from '../exits/mmu-events.js';
import { isNoopObservers, type ExitRecorder, type ExitTracer } from '../exits/observers.js';
import { MmuEventChannel, mmuEventPipeline } from '../exits/pipeline.js';
import { tapStep } from '../exits/step.js';
import { keyCache, type StatCell, type Stats } from '../exits/stats.js';

const mmuEventKey = keyCache('mmu_events.');

/**
 * One vCPU's MMU decisions (what `MmuHost.decide` and `MmuHost.decideByDefault` reach). Every event the MMU
 * builds takes one route: the vCPU's `mmuEvents` pipeline, which is the policies' operators, then the MMU's
 * own default for an event nobody decided (decidedBy 'mmu'), then the observer (counts `mmu_events.<kind>`,
 * traces, records). The one shortcut is taken before an event exists: when no policy of this vCPU may decide
 * the kind (none takes MMU events, or all name their kinds and none names this one) and no tracer or recorder
 * is bound, nothing could see the event, so `decideByDefault` counts it and the MMU keeps its default
 * without building it (the hot path allocates nothing). A subscriber to `output` (the VM's `mmuEvents$`) sees
 * events too: while one is there, no kind is decided by default, so an MMU that asks (`decidesByDefault`, once
 * per kind at that kind's first event) before any event builds every event from then on.
 */
export class VcpuMmuEvents {
  private readonly channel: MmuEventChannel;
  /** The kinds the policies may decide, or null for all kinds. */
  private readonly decidable: ReadonlySet<MmuEventKind> | null;
  /** No tracer or recorder is bound (only the counters would see an event). */
  private readonly quiet: boolean;
  private readonly counts: MmuEventCounts;

  constructor(stats: Stats, policies: readonly MonoTypeOperatorFunction<MmuEvent>[], tracer: ExitTracer, recorder: ExitRecorder) {
    const quiet = isNoopObservers(tracer, recorder);
    const counts = new MmuEventCounts(stats);
    const observe: MonoTypeOperatorFunction<MmuEvent> = tapStep((ev: MmuEvent) => {
      counts.count(ev.kind);
      if (quiet) return;
      tracer.traceMmuEvent(ev);
      recorder.recordMmuEvent(ev);
    });
    let channel: MmuEventChannel | null = null;
    channel = new MmuEventChannel(mmuEventPipeline(() => channel!, policies, [observe]));
    this.channel = channel;
    this.decidable = mmuEventKindsOf(policies);
    this.quiet = quiet;
    this.counts = counts;
    // Whether each kind is decided by default, fixed for the VM's life: one switch per event on the hot path.
    const byDefault = (kind: MmuEventKind): boolean => quiet && this.decidable !== null && !this.decidable.has(kind);
    counts.setByDefault(byDefault('pte-write'), byDefault('flood'), byDefault('prefetch'), byDefault('unsync'), byDefault('tracked-write'));
  }

  /** The decided events (hot): what comes out of the pipeline, each once. */
  get output(): Observable<MmuEvent> {
    return this.channel.output;
  }

  /** Completes `output` (unless the pipeline failed) and refuses later events (the VM's `dispose`). */
  close(why: string): void {
    this.channel.close(why);
  }

  /** The event through the pipeline; `fallback` (the MMU's choice) when no policy decides. */
  decide<E extends MmuEvent>(event: E, fallback: MmuDecisionOf<E>): MmuDecisionOf<E> {
    return this.channel.decide(event, fallback);
  }

  /**
   * Whether every event of `kind` is decided by default from now on (counts nothing): fixed at composition,
   * unless something subscribes to `output` when the MMU asks.
   */
  decidesByDefault(kind: MmuEventKind): boolean {
    return this.counts.isByDefault(kind) && !this.channel.observed;
  }

  /**
   * Nothing outside the pipeline can keep an event now: no tracer or recorder, and no subscriber to `output`
   * (policies see an event only while it is in the pipeline). The MMU may then refill one event per kind.
   */
  get reusable(): boolean {
    return this.quiet && !this.channel.observed;
  }

  /** True (and the event counted) when nothing could see an event of `kind`: see the class comment. */
  decideByDefault(kind: MmuEventKind): boolean {
    return !this.channel.observed && this.counts.countIfByDefault(kind);
  }
}

/** The `mmu_events.<kind>` counters of one vCPU, each cell taken at its first event (no lookup after that). */
class MmuEventCounts {
  private pteWrite: StatCell | null = null;
  private flood: StatCell | null = null;
  private prefetch: StatCell | null = null;
  private unsync: StatCell | null = null;
  private trackedWrite: StatCell | null = null;

  /** Per kind: nothing could see its events (VcpuMmuEvents.decideByDefault). */
  private pteWriteByDefault = false;
  private floodByDefault = false;
  private prefetchByDefault = false;
  private unsyncByDefault = false;
  private trackedWriteByDefault = false;

  constructor(private readonly stats: Stats) {}

  setByDefault(pteWrite: boolean, flood: boolean, prefetch: boolean, unsync: boolean, trackedWrite: boolean): void {
    this.pteWriteByDefault = pteWrite;
    this.floodByDefault = flood;
    this.prefetchByDefault = prefetch;
    this.unsyncByDefault = unsync;
    this.trackedWriteByDefault = trackedWrite;
  }

  /** Whether events of `kind` are decided by default. */
  isByDefault(kind: MmuEventKind): boolean {
    switch (kind) {
      case 'pte-write':
        return this.pteWriteByDefault;
      case 'flood':
        return this.floodByDefault;
      case 'prefetch':
        return this.prefetchByDefault;
      case 'unsync':
        return this.unsyncByDefault;
      case 'tracked-write':
        return this.trackedWriteByDefault;
      default:
        return false;
    }
  }

  /** Counts an event of `kind` and returns true when its kind is decided by default; false (nothing counted) otherwise. */
  countIfByDefault(kind: MmuEventKind): boolean {
    switch (kind) {
      case 'pte-write':
        if (!this.pteWriteByDefault) return false;
        (this.pteWrite ??= this.stats.cell(mmuEventKey(kind))).n++;
        return true;
      case 'flood':
        if (!this.floodByDefault) return false;
        (this.flood ??= this.stats.cell(mmuEventKey(kind))).n++;
        return true;
      case 'prefetch':
        if (!this.prefetchByDefault) return false;
        (this.prefetch ??= this.stats.cell(mmuEventKey(kind))).n++;
        return true;
      case 'unsync':
        if (!this.unsyncByDefault) return false;
        (this.unsync ??= this.stats.cell(mmuEventKey(kind))).n++;
        return true;
      case 'tracked-write':
        if (!this.trackedWriteByDefault) return false;
        (this.trackedWrite ??= this.stats.cell(mmuEventKey(kind))).n++;
        return true;
      default:
        return false;
    }
  }

  count(kind: MmuEventKind): void {
    switch (kind) {
      case 'pte-write':
        (this.pteWrite ??= this.stats.cell(mmuEventKey(kind))).n++;
        return;
      case 'flood':
        (this.flood ??= this.stats.cell(mmuEventKey(kind))).n++;
        return;
      case 'prefetch':
        (this.prefetch ??= this.stats.cell(mmuEventKey(kind))).n++;
        return;
      case 'unsync':
        (this.unsync ??= this.stats.cell(mmuEventKey(kind))).n++;
        return;
      case 'tracked-write':
        (this.trackedWrite ??= this.stats.cell(mmuEventKey(kind))).n++;
        return;
      default:
        this.stats.add(mmuEventKey(kind));
    }
  }
}
