import {
  hexU64 as hex,
  GuestWriter,
  Harvester,
  RACE_RING_ENTRIES,
  RingHarvester,
  Unmapper,
  migrationScenario,
  MigrationWorld,
  type MigrationMutation,
  type MigrationScenarioSpec,
  PAGE_SIZE,
  PT_ACCESSED,
  PT_DIRTY,
  PT_PAGE_SIZE,
  PT_PRESENT,
  PT_WRITABLE,
  WALK_PAGE_FAULT,
  type GuestWrite,
  type RaceScenario,
  type RaceThread,
  type Vcpu,
  type WalkResult,
} from '@vmexit/core';
import { HOST_THREAD, SPTE_W, sptePa } from '@vmexit/core/mmu';
import { FastPageFault, type FastFaultMutation } from './fast-fault.js';
import { RETRY, SlowPageFault } from './fault.js';
import { ShadowMmu } from './mmu.js';
import { commitZap, prepareZap, zapSpte } from './page-cache.js';
import { pteWrite } from './pte-write.js';

/**
 * Race scenarios of the shadow MMU for core's explorer (core/src/race): a small guest, dirty logging on, and
 * threads that race where KVM's threads race (Documentation/virt/kvm/locking.rst): vCPUs whose guest writes
 * fault into the fast page fault (lockless, cmpxchg) or the slow one (its guest walk lockless, the rest under
 * `mmu_lock`), the host harvesting the dirty log (KVM_GET_DIRTY_LOG) and copying the pages it reports as a
 * pre-copy migration does, the host
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
/** Where `fault-vs-pte-write` moves the 4 KiB page at va 0, and `walk-vs-gpte-store` the one at SHADOWED_VA. */
const MOVED_PA = 0x190000;
/**
 * `fast-pf-vs-shadowing`'s guest page table: the last 4 KiB of the 2 MiB guest page (so a direct spte maps it), the
 * table of va 4 .. 6 MiB (PD entry 2), whose entry 0 maps SHADOWED_VA to the data page at pa SMALL_BASE + 32 KiB.
 */
const PT2 = LARGE_VA + 0x1ff000;
const SHADOWED_VA = 0x400000;
const P = PT_PRESENT;
const W = PT_WRITABLE;
const A = PT_ACCESSED;
const D = PT_DIRTY;
const PS = PT_PAGE_SIZE;

/**
 * Deliberately broken MMUs, for the tests that require the explorer to catch each; the broken dirty-log hosts
 * (`harvestWithoutFlush`, `resetWithoutProtect`, `resetWithoutFlush`) are core's `MigrationMutation`.
 */
export interface RaceMutation extends FastFaultMutation, MigrationMutation {
  /** The host's remote TLB flush completes while a vCPU is inside walk_shadow_page_lockless_begin/end. */
  readonly flushWithoutWait?: boolean;
  /** false: the fast page fault off (the `fast-page-fault` policy not composed): every fault takes mmu_lock. Not a broken MMU. */
  readonly fastPageFault?: boolean;
  /** FNAME(fetch) without FNAME(gpte_changed): the slow path maps what its lockless guest walk read, even if a gpte changed since. */
  readonly noGpteChangedCheck?: boolean;
}

/**
 * A vCPU that performs guest stores (core's `GuestWriter`): a TLB hit or a hardware walk of the shadow tables, then the
 * store; or a #PF into the fast path or the slow one. The slow one runs as KVM's FNAME(page_fault) does: the guest
 * walk first, a step of its own without `mmu_lock` (FNAME(walk_addr)), then the rest under the lock, where a gpte that
 * changed since the walk ends the fault with RET_PF_RETRY (FNAME(gpte_changed)) and the store is repeated.
 */
class VcpuWriter extends GuestWriter {
  protected readonly faultStatus = WALK_PAGE_FAULT;
  protected readonly lockName = 'mmu_lock';
  protected readonly fast: FastPageFault;
  /** This vCPU's slow page fault. */
  readonly slow: SlowPageFault;
  /** The label of the step that took the slow fault when it ended in RET_PF_RETRY (core's names it 'page fault (slow path)'). */
  private faultLabel: string | null = null;

  constructor(
    private readonly w: RaceWorld,
    vcpu: Vcpu,
    writes: readonly GuestWrite[],
  ) {
    super(vcpu, w.machine.memory, w.mmu, writes);
    this.fast = new FastPageFault(w.mmu, vcpu, w.mutation);
    this.slow = new SlowPageFault(w.mmu, vcpu, w.mutation.noGpteChangedCheck !== true);
  }

  override step(): string {
    const out = super.step();
    const label = this.faultLabel;
    this.faultLabel = null;
    return label ?? out;
  }

  protected faultAddress(_r: WalkResult, va: number): number {
    return va;
  }

  protected faultErrorCode(r: WalkResult): number {
    return r.errorCode;
  }

  protected describeFault(va: number, _addr: number, errorCode: number): string {
    return `write ${hex(va)}: #PF error code ${errorCode}`;
  }

  protected lockAvailable(): boolean {
    return this.w.mmu.mmuLock.available(this.vcpu.id);
  }

  protected tryLock(): boolean {
    return this.w.mmu.mmuLock.tryAcquire(this.vcpu.id);
  }

  protected unlock(): void {
    this.w.mmu.mmuLock.release(this.vcpu.id);
  }

  protected override slowFaultUnlocked(va: number, _addr: number, errorCode: number): string {
    const res = this.slow.walk(va, errorCode);
    if (res !== null)
      throw new Error(
        `${this.name}: the guest walk of ${hex(va)} faulted (error code ${res.kind === 'inject' ? res.errorCode : '?'}); the scenario expects a mapped va`,
      );
    return 'guest walk (lockless)';
  }

  protected slowFault(): string {
    const res = this.slow.locked();
    if (res === RETRY) this.faultLabel = 'page fault (slow path): gpte changed -> retry';
    return res.kind;
  }
}

/**
 * What the host's zaps share: `mmu_lock` taken as the host thread, and a flush that waits as kvm_flush_remote_tlbs
 * does for every vCPU to take the IPI (one inside walk_shadow_page_lockless_begin/end has interrupts off and
 * answers only at its end), unless the `flushWithoutWait` mutation is on.
 */
function hostUnderMmuLock(w: RaceWorld) {
  const mmu = w.mmu;
  return {
    lockName: 'mmu_lock',
    lockAvailable: () => mmu.mmuLock.available(HOST_THREAD),
    tryLock: () => mmu.mmuLock.tryAcquire(HOST_THREAD),
    unlock: () => mmu.mmuLock.release(HOST_THREAD),
    flushReady: () => mmu.locklessWalkers === 0 || w.mutation.flushWithoutWait === true,
  };
}

/** The host's unmap of a gfn (core's `Unmapper`): KVM `kvm_unmap_gfn_range` -> `kvm_zap_rmap`, then a flush, under `mmu_lock`. */
function unmapper(w: RaceWorld, gfn: number): Unmapper {
  const mmu = w.mmu;
  return new Unmapper(
    {
      ...hostUnderMmuLock(w),
      zap: (g) => {
        const head = mmu.rmaps.head(g, 1, false);
        const locs = head === null ? [] : head.toArray();
        for (const loc of locs) zapSpte(mmu, mmu.pageOfLoc(loc), loc);
        return `zap the ${locs.length} sptes of gfn ${hex(g)}`;
      },
      flush: () => {
        mmu.flushRemoteTlbs(HOST_THREAD);
        mmu.pendingFlush = false;
      },
    },
    gfn,
  );
}

/**
 * The host zapping the direct shadow page below the guest's 2 MiB page (as `kvm_mmu_zap_oldest_mmu_pages` does when
 * pages run short), an `Unmapper` whose zap is `kvm_mmu_prepare_zap_page` (unlink, zap the sptes) and whose flush is
 * `kvm_mmu_commit_zap_page`: kvm_flush_remote_tlbs, which waits for the vCPUs inside walk_shadow_page_lockless_begin/end
 * (interrupts off, vcpu->mode = READING_SHADOW_PAGE_TABLES), then the free. The wait is what makes the lockless walk
 * safe (mmu.c walk_shadow_page_lockless_begin: "Prevent page table teardown by making any free-er wait during
 * kvm_flush_remote_tlbs() IPI to all active vcpus").
 */
function pageZapper(w: RaceWorld, gfn: number): Unmapper {
  const mmu = w.mmu;
  return new Unmapper(
    {
      ...hostUnderMmuLock(w),
      zap: (g) => {
        const sp = [...mmu.active].find((p) => p.direct && p.level === 1 && p.gfn === g);
        if (sp === undefined) return `no direct page for gfn ${hex(g)}`;
        prepareZap(mmu, sp);
        return `prepare to zap the direct page of gfn ${hex(g)}`;
      },
      flush: () => commitZap(mmu),
    },
    gfn,
  );
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
        // Other threads may have run since the store (phase 0): kvm_mmu_track_write reads the gpte again.
        pteWrite(mmu, this.vcpu, this.gpa, 8, this.oldLo, this.oldHi, this.lo, 0, false);
        this.phase = 3;
        return 'kvm_mmu_track_write';
      default:
        mmu.mmuLock.release(this.vcpu.id);
        this.phase = 4;
        return 'mmu_unlock';
    }
  }
}

/** The guest's tables: va 0 .. 2 MiB in 4 KiB pages at SMALL_BASE, va 2 .. 4 MiB one 2 MiB page at LARGE_VA. */
const GUEST = {
  memoryBytes: RAM,
  pml4: PML4,
  ptes: [
    [PML4, PDPT | P | W | A],
    [PDPT, PD | P | W | A],
    [PD, PT | P | W | A],
    [PD + 8, LARGE_VA | P | W | A | D | PS],
    [PD + 16, PT2 | P | W | A],
    [PT2, SMALL_BASE + 8 * PAGE_SIZE + (P | W | A | D)],
    ...Array.from({ length: 8 }, (_, i) => [PT + i * 8, SMALL_BASE + i * PAGE_SIZE + (P | W | A | D)] as const),
  ],
} as const;

/** One instance of a scenario (core's `MigrationWorld`): the machine, the shadow MMU with its dirty log, the destination's memory, and the threads. */
class RaceWorld extends MigrationWorld<ShadowMmu, RaceMutation> {
  constructor(vcpus: number, premap: readonly number[], ring: boolean, unsync: boolean, mutation: RaceMutation, sequential: (() => string[]) | null) {
    super(GUEST, new ShadowMmu({ fastPageFault: mutation.fastPageFault !== false }), mutation, {
      vcpus,
      premap,
      ringEntries: ring ? RACE_RING_ENTRIES : 0,
      sequential,
    });
    if (unsync) this.host.decisions.set('unsync', true);
  }

  writer(vcpu: Vcpu, writes: readonly GuestWrite[]): VcpuWriter {
    return new VcpuWriter(this, vcpu, writes);
  }

  protected audit(): void {
    this.mmu.audit();
  }

  /** Core's counters, and `gpte_changed_retry`: the slow paths' RET_PF_RETRY outcomes (the explorer's count; KVM has no stat for them). */
  override stats(): Record<string, number> {
    const out = super.stats();
    let n = 0;
    for (const t of this.threads) if (t instanceof VcpuWriter) n += t.slow.retries;
    out['gpte_changed_retry'] = n;
    return out;
  }

  /** No writable spte for a page of a logged slot that is not marked dirty. */
  checkWritableSptes(): void {
    this.auditStopped();
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
}

interface ScenarioSpec extends MigrationScenarioSpec<RaceWorld> {
  readonly vcpus: number;
  readonly premap: readonly number[];
  /** KVM_CAP_DIRTY_LOG_RING on (a ring per vCPU) before logging starts. */
  readonly ring?: boolean;
  /**
   * A write fault on a level-1 guest page table unsyncs it (`mmu_try_to_unsync_pages`, as KVM since 2008) instead of
   * the model's default, emulation, which a `VcpuWriter` does not do.
   */
  readonly unsync?: boolean;
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
    // locking.rst, "flush tlbs due to spte updated": KVM_GET_DIRTY_LOG flushes after it write-protects. vCPU 0's TLB
    // may cache the spte vCPU 1 made writable until that flush; a flush before the write-protect would leave the
    // entry vCPU 0 refills in between, and its second store would reach the page after the copy, unmarked.
    name: 'tlb-fill-vs-get-dirty-log',
    description:
      'vCPU 1 writes a logged page (the fast path fixes it) and vCPU 0 writes the same page twice, through its TLB, while the host harvests the log once and copies, then stops and copies the rest',
    vcpus: 2,
    premap: [LARGE_VA],
    build: (w) => [
      new VcpuWriter(w, w.machine.vcpus[0]!, [
        { va: LARGE_VA, value: 1 },
        { va: LARGE_VA + 16, value: 3 },
      ]),
      new VcpuWriter(w, w.machine.vcpus[1]!, [{ va: LARGE_VA + 8, value: 2 }]),
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
    build: (w) => [new VcpuWriter(w, w.machine.vcpus[0]!, [{ va: LARGE_VA, value: 1 }]), unmapper(w, LARGE_VA / PAGE_SIZE), new Harvester(w, 0)],
  },
  {
    name: 'fast-pf-vs-page-zap',
    description:
      'vCPU 0 writes a logged page (the fast path walks the direct shadow page below the 2 MiB guest page) while the host zaps that shadow page and frees it after the remote flush',
    vcpus: 1,
    premap: [LARGE_VA],
    build: (w) => [new VcpuWriter(w, w.machine.vcpus[0]!, [{ va: LARGE_VA, value: 1 }]), pageZapper(w, LARGE_VA / PAGE_SIZE), new Harvester(w, 0)],
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
    // locking.rst, "Fast page fault": W is set by the cmpxchg only on an MMU-writable spte; a gfn that becomes a guest
    // page table loses MMU-writable (rmap_write_protect with pt_protect, under mmu_lock), and the cmpxchg fails when
    // that happens between the fast path's read and its cmpxchg. Without the check, or without the compare, the
    // guest writes its page table through a writable spte the shadow page does not know of.
    name: 'fast-pf-vs-shadowing',
    description:
      'vCPU 0 writes a logged page mapped by a direct spte (the fast path) while vCPU 1 faults on a va whose guest page table is that page: the slow path shadows it and write-protects its gfn (MMU-writable cleared)',
    vcpus: 2,
    premap: [PT2 + 64],
    unsync: true,
    build: (w) => [
      new VcpuWriter(w, w.machine.vcpus[0]!, [{ va: PT2 + 64, value: 2 }]),
      new VcpuWriter(w, w.machine.vcpus[1]!, [{ va: SHADOWED_VA, value: 3 }]),
      new Harvester(w, 0),
    ],
  },
  {
    // paging_tmpl.h FNAME(page_fault) walks the guest tables (FNAME(walk_addr)) before it takes mmu_lock, and FNAME(fetch)
    // verifies "that the gpte in the page we've just write protected is still there" (FNAME(gpte_changed)) before it
    // links the shadow page. Until the fetch shadows it, PT2 is no guest page table to the MMU: vCPU 1's store into it
    // is a plain guest store (the fast path makes its spte writable again). When that store lands between vCPU 0's walk
    // and its fetch, the fetch finds the gpte changed and returns RET_PF_RETRY; vCPU 0 faults again and maps the new frame.
    // When vCPU 0's fault shadows PT2 first, vCPU 1's store faults on a write-protected level-1 guest page table, which
    // goes unsync (mmu_try_to_unsync_pages) as in fast-pf-vs-shadowing.
    name: 'walk-vs-gpte-store',
    description:
      "vCPU 0 faults on a va whose guest page table is not shadowed yet (the slow path's guest walk runs without mmu_lock) while vCPU 1 stores a new gpte into that table, moving the va to another frame",
    vcpus: 2,
    premap: [PT2 + 64],
    unsync: true,
    build: (w) => [
      new VcpuWriter(w, w.machine.vcpus[0]!, [{ va: SHADOWED_VA, value: 1 }]),
      new VcpuWriter(w, w.machine.vcpus[1]!, [{ va: PT2, value: MOVED_PA | P | W | A | D }]),
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
  return migrationScenario(spec, mutation, (m, sequential) => new RaceWorld(spec.vcpus, spec.premap, spec.ring === true, spec.unsync === true, m, sequential));
}
