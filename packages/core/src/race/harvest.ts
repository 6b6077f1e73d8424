import type { Backend } from '../vm/backend.js';
import type { MmuHost } from '../vm/mmu.js';
import type { MmuDecisionOf, MmuEvent, MmuEventKind } from '../exits/mmu-events.js';
import type { Vcpu } from '../machine/vcpu.js';
import { DirtyLog, GetDirtyLogOp, HOST_THREAD } from '../mmu/dirty-log.js';
import { ResetDirtyRingsOp } from '../mmu/dirty-ring.js';
import type { RaceThread } from './thread.js';

/**
 * The host side of an MMU's race scenarios (mmu-shadow race.ts, mmu-tdp race.ts): an `MmuHost` that sums the
 * counters of every vCPU (a scenario's `stats()`), takes every MMU decision by the MMU's own choice, and, for
 * an MMU that programs the hardware (TDP), hands out the backend and its per-vCPU control states.
 */
export class RaceHost implements MmuHost {
  /** The counters, summed over the vCPUs. */
  readonly counters = new Map<string, number>();
  /** Decisions a scenario takes instead of the MMU's own choice, by event kind (e.g. `unsync`: true, as KVM since 2008). */
  readonly decisions = new Map<MmuEventKind, unknown>();
  private readonly states: unknown[];

  constructor(
    readonly vcpus: readonly Vcpu[],
    readonly backend: Backend | null = null,
  ) {
    this.states = backend === null ? [] : vcpus.map((v) => backend.createState(v.id, 'tdp'));
  }

  count(_vcpuId: number, name: string, n = 1): void {
    this.counters.set(name, (this.counters.get(name) ?? 0) + n);
  }

  decide<E extends MmuEvent>(event: E, fallback: MmuDecisionOf<E>): MmuDecisionOf<E> {
    return this.decisions.has(event.kind) ? (this.decisions.get(event.kind) as MmuDecisionOf<E>) : fallback;
  }

  backendState(vcpuId: number): unknown {
    return this.states[vcpuId];
  }
}

/** What a `Harvester` needs of its scenario instance. */
export interface HarvestWorld {
  readonly log: DirtyLog;
  readonly threads: readonly RaceThread[];
  /** A broken harvester for the explorer's tests: KVM_GET_DIRTY_LOG re-protects without flushing. */
  readonly harvestWithoutFlush?: boolean;
  /** A broken harvester for the explorer's tests: KVM_GET_DIRTY_LOG flushes first, then re-protects (and flushes no more). */
  readonly harvestFlushBefore?: boolean;
  /** Copies the pages set in `bitmap` (of slot 0) to the destination; returns how many. */
  copy(bitmap: Uint32Array): number;
  /** Records a violation for each writable spte of a logged page that is not marked dirty (the guest is stopped). */
  checkWritableSptes(): void;
}

/**
 * The host's migration thread: `rounds` harvests of slot 0 (KVM_GET_DIRTY_LOG as `GetDirtyLogOp`'s steps, then a
 * copy of the reported pages to the destination), then, once every other thread is done (the guest is
 * stopped), the writable-spte check and the final harvest and copy.
 */
export class Harvester implements RaceThread {
  readonly name = 'harvest';
  private op: GetDirtyLogOp | null = null;
  private round = 0;
  private finished = false;

  constructor(
    private readonly w: HarvestWorld,
    private readonly rounds: number,
  ) {}

  get done(): boolean {
    return this.finished;
  }

  runnable(): boolean {
    if (this.round < this.rounds) return this.op === null || this.op.runnable();
    return this.w.threads.every((t) => t === this || t.done);
  }

  step(): string {
    const w = this.w;
    if (this.round < this.rounds) {
      if (this.op === null) {
        const before = w.harvestFlushBefore === true;
        this.op = new GetDirtyLogOp(w.log, 0, HOST_THREAD, w.harvestWithoutFlush === true || before);
        if (before) {
          w.log.attachedMmu.flushRemoteTlbs(HOST_THREAD);
          return 'flush remote TLBs before get_dirty_log (broken)';
        }
      }
      if (!this.op.done) return `get_dirty_log: ${this.op.step()}`;
      const n = w.copy(this.op.result);
      this.op = null;
      this.round++;
      return `copy ${n} dirty pages`;
    }
    w.checkWritableSptes();
    const op = new GetDirtyLogOp(w.log, 0, HOST_THREAD);
    while (!op.done) op.step();
    const n = w.copy(op.result);
    this.finished = true;
    return `stop: final harvest, copy ${n} pages`;
  }
}

/** The deliberately broken KVM_RESET_DIRTY_RINGS of a `RingHarvester`, for the explorer's tests (core's `MigrationMutation` extends it). */
export interface RingMutation {
  /** KVM_RESET_DIRTY_RINGS resets the harvested entries without write-protecting their pages again. */
  readonly resetWithoutProtect?: boolean;
  /** KVM_RESET_DIRTY_RINGS re-protects but does not flush the TLBs. */
  readonly resetWithoutFlush?: boolean;
}

/** What a `RingHarvester` needs of its scenario instance (a `MigrationWorld` whose `ringEntries` were set has it). */
export interface RingHarvestWorld {
  /** The VM's dirty log, with KVM_CAP_DIRTY_LOG_RING enabled (`DirtyLog.enableRing`). */
  readonly log: DirtyLog;
  /** The scenario's threads (the final harvest waits until every other one is done). */
  readonly threads: readonly RaceThread[];
  /** The scenario's broken reset, or `{}`. */
  readonly mutation: RingMutation;
  /** Copies the pages `list` (a gfn may come twice) to the destination; returns how many distinct. */
  copyGfns(list: readonly number[]): number;
  /** Records a violation for each writable spte of a logged page that is not marked dirty (the guest is stopped). */
  checkWritableSptes(): void;
}

/** The ring size of the race scenarios' dirty rings: KVM's smallest (one 4 KiB page of 16-byte entries). */
export const RACE_RING_ENTRIES = 256;

/**
 * The host's migration thread with dirty rings (KVM_CAP_DIRTY_LOG_RING), for every MMU's ring scenarios
 * (mmu-shadow race.ts, mmu-tdp race.ts), in the order QEMU's `kvm_dirty_ring_reap` and the selftest
 * (tools/testing/selftests/kvm/dirty_log_test.c) keep: harvest every vCPU's ring (user space reads the DIRTY
 * entries and flags them RESET), KVM_RESET_DIRTY_RINGS as `ResetDirtyRingsOp`'s steps (re-protect the harvested
 * pages under `mmu_lock`, for write on the TDP MMU, then flush), then copy the pages harvested. `rounds` such
 * harvests, then, once every other thread is done (the guest is stopped), the writable-spte check and the final
 * harvest (the rings, and the bitmap of slot 0 that holds the host's own writes) and copy.
 */
export class RingHarvester implements RaceThread {
  readonly name = 'harvest';
  private op: ResetDirtyRingsOp | null = null;
  private gfns: number[] = [];
  private round = 0;
  private finished = false;

  constructor(
    private readonly w: RingHarvestWorld,
    private readonly rounds: number,
  ) {}

  get done(): boolean {
    return this.finished;
  }

  runnable(): boolean {
    if (this.round < this.rounds) return this.op === null || this.op.done || this.op.runnable();
    return this.w.threads.every((t) => t === this || t.done);
  }

  step(): string {
    const w = this.w;
    const { log, mutation } = w;
    if (this.round < this.rounds) {
      if (this.op === null) {
        this.gfns = [];
        const n = log.collectRings((_slot, gfn) => this.gfns.push(gfn));
        this.op = new ResetDirtyRingsOp(log, log.rings!, HOST_THREAD, { skipProtect: mutation.resetWithoutProtect, skipFlush: mutation.resetWithoutFlush });
        return `harvest ${n} ring entries`;
      }
      if (!this.op.done) return `reset_dirty_rings: ${this.op.step()}`;
      const n = w.copyGfns(this.gfns);
      this.op = null;
      this.round++;
      return `copy ${n} harvested pages`;
    }
    w.checkWritableSptes();
    const gfns: number[] = [];
    log.collectRings((_slot, gfn) => gfns.push(gfn));
    log.resetDirtyRings();
    gfns.push(...DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0)));
    const n = w.copyGfns(gfns);
    this.finished = true;
    return `stop: final harvest of the rings and the bitmap, copy ${n} pages`;
  }
}

/**
 * The outcomes of the sequential runs of a scenario (its reference for "guest memory equal to a sequential
 * run"): for every order of its threads, a fresh instance from `create` runs, at each step, the first thread of
 * the order that can run; `digest` reads the instance's guest memory at the end. One digest per order.
 */
export function sequentialDigests<W extends { readonly threads: readonly RaceThread[] }>(create: () => W, digest: (w: W) => string): string[] {
  const n = create().threads.length;
  const out: string[] = [];
  for (const order of permutations(n)) {
    const w = create();
    for (;;) {
      const k = order.find((i) => !w.threads[i]!.done && w.threads[i]!.runnable());
      if (k === undefined) break;
      w.threads[k]!.step();
    }
    out.push(digest(w));
  }
  return out;
}

function permutations(n: number): number[][] {
  if (n === 0) return [[]];
  const out: number[][] = [];
  for (const p of permutations(n - 1)) for (let i = 0; i <= p.length; i++) out.push([...p.slice(0, i), n - 1, ...p.slice(i)]);
  return out;
}
