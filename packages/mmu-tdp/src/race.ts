import {
  hexU64 as hex,
  GuestWriter,
  Harvester,
  RACE_RING_ENTRIES,
  RingHarvester,
  Unmapper,
  migrationScenario,
  MigrationWorld,
  PAGE_SIZE,
  WALK_NESTED_FAULT,
  type Backend,
  type GuestWrite,
  type MigrationMutation,
  type MigrationScenarioSpec,
  type RaceScenario,
  type Vcpu,
  type WalkResult,
} from '@vmexit/core';
import { FAST_FIXED, FAST_SPURIOUS, HOST_THREAD } from '@vmexit/core/mmu';
import { auditTdpMmu } from './audit.js';
import { TdpFastPageFault, type TdpFastFaultMutation } from './fast-fault.js';
import { TdpMapFault, type TdpMapMutation } from './map-fault.js';
import { isPresentSpte } from './mmio.js';
import { TdpMmu } from './mmu.js';
import { finish, isLeaf, zapLeafs } from './zap.js';

/**
 * Race scenarios of the TDP MMU for core's explorer (core/src/race), as mmu-shadow's are for the shadow MMU: a
 * small guest on a real backend (EPT on VMX, NPT on SVM), dirty logging on, and threads that race where KVM's
 * threads race (Documentation/virt/kvm/locking.rst; arch/x86/kvm/mmu/tdp_mmu.c): vCPUs whose guest stores exit
 * on a write-protected spte into the fast page fault (lockless walk, cmpxchg) or the slow one (under `mmu_lock`
 * held for READ: vCPUs fault side by side), the host harvesting the dirty log (KVM_GET_DIRTY_LOG, `mmu_lock`
 * for write) and copying the pages it reports, the host unmapping a gfn (an mmu-notifier invalidation, KVM
 * `kvm_tdp_mmu_unmap_gfn_range`, for write). After each interleaving: no dirty page lost (the destination equals
 * the source), no writable leaf for a logged page that is not marked dirty, the full audit (audit.ts), and guest
 * memory equal to a sequential run's. With dirty rings (KVM_CAP_DIRTY_LOG_RING) the host harvests the vCPUs' rings
 * and re-protects with KVM_RESET_DIRTY_RINGS (core's `RingHarvester`), as on the shadow MMU.
 */

/**
 * The guest: 4 MiB in two memslots. Slot 0 ([0, 2 MiB), logged) holds the data; slot 1 ([2, 4 MiB), not
 * logged) holds the guest's 4-level tables. Keeping the tables out of the logged slot keeps the scenarios
 * small: the guest's paging-structure accesses are writes to the second stage (EPT A/D, SDM Vol. 3C §29.3.5;
 * NPT, APM Vol. 2 §15.25.5), so tables in a logged slot would fault once more per level after every harvest.
 */
const RAM = 4 * 1024 * 1024;
const TABLES = 0x200000;
const PML4 = TABLES;
const PDPT = TABLES + 0x1000;
const PD = TABLES + 0x2000;
const PT = TABLES + 0x3000;
/** va i * 4 KiB -> gpa DATA + i * 4 KiB, for i < 8. */
const DATA = 0x10000;
const P = 1;
const W = 2;
const A = 0x20;
const D = 0x40;

/**
 * Deliberately broken MMUs, for the tests that require the explorer to catch each; the broken dirty-log hosts
 * (`harvestWithoutFlush`, and KVM_RESET_DIRTY_RINGS's `resetWithoutProtect`, `resetWithoutFlush`) are core's `MigrationMutation`.
 */
export interface TdpRaceMutation extends TdpFastFaultMutation, TdpMapMutation, MigrationMutation {
  /** false: the fast page fault off (the `fast-page-fault` policy not composed): every fault takes mmu_lock for read. Not a broken MMU. */
  readonly fastPageFault?: boolean;
}

/**
 * The fast page fault as a race's vCPU runs it: `kvm_mmu_do_page_fault` counts `pf_taken` once per fault, before the
 * fast path (as `TdpMmu.handlePageFault` does); `tried` until the fast path fixes the fault or finds it spurious, so
 * that the slow path it falls back to does not count it again.
 */
class RaceFastFault extends TdpFastPageFault {
  tried = false;

  override start(gpa: number): void {
    this.s.host.count(this.vcpuId, 'pf_taken');
    this.tried = true;
    super.start(gpa);
  }

  override step(): number {
    const r = super.step();
    if (r === FAST_FIXED || r === FAST_SPURIOUS) this.tried = false;
    return r;
  }
}

/**
 * A vCPU that performs guest stores (core's `GuestWriter`), each one instruction: a TLB hit, or the
 * two-dimensional walk and then the store; or an EPT violation / #NPF (the walk's second-stage error code),
 * handled by the fast path or by the slow path under the read lock. The slow path's map (`TdpMapFault`) runs in
 * steps, as other vCPUs' run beside it under the same read lock: the step that takes the fault runs its checks and
 * its first spte read; the writer's own steps run the rest (each compare-and-swap, each further read) before the
 * unlock, and a failed compare-and-swap ends it with RET_PF_RETRY (the guest repeats the store).
 */
class VcpuWriter extends GuestWriter {
  protected readonly faultStatus = WALK_NESTED_FAULT;
  protected readonly lockName = 'mmu_lock (read)';
  protected readonly fast: RaceFastFault;
  /** This vCPU's slow page fault's map. */
  readonly map: TdpMapFault;
  /** The map has steps left (the writer runs them before core's unlock step). */
  private mapping = false;
  /** The label of the step that took the slow fault (core's names it 'page fault (slow path)'). */
  private faultLabel: string | null = null;

  constructor(
    private readonly w: TdpRaceWorld,
    vcpu: Vcpu,
    writes: readonly GuestWrite[],
  ) {
    super(vcpu, w.machine.memory, w.mmu, writes);
    this.fast = new RaceFastFault(w.mmu, vcpu.id, w.mutation);
    this.map = new TdpMapFault(w.mmu, vcpu.id, w.mutation);
  }

  override step(): string {
    if (this.mapping) return this.mapStep();
    const out = super.step();
    const label = this.faultLabel;
    this.faultLabel = null;
    return label ?? out;
  }

  /** One step of the map; the label names it and, at the end, its outcome. */
  private mapStep(): string {
    const what = this.map.phaseName;
    const res = this.w.mmu.pageFaultStep(this.map);
    this.mapping = res === null;
    return res === null ? `slow: ${what}` : `slow: ${what} -> ${this.map.resultName}`;
  }

  protected faultAddress(r: WalkResult): number {
    return r.nestedGpa;
  }

  protected faultErrorCode(r: WalkResult): number {
    return r.nestedCode;
  }

  protected describeFault(va: number, gpa: number, errorCode: number): string {
    return `write ${hex(va)}: second-stage fault on gpa ${hex(gpa)}, error code ${errorCode}`;
  }

  protected lockAvailable(): boolean {
    return this.w.mmu.mmuLock.availableRead(this.vcpu.id);
  }

  protected tryLock(): boolean {
    return this.w.mmu.mmuLock.tryAcquireRead(this.vcpu.id);
  }

  protected unlock(): void {
    this.w.mmu.mmuLock.releaseRead(this.vcpu.id);
  }

  protected slowFault(_va: number, gpa: number, errorCode: number): string {
    const taken = !this.fast.tried; // the fast path counted pf_taken already
    this.fast.tried = false;
    const res = this.w.mmu.pageFaultStart(this.vcpu, gpa, errorCode, taken, this.map);
    if (res !== null) return res.kind;
    this.faultLabel = `page fault (slow path), ${this.mapStep()}`;
    // The map's further steps are this writer's (`mapping`); core's writer unlocks after them. Its results are RESUME.
    return 'resume';
  }
}

/** The host's unmap of a gfn (core's `Unmapper`): KVM `kvm_tdp_mmu_unmap_gfn_range`, then a flush, under `mmu_lock` held for write. */
function unmapper(w: TdpRaceWorld, gfn: number): Unmapper {
  const mmu = w.mmu;
  return new Unmapper(
    {
      lockName: 'mmu_lock (write)',
      lockAvailable: () => mmu.mmuLock.available(HOST_THREAD),
      tryLock: () => mmu.mmuLock.tryAcquire(HOST_THREAD),
      unlock: () => mmu.mmuLock.release(HOST_THREAD),
      zap: (g) => `zap the leaf of gfn ${hex(g)}${zapLeafs(mmu, g, g + 1) ? '' : ' (none)'}`,
      flush: () => finish(mmu), // kvm_flush_remote_tlbs
    },
    gfn,
  );
}

/** The guest's tables (in slot 1): va i * 4 KiB -> gpa DATA + i * 4 KiB, for i < 8. */
const GUEST = {
  memoryBytes: RAM,
  memslots: [
    { base: 0, size: TABLES },
    { base: TABLES, size: RAM - TABLES },
  ],
  pml4: PML4,
  ptes: [
    [PML4, PDPT | P | W | A],
    [PDPT, PD | P | W | A],
    [PD, PT | P | W | A],
    ...Array.from({ length: 8 }, (_, i) => [PT + i * 8, DATA + i * PAGE_SIZE + (P | W | A | D)] as const),
  ],
} as const;

/** One instance of a scenario (core's `MigrationWorld`): the machine, the TDP MMU with its dirty log, the destination's memory, and the threads. */
class TdpRaceWorld extends MigrationWorld<TdpMmu, TdpRaceMutation> {
  constructor(backend: Backend, vcpus: number, premap: readonly number[], ring: boolean, mutation: TdpRaceMutation, sequential: (() => string[]) | null) {
    super(GUEST, new TdpMmu({ fastPageFault: mutation.fastPageFault !== false }), mutation, {
      vcpus,
      premap,
      backend,
      ringEntries: ring ? RACE_RING_ENTRIES : 0,
      sequential,
    });
  }

  writer(vcpu: Vcpu, writes: readonly GuestWrite[]): VcpuWriter {
    return new VcpuWriter(this, vcpu, writes);
  }

  protected audit(): void {
    auditTdpMmu(this.mmu, { full: true });
  }

  /** Core's counters, and `map_retry`: the slow paths' RET_PF_RETRY outcomes (the explorer's count; KVM has no stat for them). */
  override stats(): Record<string, number> {
    const out = super.stats();
    let n = 0;
    for (const t of this.threads) if (t instanceof VcpuWriter) n += t.map.retries;
    out['map_retry'] = n;
    return out;
  }

  /** No writable leaf for a page of a logged slot that is not marked dirty. */
  checkWritableSptes(): void {
    this.auditStopped();
    const mmu = this.mmu;
    const wbit = mmu.format.writableLo;
    for (const sp of mmu.active) {
      for (let i = 0; i < 512; i++) {
        const lo = mmu.pool.lo(sp.base + i);
        if (!isPresentSpte(lo) || !isLeaf(lo, sp.level) || (lo & wbit) === 0 || sp.level !== 1) continue;
        const gfn = sp.gfn + i;
        const slot = mmu.memory.slotForGfn(gfn);
        if (slot !== null && this.log.isLogging(slot) && !this.log.isDirty(gfn))
          this.problems.push(`writable spte for gfn ${hex(gfn)} in a logged slot, page not marked dirty`);
      }
    }
  }
}

interface ScenarioSpec extends MigrationScenarioSpec<TdpRaceWorld> {
  readonly vcpus: number;
  readonly premap: readonly number[];
  /** KVM_CAP_DIRTY_LOG_RING on (a ring per vCPU) before logging starts. */
  readonly ring?: boolean;
}

const SPECS: readonly ScenarioSpec[] = [
  {
    name: 'fast-pf-vs-get-dirty-log',
    description: 'vCPU 0 writes a logged page twice (the fast path fixes it) while the host harvests the log once and copies, then stops and copies the rest',
    vcpus: 1,
    premap: [0],
    build: (w) => [
      new VcpuWriter(w, w.machine.vcpus[0]!, [
        { va: 0, value: 1 },
        { va: 8, value: 2 },
      ]),
      new Harvester(w, 1),
    ],
  },
  {
    // locking.rst, "flush tlbs due to spte updated": KVM_GET_DIRTY_LOG flushes after it write-protects. vCPU 0's TLB
    // may cache the spte vCPU 1 made writable until that flush; a flush before the write-protect would leave the
    // entry vCPU 0 refills in between, and its second store would reach the page after the copy, unmarked.
    name: 'tlb-fill-vs-get-dirty-log',
    description:
      'vCPU 1 writes a logged page (the fast path fixes it) and vCPU 0 writes the same page twice, through its TLB, while the host harvests the log once and copies, then stops and copies the rest',
    vcpus: 2,
    premap: [0],
    build: (w) => [
      new VcpuWriter(w, w.machine.vcpus[0]!, [
        { va: 0, value: 1 },
        { va: 16, value: 3 },
      ]),
      new VcpuWriter(w, w.machine.vcpus[1]!, [{ va: 8, value: 2 }]),
      new Harvester(w, 1),
    ],
  },
  {
    name: 'fast-pf-same-spte',
    description: 'two vCPUs write the same write-protected page: both take the fast path on the same spte',
    vcpus: 2,
    premap: [0],
    build: (w) => [
      new VcpuWriter(w, w.machine.vcpus[0]!, [{ va: 0, value: 1 }]),
      new VcpuWriter(w, w.machine.vcpus[1]!, [{ va: 8, value: 2 }]),
      new Harvester(w, 0),
    ],
  },
  {
    name: 'fast-pf-vs-zap',
    description: "vCPU 0 writes a logged page while the host unmaps the page's gfn (mmu-notifier invalidation) under mmu_lock held for write",
    vcpus: 1,
    premap: [0],
    build: (w) => [new VcpuWriter(w, w.machine.vcpus[0]!, [{ va: 0, value: 1 }]), unmapper(w, DATA / PAGE_SIZE), new Harvester(w, 0)],
  },
  {
    name: 'fast-pf-vs-ring-reset',
    description:
      'dirty rings: vCPU 0 writes a logged page twice (the fast path fixes it, pushing to its ring) and vCPU 1 another, while the host harvests the rings, resets them (KVM_RESET_DIRTY_RINGS, mmu_lock held for write) and copies, then stops and copies the rest',
    vcpus: 2,
    premap: [0, PAGE_SIZE],
    ring: true,
    build: (w) => [
      new VcpuWriter(w, w.machine.vcpus[0]!, [
        { va: 0, value: 1 },
        { va: 8, value: 2 },
      ]),
      new VcpuWriter(w, w.machine.vcpus[1]!, [{ va: PAGE_SIZE, value: 3 }]),
      new RingHarvester(w, 1),
    ],
  },
  {
    // kvm_tdp_mmu_map under the read lock: both vCPUs fault on the same gfn, not mapped (an EPT violation / #NPF on a
    // non-present spte: not a fast page fault), and both walks read the empty leaf; one cmpxchg installs it, the
    // other fails (RET_PF_RETRY: no pf_fixed), and that vCPU's store is repeated through the leaf the first made.
    name: 'slow-pf-same-gfn',
    description:
      'two vCPUs write the same unmapped page at once: both take the slow path under mmu_lock held for read, one leaf cmpxchg may fail (RET_PF_RETRY, the store repeated), while the host harvests the log once and copies, then stops and copies the rest',
    vcpus: 2,
    premap: [0],
    build: (w) => [
      new VcpuWriter(w, w.machine.vcpus[0]!, [{ va: PAGE_SIZE, value: 1 }]),
      new VcpuWriter(w, w.machine.vcpus[1]!, [{ va: PAGE_SIZE + 8, value: 2 }]),
      new Harvester(w, 1),
    ],
  },
];

/** The names of the TDP MMU's race scenarios (`vmexit explore --mmu tdp`). */
export const TDP_RACE_SCENARIOS: readonly string[] = SPECS.map((s) => s.name);

/**
 * The TDP race scenario `name` (see TDP_RACE_SCENARIOS) on `backend` (a `Backend`: backend-vmx's for EPT,
 * backend-svm's for NPT; the caller composes it, as mmu-tdp never imports a backend), optionally over a
 * deliberately broken MMU.
 */
export function tdpRaceScenario(name: string, backend: Backend, mutation: TdpRaceMutation = {}): RaceScenario {
  const spec = SPECS.find((s) => s.name === name);
  if (spec === undefined) throw new RangeError(`unknown TDP race scenario '${name}' (scenarios: ${TDP_RACE_SCENARIOS.join(', ')})`);
  return migrationScenario(spec, mutation, (m, sequential) => new TdpRaceWorld(backend, spec.vcpus, spec.premap, spec.ring === true, m, sequential));
}
