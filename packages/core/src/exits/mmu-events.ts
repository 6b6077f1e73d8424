import { map, type MonoTypeOperatorFunction } from 'rxjs';
import { ExitError } from './errors.js';

/**
 * The MMU-internal decisions that policies may take over, carried on a vCPU's `mmuEvents` stream. The MMU
 * builds the event with `decision: null` and asks its host (`MmuHost.decide`) with its own default; a policy
 * that decides first wins. Two decisions from KVM's emulated-pte-write path (arch/x86/kvm/mmu/mmu.c
 * `kvm_mmu_pte_write` / `kvm_mmu_track_write`, kvm-mmu.md §A.6):
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
  /** How many emulated writes hit this page with no access through it in between. */
  readonly writeCount: number;
  decision: boolean | null;
}

export type MmuEvent = PteWriteEvent | FloodEvent;
export type MmuDecisionOf<E extends MmuEvent> = NonNullable<E['decision']>;

/**
 * The operator of a policy on the MMU-event stream: for each undecided event, `decide` returns a decision or
 * null (passed on).
 *
 * @example
 * const updateOnWrite = decideMmuEvents('update-on-write', (ev) => (ev.kind === 'pte-write' && !ev.misaligned ? 'update-spte' : null));
 */
export function decideMmuEvents(name: string, decide: (event: MmuEvent) => PteWriteDecision | boolean | null): MonoTypeOperatorFunction<MmuEvent> {
  return map((ev: MmuEvent) => {
    if (ev.decision !== null) return ev;
    let d: PteWriteDecision | boolean | null;
    try {
      d = decide(ev);
    } catch (e) {
      throw new ExitError('E_POLICY_FAILED', `policy '${name}' failed on MMU event ${ev.kind} #${ev.seq} of vCPU ${ev.vcpu}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    if (d === null) return ev;
    if (ev.kind === 'pte-write') {
      if (typeof d !== 'string') throw new ExitError('E_BAD_RESOLUTION', `policy '${name}' answered ${String(d)} to a pte-write event (expected zap-spte, update-spte or zap-page)`);
      ev.decision = d;
    } else {
      if (typeof d !== 'boolean') throw new ExitError('E_BAD_RESOLUTION', `policy '${name}' answered '${d}' to a flood event (expected true or false)`);
      ev.decision = d;
    }
    ev.decidedBy = name;
    return ev;
  });
}
