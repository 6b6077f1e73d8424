import type { MonoTypeOperatorFunction } from 'rxjs';
import { describeValue, expectedDecisions, isDecisionOf } from './decision-check.js';
import { ExitError } from './errors.js';
import { selfNaming } from './policy.js';
import { stepOperator } from './step.js';

/**
 * The MMU-internal decisions that policies may take over, carried on a vCPU's `mmuEvents` stream. The MMU
 * builds the event with `decision: null` and asks its host (`MmuHost.decide`) with its own default; a policy
 * that decides first wins. Five kinds, each answered in its own type (`MmuAnswerOf`): `pte-write` and
 * `flood` come from KVM's emulated-pte-write path (arch/x86/kvm/mmu/mmu.c `kvm_mmu_track_write`,
 * `detect_write_flooding`, `detect_write_misaligned`; `kvm_mmu_pte_write` before Linux 6.1), `prefetch`
 * from the shadow fault (paging_tmpl.h `FNAME(pte_prefetch)`), `unsync` from `mmu_try_to_unsync_pages`,
 * `tracked-write` from the 2007 user-write hint (`mmu_unshadow`).
 */

/**
 * What to do with the shadow pte of an emulated guest pte write:
 * `zap-spte` (clear it, today's KVM), `update-spte` (install the new value, KVM 2007 commit 0028425f647b),
 * `zap-page` (zap the whole shadow page: flooded or misaligned writes).
 */
export type PteWriteDecision = 'zap-spte' | 'update-spte' | 'zap-page';

interface MmuEventBase {
  readonly vcpu: number;
  readonly seq: number;
  decidedBy: string | null;
}

/** An emulated write of `size` bytes at `gpa` that hit a shadowed guest page table (one shadow page per event). */
export interface PteWriteEvent extends MmuEventBase {
  readonly kind: 'pte-write';
  readonly gpa: number;
  readonly size: number;
  readonly oldLo: number;
  readonly oldHi: number;
  readonly newLo: number;
  readonly newHi: number;
  /** The level of the shadow page the written gpte belongs to (1 = PT). */
  readonly level: number;
  /** The write does not cover whole gptes (KVM `detect_write_misaligned`). */
  readonly misaligned: boolean;
  decision: PteWriteDecision | null;
}

/** Whether a shadow page that keeps being written counts as flooded, and is zapped (KVM `detect_write_flooding`). */
export interface FloodEvent extends MmuEventBase {
  readonly kind: 'flood';
  readonly gfn: number;
  /** The level of the shadow page (1 = PT). Today's KVM never floods level 1 (those pages go unsync). */
  readonly level: number;
  /** How many emulated writes hit this page with no access through it in between (KVM `sp->write_flooding_count`). */
  readonly writeCount: number;
  /**
   * The 2007 detector (KVM 86a5ba025d0a): consecutive emulated writes of this vCPU to this gfn
   * (`vcpu->last_pt_write_count`), reset by a page fault that was not a page-table write.
   */
  readonly vcpuWriteCount: number;
  decision: boolean | null;
}

/**
 * A leaf fault was fixed in a level-1 shadow page: whether to also map the neighbours of the faulting spte in
 * its aligned group of 8 (KVM `FNAME(pte_prefetch)`, PTE_PREFETCH_NUM): in a page of a guest page table, the
 * other present and accessed gptes; in a direct page (under a guest large page), the neighbouring gfns
 * (`__direct_pte_prefetch`).
 */
export interface PrefetchEvent extends MmuEventBase {
  readonly kind: 'prefetch';
  /** The linear address of the fault, and the gfn of the guest page table (of a direct page: the first gfn it maps). */
  readonly address: number;
  readonly gfn: number;
  /** The page is direct: it maps part of a guest large page, not a guest page table. */
  readonly direct: boolean;
  decision: boolean | null;
}

/**
 * The MMU wants a writable spte for `gfn`, a guest page table shadowed only by level-1 pages: whether those
 * pages may go out of sync (writable, synced at the guest's next TLB flush: KVM 4731d4c7a077, `kvm_unsync_page`)
 * instead of staying write-protected (every write then emulated).
 */
export interface UnsyncEvent extends MmuEventBase {
  readonly kind: 'unsync';
  readonly gfn: number;
  decision: boolean | null;
}

/**
 * A write fault hit a write-protected guest page table (before it is emulated): whether to unprotect the
 * gfn instead (zap all its shadow pages and map the page writable). KVM 2007 did that for user-mode writes,
 * "Treat user-mode faults as a hint that a page is no longer a page table".
 */
export interface TrackedWriteEvent extends MmuEventBase {
  readonly kind: 'tracked-write';
  readonly gfn: number;
  readonly address: number;
  /** The fault's error code (PFERR_USER set for a user-mode write). */
  readonly errorCode: number;
  decision: boolean | null;
}

/** A decision point of the MMU that policies may take (the `mmuEvents` stream): a guest pte write, a flood, a prefetch, an unsync, a tracked write. */
/** A decision point of the MMU that policies may take (the `mmuEvents` stream): a guest pte write, a flood, a prefetch, an unsync, a tracked write. */
export type MmuEvent = PteWriteEvent | FloodEvent | PrefetchEvent | UnsyncEvent | TrackedWriteEvent;
/** The kinds of MMU event: `pte-write`, `flood`, `prefetch`, `unsync`, `tracked-write`. */
export type MmuEventKind = MmuEvent['kind'];
/** The event of kind `K`. */
export type MmuEventOf<K extends MmuEventKind> = Extract<MmuEvent, { readonly kind: K }>;
/** The answer to an event of kind `K`: a `PteWriteDecision` for `pte-write`, a boolean for the others. */
export type MmuAnswerOf<K extends MmuEventKind> = NonNullable<MmuEventOf<K>['decision']>;
/** The answer to event `E` (the same, by the event's type). */
export type MmuDecisionOf<E extends MmuEvent> = NonNullable<E['decision']>;

/** A policy's MMU-event operator that names the only event kinds it may decide (see `decideMmuEvents`). */
export type MmuEventOperator = MonoTypeOperatorFunction<MmuEvent> & { readonly mmuEventKinds?: readonly MmuEventKind[] };

/** A decider that sees every kind must be able to pass (answer null): no single answer type fits every kind. */
type PassesSome<R> = null extends R ? unknown : never;

/**
 * The operator of a policy on the MMU-event stream: for each undecided event, `decide` returns a decision or
 * null (passed on).
 *
 * With `kinds`, only events of those kinds are offered to `decide`, and its answer is type-checked against
 * them (`true` to a `pte-write` event does not compile); the others pass on untouched, and the operator says
 * so (`mmuEventKinds`): a VM whose policies all say so sends the other kinds past the stream, as if every
 * policy had passed them on (no event object, no operator hops). Without `kinds`, `decide` sees every kind
 * and must pass on those it does not answer. Either way, an answer of the wrong type for the event's kind
 * fails the pipeline at run time (E_BAD_RESOLUTION), for callers the compiler does not check.
 *
 * @example
 * const updateOnWrite = decideMmuEvents('update-on-write', (ev) => (!ev.misaligned ? 'update-spte' : null), ['pte-write']);
 */
export function decideMmuEvents<K extends MmuEventKind>(
  name: string,
  decide: (event: MmuEventOf<K>) => MmuAnswerOf<K> | null,
  kinds: readonly K[],
): MmuEventOperator;
export function decideMmuEvents<R extends MmuAnswerOf<MmuEventKind> | null>(name: string, decide: (event: MmuEvent) => R & PassesSome<R>): MmuEventOperator;
export function decideMmuEvents(
  name: string,
  decide: (event: MmuEvent) => MmuAnswerOf<MmuEventKind> | null,
  kinds?: readonly MmuEventKind[],
): MmuEventOperator {
  const only = kinds === undefined ? null : new Set<string>(kinds);
  // One kind (what the built-in policies name): a comparison per event instead of a Set lookup.
  const one = kinds !== undefined && only!.size === 1 ? kinds[0]! : null;
  const op: MmuEventOperator = stepOperator((ev: MmuEvent) => {
    if (ev.decision !== null) return ev;
    if (one !== null ? ev.kind !== one : only !== null && !only.has(ev.kind)) return ev;
    let d: MmuAnswerOf<MmuEventKind> | null;
    try {
      d = decide(ev);
    } catch (e) {
      throw new ExitError(
        'E_POLICY_FAILED',
        `policy '${name}' failed on MMU event ${ev.kind} #${ev.seq} of vCPU ${ev.vcpu}: ${e instanceof Error ? e.message : String(e)}`,
        { cause: e },
      );
    }
    if (d === null) return ev;
    if (!isDecisionOf(ev.kind, d))
      throw new ExitError('E_BAD_RESOLUTION', `policy '${name}' answered ${describeValue(d)} to a ${ev.kind} event (expected ${expectedDecisions(ev.kind)})`);
    (ev as { decision: unknown }).decision = d;
    ev.decidedBy = name;
    return ev;
  });
  if (kinds !== undefined) Object.defineProperty(op, 'mmuEventKinds', { value: Object.freeze([...kinds]), enumerable: true });
  return selfNaming(name, op);
}

/**
 * The MMU-event kinds that some operator of `ops` may decide, or null when one of them does not say
 * (then every kind may be decided).
 */
export function mmuEventKindsOf(ops: readonly MonoTypeOperatorFunction<MmuEvent>[]): ReadonlySet<MmuEventKind> | null {
  const out = new Set<MmuEventKind>();
  for (const op of ops) {
    const k = (op as MmuEventOperator).mmuEventKinds;
    if (k === undefined) return null;
    for (const x of k) out.add(x);
  }
  return out;
}
