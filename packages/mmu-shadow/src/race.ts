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
  Machine,
  PAGE_SIZE,
  PT_ACCESSED,
  PT_DIRTY,
  PT_PAGE_SIZE,
  PT_PRESENT,
  PT_WRITABLE,
  WALK_OK,
  WALK_PAGE_FAULT,
  WALK_SIDE_EFFECTS,
  WalkResult,
  walk,
  Harvester,
  RaceHost,
  type HarvestWorld,
  type RaceInstance,
  type RaceScenario,
  type RaceThread,
  type Vcpu,
} from '@vmexit/core';
import {
  FAST_FIXED,
  FAST_MORE,
  FAST_SPURIOUS,
  HOST_THREAD,
  pageFaultCanBeFast,
  ResetDirtyRingsOp,
  SPTE_W,
  sptePa,
  TLB_READ_SUP,
  TLB_WRITE_SUP,
} from '@vmexit/core/mmu';
import { FastPageFault, type FastFaultMutation } from './fast-fault.js';
import { pageFault } from './fault.js';
import { ShadowMmu } from './mmu.js';
import { zapSpte } from './page-cache.js';
import { pteWrite } from './pte-write.js';

/**
 * Race scenarios of the shadow MMU for core's explorer (core/src/race): a small guest, dirty logging on, and
 * threads that race where KVM's threads race (Documentation/virt/kvm/locking.rst): vCPUs whose guest writes
 * fault into the fast page fault (lockless, cmpxchg) or the slow one (under `mmu_lock`), the host harvesting
 * the dirty log (KVM_GET_DIRTY_LOG) and copying the pages it reports as a pre-copy migration does, the host
 * unmapping a gfn (an mmu-notifier invalidation, KVM `kvm_unmap_gfn_range`), and an emulated guest pte write
 * (`kvm_mmu_track_write`). After each interleaving:
 *  - no dirty page lost: the destination (the initial copy, the copies of each harvest, and the final
 *    stop-and-copy) equals the source;
 *  - no writable spte for a page of a logged slot that is not marked dirty (checked when the vCPUs are done,
 *    before the final harvest);
 *  - the audit (audit.ts) passes;
 *  - guest memory equals that of a sequential run (the threads one after another, in some order).
 */

/** The guest: 4 MiB of RAM in one memslot, 4-level tables at 1 MiB. */
const RAM = 4 * 1024 * 1024;
const PML4 = 0x100000;
const PDPT = 0x101000;
const PD = 0x102000;
const PT = 0x103000;
/** va 0 .. 2 MiB: 4 KiB guest pages (indirect shadow pages), page i at SMALL_BASE + i * 4 KiB. */
const SMALL_BASE = 0x180000;
/** va 2 .. 4 MiB: one 2 MiB guest page at pa 2 MiB (direct shadow pages below it: the fast path's pages). */
export const LARGE_VA = 0x200000;
/** Where `fault-vs-pte-write` moves the 4 KiB page at va 0. */
const MOVED_PA = 0x190000;
const P = PT_PRESENT;
const W = PT_WRITABLE;
const A = PT_ACCESSED;
const D = PT_DIRTY;
const PS = PT_PAGE_SIZE;

/** Deliberately broken MMUs, for the tests that require the explorer to catch each. */
export interface RaceMutation extends FastFaultMutation {
  /** false: the fast page fault off (the `fast-page-fault` policy not composed): every fault takes mmu_lock. Not a broken MMU. */
  readonly fastPageFault?: boolean;
  /** KVM_GET_DIRTY_LOG re-protects but does not flush the TLBs. */
  readonly harvestWithoutFlush?: boolean;
  /** KVM_RESET_DIRTY_RINGS resets the harvested entries without write-protecting their pages again. */
  readonly resetWithoutProtect?: boolean;
  /** KVM_RESET_DIRTY_RINGS re-protects but does not flush the TLBs. */
  readonly resetWithoutFlush?: boolean;
}

/** The ring size of the ring scenarios: KVM's smallest (one 4 KiB page of 16-byte entries). */
const RING_ENTRIES = 256;

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

/** A vCPU that performs guest stores, each one instruction: a TLB hit or a hardware walk of the shadow tables, then the store; or a fault. */
class VcpuWriter implements RaceThread {
  readonly name: string;
  private phase = V_ACCESS;
  private i = 0;
  private errorCode = 0;
  private readonly r = new WalkResult();
  private readonly fast: FastPageFault;

  constructor(
    private readonly w: RaceWorld,
    private readonly vcpu: Vcpu,
    private readonly writes: readonly GuestWrite[],
  ) {
    this.name = `vcpu${vcpu.id}`;
    this.fast = new FastPageFault(w.mmu, vcpu, w.mutation);
    if (writes.length === 0) this.phase = V_DONE;
  }

  get done(): boolean {
    return this.phase === V_DONE;
  }

  runnable(): boolean {
    return this.phase !== V_LOCK || this.w.mmu.mmuLock.available(this.vcpu.id);
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
          if (st === WALK_PAGE_FAULT) {
            this.errorCode = this.r.errorCode;
            const log = mmu.dirtyLog;
            this.phase = mmu.fastPageFault && log !== null && log.loggingSlots > 0 && pageFaultCanBeFast(this.errorCode) ? V_FAST : V_LOCK;
            if (this.phase === V_FAST) this.fast.start(wr.va, this.errorCode);
            return `write ${hex(wr.va)}: #PF error code ${this.errorCode}`;
          }
          if (st !== WALK_OK) throw new Error(`${this.name}: the walk of ${hex(wr.va)} ended with status ${st}`);
          off = this.w.machine.memory.gpaToOffset(this.r.pa);
          vcpu.tlb.fill(wr.va, vcpu.pcid, off - (off % PAGE_SIZE), TLB_READ_SUP | TLB_WRITE_SUP, PAGE_SIZE);
          how = 'walk';
        }
        this.w.machine.memory.u32[off >>> 2] = wr.value;
        this.next();
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
        if (!mmu.mmuLock.tryAcquire(vcpu.id)) return 'spin on mmu_lock';
        this.phase = V_FAULT;
        return 'mmu_lock';
      case V_FAULT: {
        const res = pageFault(mmu, vcpu, wr.va, this.errorCode);
        if (res.kind !== 'resume') throw new Error(`${this.name}: the fault on ${hex(wr.va)} resolved as ${res.kind}; the scenario expects a fixed fault`);
        this.phase = V_UNLOCK;
        return 'page fault (slow path)';
      }
      case V_UNLOCK:
        mmu.mmuLock.release(vcpu.id);
        this.phase = V_ACCESS;
        return 'mmu_unlock';
      default:
        throw new Error(`${this.name} stepped after its end`);
    }
  }

  private next(): void {
    if (++this.i >= this.writes.length) this.phase = V_DONE;
    else this.phase = V_ACCESS;
  }
}

/**
 * The host's migration thread with dirty rings (KVM_CAP_DIRTY_LOG_RING), in the order QEMU's
 * `kvm_dirty_ring_reap` and the selftest keep: harvest every vCPU's ring (user space reads the DIRTY entries and
 * flags them RESET), KVM_RESET_DIRTY_RINGS (re-protect the harvested pages, then flush), then copy the pages
 * harvested. `rounds` such harvests, then, once every vCPU is done, the invariant check and the final harvest
 * (the rings, and the bitmap of the host's own writes) and copy.
 */
class RingHarvester implements RaceThread {
  readonly name = 'harvest';
  private op: ResetDirtyRingsOp | null = null;
  private gfns: number[] = [];
  private round = 0;
  private finished = false;

  constructor(
    private readonly w: RaceWorld,
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

/** The host unmaps a gfn (an mmu-notifier invalidation, KVM `kvm_unmap_gfn_range` -> `kvm_zap_rmap`, then a flush, under `mmu_lock`). */
class Unmapper implements RaceThread {
  readonly name = 'unmap';
  private phase = 0;

  constructor(
    private readonly w: RaceWorld,
    private readonly gfn: number,
  ) {}

  get done(): boolean {
    return this.phase === 4;
  }

  runnable(): boolean {
    const mmu = this.w.mmu;
    if (this.phase === 0) return mmu.mmuLock.available(HOST_THREAD);
    // kvm_flush_remote_tlbs waits for every vCPU to take the IPI; one inside walk_shadow_page_lockless_begin/end
    // has interrupts off and answers only at its end.
    if (this.phase === 2) return mmu.locklessWalkers === 0;
    return true;
  }

  step(): string {
    const mmu = this.w.mmu;
    switch (this.phase) {
      case 0:
        if (!mmu.mmuLock.tryAcquire(HOST_THREAD)) return 'spin on mmu_lock';
        this.phase = 1;
        return 'mmu_lock';
      case 1: {
        const head = mmu.rmaps.head(this.gfn, 1, false);
        const locs = head === null ? [] : head.toArray();
        for (const loc of locs) zapSpte(mmu, mmu.pageOfLoc(loc), loc);
        this.phase = 2;
        return `zap the ${locs.length} sptes of gfn ${hex(this.gfn)}`;
      }
      case 2:
        mmu.flushRemoteTlbs(HOST_THREAD);
        mmu.pendingFlush = false;
        this.phase = 3;
        return 'flush remote TLBs';
      default:
        mmu.mmuLock.release(HOST_THREAD);
        this.phase = 4;
        return 'mmu_unlock';
    }
  }
}

/** A vCPU's emulated store to a guest pte (the emulator writes guest memory, marks it dirty, then `kvm_mmu_track_write` under `mmu_lock`). */
class PteWriter implements RaceThread {
  readonly name: string;
  private phase = 0;
  private oldLo = 0;
  private oldHi = 0;

  constructor(
    private readonly w: RaceWorld,
    private readonly vcpu: Vcpu,
    private readonly gpa: number,
    private readonly lo: number,
  ) {
    this.name = `vcpu${vcpu.id}-pte-write`;
  }

  get done(): boolean {
    return this.phase === 4;
  }

  runnable(): boolean {
    return this.phase !== 1 || this.w.mmu.mmuLock.available(this.vcpu.id);
  }

  step(): string {
    const { mmu, machine, log } = this.w;
    const m = machine.memory;
    switch (this.phase) {
      case 0:
        this.oldLo = m.read32(this.gpa);
        this.oldHi = m.read32(this.gpa + 4);
        m.write32(this.gpa, this.lo);
        m.write32(this.gpa + 4, 0);
        log.markPageDirty(Math.floor(this.gpa / PAGE_SIZE), this.vcpu.id);
        this.phase = 1;
        return `store gpte ${hex(this.gpa)} = ${hex(this.lo)}`;
      case 1:
        if (!mmu.mmuLock.tryAcquire(this.vcpu.id)) return 'spin on mmu_lock';
        this.phase = 2;
        return 'mmu_lock';
      case 2:
        pteWrite(mmu, this.vcpu, this.gpa, 8, this.oldLo, this.oldHi, this.lo, 0);
        this.phase = 3;
        return 'kvm_mmu_track_write';
      default:
        mmu.mmuLock.release(this.vcpu.id);
        this.phase = 4;
        return 'mmu_unlock';
    }
  }
}

/** One instance of a scenario: the machine, the MMU with its dirty log, the destination's memory, and the threads. */
class RaceWorld implements RaceInstance, HarvestWorld {
  readonly machine: Machine;
  readonly mmu: ShadowMmu;
  readonly log: DirtyLog;
  readonly destination: GuestMemory;
  threads: RaceThread[] = [];
  private readonly problems: string[] = [];

  constructor(
    vcpus: number,
    premap: readonly number[],
    ring: boolean,
    readonly mutation: RaceMutation,
    private readonly sequential: (() => string[]) | null,
  ) {
    const machine = new Machine({ memoryBytes: RAM, vcpus });
    this.machine = machine;
    const m = machine.memory;
    const w64 = (pa: number, lo: number): void => {
      m.write32(pa, lo >>> 0);
      m.write32(pa + 4, 0);
    };
    w64(PML4, PDPT | P | W | A);
    w64(PDPT, PD | P | W | A);
    w64(PD, PT | P | W | A);
    w64(PD + 8, LARGE_VA | P | W | A | D | PS);
    for (let i = 0; i < 8; i++) w64(PT + i * 8, SMALL_BASE + i * PAGE_SIZE + (P | W | A | D));
    const mmu = new ShadowMmu({ fastPageFault: mutation.fastPageFault !== false });
    this.mmu = mmu;
    mmu.init(new RaceHost(machine.vcpus));
    for (const v of machine.vcpus) {
      v.writeEfer(EFER_LME);
      v.movToCr4(CR4_PAE);
      v.movToCr3(PML4);
      v.movToCr0(CR0_PG | CR0_WP | CR0_PE);
      mmu.attachVcpu(v);
    }
    this.log = new DirtyLog(m);
    mmu.attachDirtyLog(this.log);
    // Before logging starts, the guest has written its pages (writable sptes exist), then the migration
    // starts: logging on (every spte write-protected, TLBs flushed), and the first full copy.
    for (const va of premap) {
      const t = new VcpuWriter(this, machine.vcpus[0]!, [{ va, value: 0 }]);
      while (!t.done) t.step();
    }
    if (ring) this.log.enableRing(vcpus, RING_ENTRIES);
    this.log.enable(0);
    // The destination: the same memslots, sent every page the guest has written (the first full copy).
    this.destination = new GuestMemory(RAM);
    for (const gfn of m.backedGfns()) m.copyPageTo(this.destination, gfn);
    this.host.counters.clear();
    this.lockBase = [mmu.mmuLock.acquired, mmu.mmuLock.contended];
  }

  private readonly lockBase: number[];

  /** The broken harvester of the explorer's tests (core's `Harvester` reads it). */
  get harvestWithoutFlush(): boolean {
    return this.mutation.harvestWithoutFlush === true;
  }

  get host(): RaceHost {
    return this.mmu.host as RaceHost;
  }

  stats(): Record<string, number> {
    const out: Record<string, number> = Object.fromEntries(this.host.counters);
    out['mmu_lock.acquired'] = this.mmu.mmuLock.acquired - this.lockBase[0]!;
    out['mmu_lock.contended'] = this.mmu.mmuLock.contended - this.lockBase[1]!;
    return out;
  }

  copy(bitmap: Uint32Array): number {
    return this.copyGfns(DirtyLog.gfns(this.log.slotOf(0), bitmap));
  }

  /** Copies the pages `gfns` (a ring harvest may name a page twice) to the destination; returns how many distinct. */
  copyGfns(list: readonly number[]): number {
    const m = this.machine.memory;
    const gfns = [...new Set(list)];
    for (const gfn of gfns) m.copyPageTo(this.destination, gfn);
    return gfns.length;
  }

  /** No writable spte for a page of a logged slot that is not marked dirty. */
  checkWritableSptes(): void {
    const mmu = this.mmu;
    for (const sp of mmu.active) {
      if (sp.level !== 1) continue;
      for (let i = 0; i < 512; i++) {
        const lo = mmu.pool.lo(sp.base + i);
        const hi = mmu.pool.hi(sp.base + i);
        if (!mmu.isPresent(lo, hi) || (lo & SPTE_W) === 0) continue;
        const gfn = Math.floor(sptePa(lo, hi) / PAGE_SIZE);
        if (!this.log.isDirty(gfn)) this.problems.push(`writable spte for gfn ${hex(gfn)} in a logged slot, page not marked dirty`);
      }
    }
  }

  check(): string[] {
    const out = [...this.problems];
    try {
      this.mmu.audit();
    } catch (e) {
      out.push(`audit: ${(e as Error).message.split('\n')[0]}`);
    }
    const lost = this.machine.memory.differingPages(this.destination).map(hex);
    if (lost.length > 0) out.push(`dirty page lost: the destination differs from the source in gfn ${lost.join(', ')}`);
    if (this.sequential !== null) {
      const outcomes = this.sequential();
      const digest = this.machine.memory.digest();
      if (!outcomes.includes(digest)) out.push('guest memory differs from every sequential run of the threads');
    }
    return out;
  }
}

interface ScenarioSpec {
  readonly name: string;
  readonly description: string;
  readonly vcpus: number;
  readonly premap: readonly number[];
  /** KVM_CAP_DIRTY_LOG_RING on (a ring per vCPU) before logging starts. */
  readonly ring?: boolean;
  readonly build: (w: RaceWorld) => RaceThread[];
}

const SPECS: readonly ScenarioSpec[] = [
  {
    name: 'fast-pf-vs-get-dirty-log',
    description: 'vCPU 0 writes a logged page twice (the fast path fixes it) while the host harvests the log once and copies, then stops and copies the rest',
    vcpus: 1,
    premap: [LARGE_VA],
    build: (w) => [
      new VcpuWriter(w, w.machine.vcpus[0]!, [
        { va: LARGE_VA, value: 1 },
        { va: LARGE_VA + 8, value: 2 },
      ]),
      new Harvester(w, 1),
    ],
  },
  {
    name: 'fast-pf-same-spte',
    description: 'two vCPUs write the same write-protected page: both take the fast path on the same spte',
    vcpus: 2,
    premap: [LARGE_VA],
    build: (w) => [
      new VcpuWriter(w, w.machine.vcpus[0]!, [{ va: LARGE_VA, value: 1 }]),
      new VcpuWriter(w, w.machine.vcpus[1]!, [{ va: LARGE_VA + 8, value: 2 }]),
      new Harvester(w, 0),
    ],
  },
  {
    name: 'fast-pf-vs-zap',
    description: "vCPU 0 writes a logged page while the host unmaps the page's gfn (mmu-notifier invalidation) under mmu_lock",
    vcpus: 1,
    premap: [LARGE_VA],
    build: (w) => [new VcpuWriter(w, w.machine.vcpus[0]!, [{ va: LARGE_VA, value: 1 }]), new Unmapper(w, LARGE_VA / PAGE_SIZE), new Harvester(w, 0)],
  },
  {
    name: 'fault-vs-pte-write',
    description: 'vCPU 0 faults on a 4 KiB page (slow path) while vCPU 1 emulates a store that moves its guest pte to another frame',
    vcpus: 2,
    premap: [0],
    build: (w) => [
      new VcpuWriter(w, w.machine.vcpus[0]!, [{ va: 0, value: 1 }]),
      new PteWriter(w, w.machine.vcpus[1]!, PT, MOVED_PA | P | W | A | D),
      new Harvester(w, 0),
    ],
  },
  {
    name: 'two-vcpus-vs-two-harvests',
    description: 'two vCPUs each write two logged pages while the host harvests and copies twice (a larger exploration for the script)',
    vcpus: 2,
    premap: [LARGE_VA, LARGE_VA + PAGE_SIZE],
    build: (w) => [
      new VcpuWriter(w, w.machine.vcpus[0]!, [
        { va: LARGE_VA, value: 1 },
        { va: LARGE_VA + PAGE_SIZE, value: 2 },
      ]),
      new VcpuWriter(w, w.machine.vcpus[1]!, [
        { va: LARGE_VA + PAGE_SIZE + 8, value: 3 },
        { va: LARGE_VA + 8, value: 4 },
      ]),
      new Harvester(w, 2),
    ],
  },
  {
    name: 'fast-pf-vs-ring-reset',
    description:
      'dirty rings: vCPU 0 writes a logged page twice (the fast path fixes it, pushing to its ring) and vCPU 1 another, while the host harvests the rings, resets them (KVM_RESET_DIRTY_RINGS) and copies, then stops and copies the rest',
    vcpus: 2,
    premap: [LARGE_VA, LARGE_VA + PAGE_SIZE],
    ring: true,
    build: (w) => [
      new VcpuWriter(w, w.machine.vcpus[0]!, [
        { va: LARGE_VA, value: 1 },
        { va: LARGE_VA + 8, value: 2 },
      ]),
      new VcpuWriter(w, w.machine.vcpus[1]!, [{ va: LARGE_VA + PAGE_SIZE, value: 3 }]),
      new RingHarvester(w, 1),
    ],
  },
];

/** The names of the shadow MMU's race scenarios. */
export const RACE_SCENARIOS: readonly string[] = SPECS.map((s) => s.name);

/** The race scenario `name` (see RACE_SCENARIOS), optionally over a deliberately broken MMU. */
export function shadowRaceScenario(name: string, mutation: RaceMutation = {}): RaceScenario {
  const spec = SPECS.find((s) => s.name === name);
  if (spec === undefined) throw new RangeError(`unknown race scenario '${name}' (scenarios: ${RACE_SCENARIOS.join(', ')})`);
  let outcomes: string[] | null = null;
  // The sequential runs: every order of the threads, each run as far as it can before the next.
  const sequential = (): string[] => {
    if (outcomes !== null) return outcomes;
    const list: string[] = [];
    const probe = new RaceWorld(spec.vcpus, spec.premap, spec.ring === true, {}, null);
    probe.threads = spec.build(probe);
    for (const order of permutations(probe.threads.length)) {
      const w = new RaceWorld(spec.vcpus, spec.premap, spec.ring === true, {}, null);
      w.threads = spec.build(w);
      for (;;) {
        const k = order.find((i) => !w.threads[i]!.done && w.threads[i]!.runnable());
        if (k === undefined) break;
        w.threads[k]!.step();
      }
      list.push(w.machine.memory.digest());
    }
    outcomes = list;
    return list;
  };
  return {
    name: spec.name,
    description: spec.description,
    create(): RaceInstance {
      const w = new RaceWorld(spec.vcpus, spec.premap, spec.ring === true, mutation, sequential);
      w.threads = spec.build(w);
      return w;
    },
  };
}

function permutations(n: number): number[][] {
  if (n === 0) return [[]];
  const out: number[][] = [];
  for (const p of permutations(n - 1)) for (let i = 0; i <= p.length; i++) out.push([...p.slice(0, i), n - 1, ...p.slice(i)]);
  return out;
}
