import { CR0_PE, CR0_PG, CR0_WP, CR4_PAE, EFER_LME } from '../arch/constants.js';
import { hexU64 as hex } from '../arch/hex.js';
import { GuestMemory, type MemslotSpec } from '../machine/guest-memory.js';
import { Machine } from '../machine/machine.js';
import type { Vcpu } from '../machine/vcpu.js';
import { DirtyLog } from '../mmu/dirty-log.js';
import type { Backend } from '../vm/backend.js';
import type { MmuHost } from '../vm/mmu.js';
import { RaceHost, sequentialDigests, type HarvestWorld, type RingHarvestWorld, type RingMutation } from './harvest.js';
import type { MmuLock } from './lock.js';
import type { RaceInstance, RaceScenario, RaceThread } from './thread.js';
import type { GuestWrite } from './writer.js';

/** The guest of a `MigrationWorld`: its RAM, memslots and 4-level page tables. */
export interface MigrationGuest {
  /** Guest RAM bytes. */
  readonly memoryBytes: number;
  /** The memslots (default: one slot of all RAM); slot 0 is the one logged. */
  readonly memslots?: readonly MemslotSpec[];
  /** The guest's paging-structure entries written before boot: [gpa, low 32 bits] of each 8-byte entry (high halves 0). */
  readonly ptes: readonly (readonly [number, number])[];
  /** The PML4's gpa (CR3). */
  readonly pml4: number;
}

/** What a `MigrationWorld` needs of its MMU (mmu-shadow's `ShadowMmu`, mmu-tdp's `TdpMmu`). */
export interface MigrationMmu {
  /** KVM's `mmu_lock` (a reader-writer lock on the TDP MMU). */
  readonly mmuLock: MmuLock;
  /** Binds the MMU to its host. */
  init(host: MmuHost): void;
  /** Binds a vCPU (after its paging mode is set). */
  attachVcpu(vcpu: Vcpu): void;
  /** Binds the VM's dirty log. */
  attachDirtyLog(log: DirtyLog): void;
}

/**
 * The deliberate breakage of a `MigrationWorld`'s host, for the explorer's tests (an MMU's mutation extends it):
 * KVM_GET_DIRTY_LOG's (`Harvester`) and KVM_RESET_DIRTY_RINGS's (`RingMutation`, `RingHarvester`).
 */
export interface MigrationMutation extends RingMutation {
  /** KVM_GET_DIRTY_LOG re-protects but does not flush the TLBs. */
  readonly harvestWithoutFlush?: boolean;
  /** KVM_GET_DIRTY_LOG flushes the TLBs before it re-protects, not after (locking.rst, "flush tlbs due to spte updated"). */
  readonly harvestFlushBefore?: boolean;
}

/** The world options of a `MigrationWorld` besides its guest and MMU. */
export interface MigrationWorldOptions {
  /** vCPUs of the machine. */
  readonly vcpus: number;
  /** The vas vCPU 0 writes (value 0) before logging starts, so that writable sptes exist. */
  readonly premap: readonly number[];
  /** The backend whose control states the `RaceHost` hands out (an MMU that programs the hardware), or null. */
  readonly backend?: Backend | null;
  /** KVM_CAP_DIRTY_LOG_RING with this many entries per vCPU before logging starts (0: the bitmap only). */
  readonly ringEntries?: number;
  /** The sequential runs' digests (the reference of "guest memory equal to a sequential run"), or null. */
  readonly sequential: (() => string[]) | null;
}

/**
 * One instance of an MMU's pre-copy migration race scenario (mmu-shadow race.ts, mmu-tdp race.ts): a machine
 * whose vCPUs run in 4-level long mode over `guest`'s tables, the MMU on a `RaceHost`, the dirty log attached,
 * the pages of `premap` written before logging starts, then logging on for slot 0 and the first full copy to
 * the destination. After each interleaving `check` reports: the writable-spte violations recorded, the MMU's
 * audit, dirty pages lost (the destination differs from the source), and guest memory that no sequential run
 * of the threads produces. The MMU-specific parts are the subclass's: its guest writer, its audit and its
 * writable-spte check.
 */
export abstract class MigrationWorld<M extends MigrationMmu, X extends MigrationMutation = MigrationMutation>
  implements RaceInstance, HarvestWorld, RingHarvestWorld
{
  /** The machine (guest memory is the migration's source). */
  readonly machine: Machine;
  /** The MMU under test. */
  readonly mmu: M;
  /** The VM's dirty log. */
  readonly log: DirtyLog;
  /** The migration's destination memory. */
  readonly destination: GuestMemory;
  /** The scenario's host: counters summed over the vCPUs. */
  readonly host: RaceHost;
  /** The scenario's threads (set once the world exists). */
  threads: RaceThread[] = [];
  /** Violations recorded while the threads run (`checkWritableSptes`). */
  protected readonly problems: string[] = [];
  private readonly lockBase: readonly number[];
  private readonly sequential: (() => string[]) | null;
  /** The failure of `auditStopped`, if any (`check` does not report the same one twice). */
  private stoppedAudit: string | null = null;

  constructor(
    guest: MigrationGuest,
    mmu: M,
    /** The scenario's deliberately broken MMU or host (`{}`: none); set before the premap's writers exist. */
    readonly mutation: X,
    options: MigrationWorldOptions,
  ) {
    const machine = new Machine({ memoryBytes: guest.memoryBytes, vcpus: options.vcpus, memslots: guest.memslots });
    this.machine = machine;
    this.sequential = options.sequential;
    const m = machine.memory;
    for (const [pa, lo] of guest.ptes) {
      m.write32(pa, lo >>> 0);
      m.write32(pa + 4, 0);
    }
    this.mmu = mmu;
    this.host = new RaceHost(machine.vcpus, options.backend ?? null);
    mmu.init(this.host);
    for (const v of machine.vcpus) {
      v.writeEfer(EFER_LME);
      v.movToCr4(CR4_PAE);
      v.movToCr3(guest.pml4);
      v.movToCr0(CR0_PG | CR0_WP | CR0_PE);
      mmu.attachVcpu(v);
    }
    this.log = new DirtyLog(m);
    mmu.attachDirtyLog(this.log);
    // Before logging starts, the guest has written its pages (writable sptes exist), then the migration
    // starts: logging on (every spte write-protected, TLBs flushed), and the first full copy.
    for (const va of options.premap) {
      const t = this.writer(machine.vcpus[0]!, [{ va, value: 0 }]);
      while (!t.done) t.step();
    }
    const ring = options.ringEntries ?? 0;
    if (ring > 0) this.log.enableRing(options.vcpus, ring);
    this.log.enable(0);
    // The destination: the same memslots, sent every page the guest has written (the first full copy).
    this.destination = new GuestMemory(guest.memoryBytes, guest.memslots);
    for (const gfn of m.backedGfns()) m.copyPageTo(this.destination, gfn);
    this.host.counters.clear();
    this.lockBase = [mmu.mmuLock.acquired, mmu.mmuLock.contended];
  }

  /** The broken harvester of the explorer's tests (core's `Harvester` reads it). */
  get harvestWithoutFlush(): boolean {
    return this.mutation.harvestWithoutFlush === true;
  }

  /** The broken harvester that flushes before it re-protects (core's `Harvester` reads it). */
  get harvestFlushBefore(): boolean {
    return this.mutation.harvestFlushBefore === true;
  }

  /** A vCPU thread that performs `writes` (called by the constructor, for the premap, before subclass fields exist). */
  abstract writer(vcpu: Vcpu, writes: readonly GuestWrite[]): RaceThread;
  /** The MMU's full audit; throws on an inconsistency. */
  protected abstract audit(): void;
  /** Records a violation for each writable spte of a logged page that is not marked dirty. */
  abstract checkWritableSptes(): void;

  stats(): Record<string, number> {
    const out: Record<string, number> = Object.fromEntries(this.host.counters);
    out['mmu_lock.acquired'] = this.mmu.mmuLock.acquired - this.lockBase[0]!;
    out['mmu_lock.contended'] = this.mmu.mmuLock.contended - this.lockBase[1]!;
    return out;
  }

  copy(bitmap: Uint32Array): number {
    return this.copyGfns(DirtyLog.gfns(this.log.slotOf(0), bitmap));
  }

  /** Copies the pages `list` (a ring harvest may name a page twice) to the destination; returns how many distinct. */
  copyGfns(list: readonly number[]): number {
    const m = this.machine.memory;
    const gfns = [...new Set(list)];
    for (const gfn of gfns) m.copyPageTo(this.destination, gfn);
    return gfns.length;
  }

  /**
   * The MMU's audit when the guest has stopped (the harvester's last step calls `checkWritableSptes`, whose
   * implementations call this first), before the final harvest: that harvest write-protects every page marked dirty
   * (KVM_GET_DIRTY_LOG), so a writable spte the MMU must not have made (a write-protected guest page table, W
   * without MMU-writable) would be gone by `check`'s audit. A failure is recorded as `check`'s would be (once).
   */
  protected auditStopped(): void {
    const problem = this.auditProblem();
    if (problem === null) return;
    this.stoppedAudit = problem;
    this.problems.push(problem);
  }

  /** The MMU's audit as a problem line (its message's first line), or null when it passes. */
  private auditProblem(): string | null {
    try {
      this.audit();
      return null;
    } catch (e) {
      return `audit: ${(e as Error).message.split('\n')[0]}`;
    }
  }

  check(): string[] {
    const out = [...this.problems];
    const audit = this.auditProblem();
    if (audit !== null && audit !== this.stoppedAudit) out.push(audit);
    const lost = this.machine.memory.differingPages(this.destination).map(hex);
    if (lost.length > 0) out.push(`dirty page lost: the destination differs from the source in gfn ${lost.join(', ')}`);
    if (this.sequential !== null && !this.sequential().includes(this.machine.memory.digest()))
      out.push('guest memory differs from every sequential run of the threads');
    return out;
  }
}

/** A race scenario over a `MigrationWorld`: its name, its description, and the threads it runs in a world. */
export interface MigrationScenarioSpec<W> {
  /** The scenario's name (`vmexit explore --scenario`). */
  readonly name: string;
  /** What the threads do. */
  readonly description: string;
  /** The scenario's threads in the world `w`. */
  readonly build: (w: W) => RaceThread[];
}

/**
 * The `RaceScenario` of `spec`: each instance is `world(mutation, sequential)` running `spec.build`'s threads,
 * whose reference ("guest memory equal to a sequential run") is the digests of the sequential runs of unbroken
 * instances (`world({}, null)`, core's `sequentialDigests`), computed once, on the first check.
 */
export function migrationScenario<X extends object, W extends RaceInstance & { threads: RaceThread[]; readonly machine: Machine }>(
  spec: MigrationScenarioSpec<W>,
  mutation: X,
  world: (mutation: Partial<X>, sequential: (() => string[]) | null) => W,
): RaceScenario {
  let outcomes: string[] | null = null;
  const sequential = (): string[] =>
    (outcomes ??= sequentialDigests(
      () => {
        const w = world({}, null);
        w.threads = spec.build(w);
        return w;
      },
      (w) => w.machine.memory.digest(),
    ));
  return {
    name: spec.name,
    description: spec.description,
    create(): RaceInstance {
      const w = world(mutation, sequential);
      w.threads = spec.build(w);
      return w;
    },
  };
}
