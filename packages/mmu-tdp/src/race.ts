import {
  hexU64 as hex,
  ACC_WRITE,
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  DirtyLog,
  EFER_LME,
  GuestMemory,
  Harvester,
  Machine,
  PAGE_SIZE,
  RaceHost,
  sequentialDigests,
  WALK_NESTED_FAULT,
  WALK_OK,
  WALK_SIDE_EFFECTS,
  WalkResult,
  walk,
  type Backend,
  type HarvestWorld,
  type RaceInstance,
  type RaceScenario,
  type RaceThread,
  type Vcpu,
} from '@vmexit/core';
import { FAST_FIXED, FAST_MORE, FAST_SPURIOUS, HOST_THREAD, pageFaultCanBeFast, TLB_READ_SUP, TLB_WRITE_SUP } from '@vmexit/core/mmu';
import { auditTdpMmu } from './audit.js';
import { TdpFastPageFault, type TdpFastFaultMutation } from './fast-fault.js';
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
 * memory equal to a sequential run's.
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

/** Deliberately broken MMUs, for the tests that require the explorer to catch each. */
export interface TdpRaceMutation extends TdpFastFaultMutation {
  /** false: the fast page fault off (the `fast-page-fault` policy not composed): every fault takes mmu_lock for read. Not a broken MMU. */
  readonly fastPageFault?: boolean;
  /** KVM_GET_DIRTY_LOG re-protects but does not flush the TLBs. */
  readonly harvestWithoutFlush?: boolean;
}

interface GuestWrite {
  readonly va: number;
  readonly value: number;
}

const V_ACCESS = 0;
const V_FAST = 1;
const V_LOCK = 2;
const V_FAULT = 3;
const V_UNLOCK = 4;
const V_DONE = 5;

/**
 * A vCPU that performs guest stores, each one instruction: a TLB hit, or the two-dimensional walk and then the
 * store; or an EPT violation / #NPF (the walk's second-stage error code), handled by the fast path or by the
 * slow path under the read lock.
 */
class VcpuWriter implements RaceThread {
  readonly name: string;
  private phase = V_ACCESS;
  private i = 0;
  private gpa = 0;
  private errorCode = 0;
  private readonly r = new WalkResult();
  private readonly fast: TdpFastPageFault;

  constructor(
    private readonly w: TdpRaceWorld,
    private readonly vcpu: Vcpu,
    private readonly writes: readonly GuestWrite[],
  ) {
    this.name = `vcpu${vcpu.id}`;
    this.fast = new TdpFastPageFault(w.mmu, vcpu.id, w.mutation);
    if (writes.length === 0) this.phase = V_DONE;
  }

  get done(): boolean {
    return this.phase === V_DONE;
  }

  runnable(): boolean {
    return this.phase !== V_LOCK || this.w.mmu.mmuLock.availableRead(this.vcpu.id);
  }

  step(): string {
    const { mmu } = this.w;
    const vcpu = this.vcpu;
    const wr = this.writes[this.i]!;
    switch (this.phase) {
      case V_ACCESS: {
        let off = vcpu.tlb.lookup(wr.va, ACC_WRITE, vcpu.pcid);
        let how = 'TLB hit';
        if (off < 0) {
          const st = walk(vcpu.activeCtx, vcpu.activeMem, wr.va, ACC_WRITE, WALK_SIDE_EFFECTS, this.r);
          if (st === WALK_NESTED_FAULT) {
            this.gpa = this.r.nestedGpa;
            this.errorCode = this.r.nestedCode;
            const log = mmu.dirtyLog;
            this.phase = mmu.fastPageFault && log !== null && log.loggingSlots > 0 && pageFaultCanBeFast(this.errorCode) ? V_FAST : V_LOCK;
            if (this.phase === V_FAST) this.fast.start(this.gpa);
            return `write ${hex(wr.va)}: second-stage fault on gpa ${hex(this.gpa)}, error code ${this.errorCode}`;
          }
          if (st !== WALK_OK) throw new Error(`${this.name}: the walk of ${hex(wr.va)} ended with status ${st}`);
          off = this.w.machine.memory.gpaToOffset(this.r.pa);
          vcpu.tlb.fill(wr.va, vcpu.pcid, off - (off % PAGE_SIZE), TLB_READ_SUP | TLB_WRITE_SUP, PAGE_SIZE);
          how = 'walk';
        }
        this.w.machine.memory.u32[off >>> 2] = wr.value;
        if (++this.i >= this.writes.length) this.phase = V_DONE;
        return `write ${hex(wr.va)} = ${wr.value} (${how})`;
      }
      case V_FAST: {
        const what = this.fast.phaseName;
        const res = this.fast.step();
        if (res === FAST_MORE) return `fast: ${what}`;
        this.phase = res === FAST_FIXED || res === FAST_SPURIOUS ? V_ACCESS : V_LOCK;
        return `fast: ${what} -> ${res === FAST_FIXED ? 'fixed' : res === FAST_SPURIOUS ? 'spurious' : 'slow path'}`;
      }
      case V_LOCK:
        if (!mmu.mmuLock.tryAcquireRead(vcpu.id)) return 'spin on mmu_lock (read)';
        this.phase = V_FAULT;
        return 'mmu_lock (read)';
      case V_FAULT: {
        const res = mmu.pageFaultLocked(vcpu, this.gpa, this.errorCode);
        if (res.kind !== 'resume') throw new Error(`${this.name}: the fault on ${hex(this.gpa)} resolved as ${res.kind}; the scenario expects a fixed fault`);
        this.phase = V_UNLOCK;
        return 'page fault (slow path)';
      }
      default:
        mmu.mmuLock.releaseRead(vcpu.id);
        this.phase = V_ACCESS;
        return 'mmu_unlock (read)';
    }
  }
}

/** The host unmaps a gfn (an mmu-notifier invalidation, KVM `kvm_tdp_mmu_unmap_gfn_range`, then a flush, under `mmu_lock` held for write). */
class Unmapper implements RaceThread {
  readonly name = 'unmap';
  private phase = 0;

  constructor(
    private readonly w: TdpRaceWorld,
    private readonly gfn: number,
  ) {}

  get done(): boolean {
    return this.phase === 4;
  }

  runnable(): boolean {
    return this.phase !== 0 || this.w.mmu.mmuLock.available(HOST_THREAD);
  }

  step(): string {
    const mmu = this.w.mmu;
    switch (this.phase) {
      case 0:
        if (!mmu.mmuLock.tryAcquire(HOST_THREAD)) return 'spin on mmu_lock (write)';
        this.phase = 1;
        return 'mmu_lock (write)';
      case 1: {
        const z = zapLeafs(mmu, this.gfn, this.gfn + 1);
        this.phase = 2;
        return `zap the leaf of gfn ${hex(this.gfn)}${z ? '' : ' (none)'}`;
      }
      case 2:
        finish(mmu); // kvm_flush_remote_tlbs
        this.phase = 3;
        return 'flush remote TLBs';
      default:
        mmu.mmuLock.release(HOST_THREAD);
        this.phase = 4;
        return 'mmu_unlock (write)';
    }
  }
}

/** One instance of a scenario: the machine, the TDP MMU with its dirty log, the destination's memory, and the threads. */
class TdpRaceWorld implements RaceInstance, HarvestWorld {
  readonly machine: Machine;
  readonly mmu: TdpMmu;
  readonly log: DirtyLog;
  readonly destination: GuestMemory;
  threads: RaceThread[] = [];
  private readonly problems: string[] = [];
  private readonly lockBase: number[];

  constructor(
    backend: Backend,
    vcpus: number,
    premap: readonly number[],
    readonly mutation: TdpRaceMutation,
    private readonly sequential: (() => string[]) | null,
  ) {
    const slots = [
      { base: 0, size: TABLES },
      { base: TABLES, size: RAM - TABLES },
    ];
    const machine = new Machine({ memoryBytes: RAM, vcpus, memslots: slots });
    this.machine = machine;
    const m = machine.memory;
    const w64 = (pa: number, lo: number): void => {
      m.write32(pa, lo >>> 0);
      m.write32(pa + 4, 0);
    };
    w64(PML4, PDPT | P | W | A);
    w64(PDPT, PD | P | W | A);
    w64(PD, PT | P | W | A);
    for (let i = 0; i < 8; i++) w64(PT + i * 8, DATA + i * PAGE_SIZE + (P | W | A | D));
    const mmu = new TdpMmu({ fastPageFault: mutation.fastPageFault !== false });
    this.mmu = mmu;
    mmu.init(new RaceHost(machine.vcpus, backend));
    for (const v of machine.vcpus) {
      v.writeEfer(EFER_LME);
      v.movToCr4(CR4_PAE);
      v.movToCr3(PML4);
      v.movToCr0(CR0_PG | CR0_WP | CR0_PE);
      mmu.attachVcpu(v);
    }
    this.log = new DirtyLog(m);
    mmu.attachDirtyLog(this.log);
    // Before logging starts, the guest has written its pages (writable leaves exist), then the migration starts:
    // logging on for slot 0 (every leaf write-protected, TLBs flushed), and the first full copy.
    for (const va of premap) {
      const t = new VcpuWriter(this, machine.vcpus[0]!, [{ va, value: 0 }]);
      while (!t.done) t.step();
    }
    this.log.enable(0);
    this.destination = new GuestMemory(RAM, slots);
    for (const gfn of m.backedGfns()) m.copyPageTo(this.destination, gfn);
    this.host.counters.clear();
    this.lockBase = [mmu.mmuLock.acquired, mmu.mmuLock.contended];
  }

  get host(): RaceHost {
    return this.mmu.host as RaceHost;
  }

  get harvestWithoutFlush(): boolean {
    return this.mutation.harvestWithoutFlush === true;
  }

  stats(): Record<string, number> {
    const out: Record<string, number> = Object.fromEntries(this.host.counters);
    out['mmu_lock.acquired'] = this.mmu.mmuLock.acquired - this.lockBase[0]!;
    out['mmu_lock.contended'] = this.mmu.mmuLock.contended - this.lockBase[1]!;
    return out;
  }

  copy(bitmap: Uint32Array): number {
    const m = this.machine.memory;
    const gfns = DirtyLog.gfns(this.log.slotOf(0), bitmap);
    for (const gfn of gfns) m.copyPageTo(this.destination, gfn);
    return gfns.length;
  }

  /** No writable leaf for a page of a logged slot that is not marked dirty. */
  checkWritableSptes(): void {
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

  check(): string[] {
    const out = [...this.problems];
    try {
      auditTdpMmu(this.mmu, { full: true });
    } catch (e) {
      out.push(`audit: ${(e as Error).message.split('\n')[0]}`);
    }
    const lost = this.machine.memory.differingPages(this.destination).map(hex);
    if (lost.length > 0) out.push(`dirty page lost: the destination differs from the source in gfn ${lost.join(', ')}`);
    if (this.sequential !== null && !this.sequential().includes(this.machine.memory.digest()))
      out.push('guest memory differs from every sequential run of the threads');
    return out;
  }
}

interface ScenarioSpec {
  readonly name: string;
  readonly description: string;
  readonly vcpus: number;
  readonly premap: readonly number[];
  readonly build: (w: TdpRaceWorld) => RaceThread[];
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
    build: (w) => [new VcpuWriter(w, w.machine.vcpus[0]!, [{ va: 0, value: 1 }]), new Unmapper(w, DATA / PAGE_SIZE), new Harvester(w, 0)],
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
  let outcomes: string[] | null = null;
  const sequential = (): string[] =>
    (outcomes ??= sequentialDigests(
      () => {
        const w = new TdpRaceWorld(backend, spec.vcpus, spec.premap, {}, null);
        w.threads = spec.build(w);
        return w;
      },
      (w) => w.machine.memory.digest(),
    ));
  return {
    name: spec.name,
    description: spec.description,
    create(): RaceInstance {
      const w = new TdpRaceWorld(backend, spec.vcpus, spec.premap, mutation, sequential);
      w.threads = spec.build(w);
      return w;
    },
  };
}
