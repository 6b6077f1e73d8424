import {
  createVm,
  DirtyLog,
  DirtyRingError,
  GuestMemory,
  modelCycles,
  PAGE_SIZE,
  resolveCostProfile,
  VariantError,
  type DirtyLogMmu,
  type ModuleSources,
  type PagingModeName,
  type Variant,
  type Vm,
} from '@vmexit/core';
import { GuestConfigError, runWorkload, TraceError, WorkloadError, type Personality } from '@vmexit/guest';
import { InputError } from './errors.js';
import { describeVariant, withPmlPolicy } from './run-variant.js';
import { GUEST_ACCESS_CYCLES, guestProgress, timeMmuLock } from './lock-time.js';

/**
 * Pre-copy live migration (as QEMU drives KVM's dirty log, and as KVM's selftest
 * tools/testing/selftests/kvm/dirty_log_test.c checks it): the source VM runs the workload; the migration turns
 * dirty logging on for every memslot and copies all memory, then repeats harvest-and-copy, each round lasting as
 * long as the copy of the previous round's pages takes at the link's rate, until the dirty set is small or the
 * rounds run out; then the guest stops and the rest is copied (the downtime). The destination's memory digest
 * must equal the source's at the stop: the end-to-end proof that no dirty page was lost.
 */

/**
 * How the log is harvested: `bitmap` (KVM_GET_DIRTY_LOG clears and re-protects), `clear` (manual protect:
 * KVM_CLEAR_DIRTY_LOG) or `ring` (KVM_CAP_DIRTY_LOG_RING: a ring per vCPU, harvested and then reset with
 * KVM_RESET_DIRTY_RINGS at each round and at each KVM_EXIT_DIRTY_RING_FULL, as QEMU's `kvm_dirty_ring_reap`).
 */
export type DirtyLogMode = 'bitmap' | 'clear' | 'ring' | 'pml';
/** The harvest modes `vmexit migrate --dirty-log` takes. */
export const DIRTY_LOG_MODES: readonly DirtyLogMode[] = ['bitmap', 'clear', 'ring', 'pml'];
/** The ring size of `ring` mode unless given: 4096 entries per vCPU (the value QEMU's documentation suggests for dirty-ring-size). */
export const DEFAULT_DIRTY_RING_ENTRIES = 4096;

/** A migration: the workload and variant of the source VM, and the link and rounds of the pre-copy. */
export interface MigrateOptions {
  readonly workload: string;
  readonly mode: PagingModeName;
  readonly seed: number;
  readonly personalities: readonly Personality[];
  readonly variant: Variant;
  /** `bitmap`: KVM_GET_DIRTY_LOG clears and re-protects; `clear`: manual protect (initially set), KVM_GET_DIRTY_LOG then KVM_CLEAR_DIRTY_LOG. */
  readonly dirtyLog?: DirtyLogMode;
  /** `ring` mode: entries per vCPU ring (a power of two, 256..65536; default DEFAULT_DIRTY_RING_ENTRIES). */
  readonly ringEntries?: number;
  /** The most harvest rounds after the first full copy before the guest is stopped (default 10). */
  readonly maxRounds?: number;
  /** Stop when a round's dirty set is at most this many pages (default 64). */
  readonly stopPages?: number;
  /** The link's rate: pages copied per 1000 guest accesses (default 4); a round lasts until its pages are sent. */
  readonly copyRate?: number;
  /**
   * Modelled cycles to copy one 4 KiB page (default 10,000: an estimate, 4 KiB over a 10 Gbit/s link is
   * 3.3 us, about 10,000 cycles at 3 GHz).
   */
  readonly pageCopyCycles?: number;
  readonly sources?: ModuleSources;
}

/** The counters a round reports (deltas over the round; `exits.*` by reason). */
const ROUND_COUNTERS = [
  'exits',
  'pf_fixed',
  'pf_fast',
  'pf_spurious',
  'pf_fast_cmpxchg_fail',
  'pf_emulate',
  'mmu_lock.acquired',
  'mmu_lock.contended',
  'mmu_lock.spin_cycles',
  'remote_tlb_flush',
];

/** One round of the pre-copy: what the harvest found, what was sent, and what the guest did meanwhile. */
export interface MigrateRound {
  /** 0 = the first full copy; the last round is the stop-and-copy (the guest does not run during it). */
  readonly round: number;
  /** Pages the harvest reported dirty (round 0: every page). */
  readonly dirtyPages: number;
  readonly pagesSent: number;
  /** Guest accesses while the round's pages were being sent (0 for the stop-and-copy: the guest is stopped). */
  readonly guestAccesses: number;
  /** The cost model's cycles of the round's counters (exits, handlers, guest faults, walk references, spins on mmu_lock). */
  readonly modelledCycles: number;
  readonly counters: Readonly<Record<string, number>>;
}

/** A migration's result (`vmexit migrate --json`, schema `vmexit.migrate/1`): its rounds and whether the destination's memory matches. */
export interface MigrateResult {
  readonly schema: 'vmexit.migrate/1';
  readonly variant: Record<string, unknown>;
  readonly workload: string;
  readonly mode: PagingModeName;
  readonly seed: number;
  readonly dirtyLog: DirtyLogMode;
  /** The source VM's vCPUs (with the rest of this document, what made these rounds). */
  readonly vcpus: number;
  /** The source VM's guest RAM, in bytes. */
  readonly memory: number;
  /** The link's rate: pages copied per 1000 guest accesses (`--copy-rate`). */
  readonly copyRate: number;
  /** The stop rule: a round that dirties at most this many pages is the last before the stop (`--stop-pages`). */
  readonly stopPages: number;
  /** The most harvest rounds after the first full copy (`--max-rounds`). */
  readonly maxRounds: number;
  readonly rounds: readonly MigrateRound[];
  /** Why the guest was stopped: the dirty set was small, the rounds ran out, or the workload ended first. */
  readonly stoppedBy: 'dirty-set-small' | 'max-rounds' | 'workload-end';
  readonly digestMatch: boolean;
  readonly source: { readonly memoryDigest: string };
  readonly destination: { readonly memoryDigest: string };
  /** Pages sent in all, and the modelled time: total copy and the downtime (the stop-and-copy). */
  readonly pagesSent: number;
  readonly modelled: { readonly pageCopyCycles: number; readonly totalCopyCycles: number; readonly downtimeCycles: number };
  readonly counters: { readonly total: Readonly<Record<string, number>> };
  /**
   * Guest progress after dirty logging started: guest accesses per 1000 modelled cycles over the rounds the
   * guest ran in (all but the stop-and-copy), the cycles being the cost model's plus GUEST_ACCESS_CYCLES per
   * access (lock-time.ts). Its ratio between two variants is how much faster the guest got on under the log.
   */
  readonly guestProgress: { readonly accesses: number; readonly cycles: number; readonly accessesPerKcycle: number };
  /** `ring` mode: the ring size, and the entries harvested and KVM_EXIT_DIRTY_RING_FULL exits over the migration. */
  readonly dirtyRing?: { readonly entries: number; readonly softLimit: number; readonly harvested: number; readonly fullExits: number };
}

/** Thrown from the guest's quantum callback to stop the source guest (the run ends there; memory is consistent between quanta). */
class StopGuest extends Error {}

function positiveInt(v: number, name: string, min: number): number {
  if (!Number.isInteger(v) || v < min) throw new InputError(`${name} must be an integer of at least ${min}, not ${v}`);
  return v;
}

/** Runs a pre-copy live migration of the workload's VM (see the file's comment); bad input is an InputError. */
export async function migrate(o: MigrateOptions): Promise<MigrateResult> {
  const mode = o.dirtyLog ?? 'bitmap';
  if (!DIRTY_LOG_MODES.includes(mode)) throw new InputError(`--dirty-log must be one of ${DIRTY_LOG_MODES.join(', ')}, not '${String(mode)}'`);
  const maxRounds = positiveInt(o.maxRounds ?? 10, '--max-rounds', 0);
  const stopPages = positiveInt(o.stopPages ?? 64, '--stop-pages', 0);
  const copyRate = o.copyRate ?? 4;
  if (!(copyRate > 0) || !Number.isFinite(copyRate)) throw new InputError(`--copy-rate must be a positive number, not ${copyRate}`);
  const pageCopyCycles = o.pageCopyCycles ?? 10_000;
  if (o.variant.backend === 'none') throw new InputError('migrate needs a VM: backend none runs natively and has no dirty log');
  // pml: KVM_GET_DIRTY_LOG harvests as bitmap does, over the processor's page-modification log (the pml policy).
  const variant = mode === 'pml' ? withPmlPolicy(o.variant) : o.variant;
  let vm: Vm;
  try {
    vm = await createVm(
      { ...variant, guest: { ...o.variant.guest, mode: o.mode, personality: o.personalities.length > 0 ? o.personalities.join(',') : 'linux' } },
      { seed: o.seed, sources: o.sources },
    );
  } catch (e) {
    if (e instanceof VariantError) throw new InputError(`invalid variant:\n${e.message}`);
    throw e;
  }
  const mmu = vm.mmu as (Partial<DirtyLogMmu> & { name: string }) | null;
  if (mmu === null || typeof mmu.attachDirtyLog !== 'function')
    throw new InputError(`migrate needs an MMU with dirty logging; the '${o.variant.mmu}' MMU has none`);
  const memory = vm.machine.memory;
  const log = new DirtyLog(memory);
  mmu.attachDirtyLog(log);
  // several vCPUs: mmu_lock on the vCPUs' modelled clocks (contention and spins, lock-time.ts)
  timeMmuLock(vm, mmu as DirtyLogMmu);
  const ringEntries = o.ringEntries ?? DEFAULT_DIRTY_RING_ENTRIES;
  if (mode === 'ring') {
    try {
      log.enableRing(vm.machine.vcpus.length, ringEntries);
    } catch (e) {
      if (e instanceof DirtyRingError) throw new InputError(`--dirty-ring-size: ${e.message}`);
      throw e;
    }
  }
  // ring mode: user space's own dirty set (QEMU's dirty bitmap), filled by each reap of the rings; the pages are
  // copied at the round's harvest. A reap harvests every ring and resets them before any page is copied, so a
  // store after the copy faults again and is pushed again.
  const reaped = new Set<number>();
  let ringHarvested = 0;
  const reap = (): void => {
    ringHarvested += log.collectRings((_slot, gfn) => reaped.add(gfn));
    log.resetDirtyRings();
  };
  log.onRingFull = reap;
  // The destination VM's RAM: the same memslots, backed as pages arrive (a page of zeros need not be sent).
  const destination = new GuestMemory(
    memory.size,
    memory.slots.map((s) => ({ base: s.baseGfn * PAGE_SIZE, size: s.pages * PAGE_SIZE, readonly: s.readonly })),
  );
  const sendPage = (gfn: number): void => memory.copyPageTo(destination, gfn);
  const slots = memory.slots.filter((s) => !s.readonly);

  const rounds: MigrateRound[] = [];
  let before = vm.counters().total;
  const profile = resolveCostProfile(vm.variant.costModel);
  let cyclesBefore = modelCycles(profile, before).cycles;
  const roundKeys = mode === 'ring' ? [...ROUND_COUNTERS, 'dirty_ring_full_exits'] : ROUND_COUNTERS;
  const roundCounters = (): Record<string, number> => {
    const now = vm.counters().total;
    const out: Record<string, number> = {};
    for (const k of Object.keys(now)) {
      if (!roundKeys.includes(k) && !k.startsWith('exits.')) continue;
      const d = (now[k] ?? 0) - (before[k] ?? 0);
      if (d !== 0 || roundKeys.includes(k)) out[k] = d;
    }
    for (const k of roundKeys) out[k] ??= 0;
    before = now;
    return out;
  };
  /** The modelled cycles since the last call (taken with roundCounters, at the same points). */
  const roundCycles = (): number => {
    const now = modelCycles(profile, vm.counters().total).cycles;
    const d = now - cyclesBefore;
    cyclesBefore = now;
    return d;
  };
  const copy = (slotId: number, bitmap: Uint32Array): number => {
    const slot = log.slotOf(slotId);
    const gfns = DirtyLog.gfns(slot, bitmap);
    for (const gfn of gfns) sendPage(gfn);
    return gfns.length;
  };
  /** One harvest of every logged slot and the copy of what it reports. */
  const harvest = (): number => {
    let n = 0;
    if (mode === 'ring') {
      reap();
      for (const gfn of reaped) sendPage(gfn);
      n = reaped.size;
      reaped.clear();
      // The host's own writes are in the bitmaps (KVM's dirty_ring_with_bitmap): a GET_DIRTY_LOG of each slot.
      for (const s of slots) n += copy(s.id, log.getDirtyLog(s.id));
      return n;
    }
    for (const s of slots) {
      const bitmap = log.getDirtyLog(s.id);
      if (mode === 'clear') log.clearDirtyLog(s.id, 0, s.pages, bitmap);
      n += copy(s.id, bitmap);
    }
    return n;
  };

  let started = false;
  let roundStart = 0;
  let sending = 0;
  let stoppedBy: MigrateResult['stoppedBy'] = 'workload-end';
  const onQuantum = (accesses: number): void => {
    if (!started) {
      // The migration starts once the guest runs its workload: logging on, then the first full copy.
      started = true;
      roundCounters(); // the rounds count from here (boot and the guest's set-up are not the migration's)
      roundCycles();
      for (const s of slots) log.enable(s.id, mode === 'clear' ? { manualProtect: true, initiallySet: true } : {});
      const sent = mode === 'clear' ? harvest() : (memory.backedGfns().forEach(sendPage), memory.pages);
      rounds.push({ round: 0, dirtyPages: memory.pages, pagesSent: sent, guestAccesses: 0, modelledCycles: roundCycles(), counters: roundCounters() });
      roundStart = accesses;
      sending = sent;
      return;
    }
    if (accesses - roundStart < (sending * 1000) / copyRate) return;
    // The previous round's pages are sent: its guest accesses are known; harvest the next round.
    const prev = rounds[rounds.length - 1]!;
    rounds[rounds.length - 1] = {
      ...prev,
      guestAccesses: accesses - roundStart,
      modelledCycles: prev.modelledCycles + roundCycles(),
      counters: mergeCounters(prev.counters, roundCounters()),
    };
    const n = harvest();
    rounds.push({ round: rounds.length, dirtyPages: n, pagesSent: n, guestAccesses: 0, modelledCycles: roundCycles(), counters: roundCounters() });
    roundStart = accesses;
    sending = n;
    if (n <= stopPages) stoppedBy = 'dirty-set-small';
    else if (rounds.length - 1 >= maxRounds) stoppedBy = 'max-rounds';
    else return;
    throw new StopGuest();
  };

  let lastAccesses = 0;
  try {
    runWorkload({
      workload: o.workload,
      mode: o.mode,
      vcpus: o.variant.vcpus,
      memory: o.variant.memory,
      seed: o.seed,
      personalities: o.personalities,
      machine: vm.machine,
      variant: describeVariant(variant),
      // The dirty log is the migration's to harvest: a workload that harvests it too (dirty-log-test) would take
      // the pages the migration has to send.
      dirtyLog: () => {
        throw new InputError(
          `workload '${o.workload}' harvests the dirty log itself, and migrate harvests it for the migration: migrate another workload, or run this one with vmexit run`,
        );
      },
      onProgress: (n) => {
        lastAccesses = n;
        onQuantum(n);
      },
    });
  } catch (e) {
    if (e instanceof WorkloadError || e instanceof TraceError || e instanceof GuestConfigError) throw new InputError(e.message);
    if (!(e instanceof StopGuest)) throw e;
  }
  if (!started) throw new InputError(`workload '${o.workload}' ended before it ran a quantum: nothing to migrate`);
  // The guest is stopped. Stopped by the migration: the harvest that decided it is the stop-and-copy (the guest
  // ran no more since; a last harvest finds what the harvest's own re-protection left, nothing in practice).
  // Stopped by the workload's end: the last round's accesses are known, and the stop-and-copy is a new round.
  const last = rounds[rounds.length - 1]!;
  if (stoppedBy === 'workload-end') {
    rounds[rounds.length - 1] = {
      ...last,
      guestAccesses: lastAccesses - roundStart,
      modelledCycles: last.modelledCycles + roundCycles(),
      counters: mergeCounters(last.counters, roundCounters()),
    };
    const n = harvest();
    rounds.push({ round: rounds.length, dirtyPages: n, pagesSent: n, guestAccesses: 0, modelledCycles: roundCycles(), counters: roundCounters() });
  } else {
    const n = harvest();
    rounds[rounds.length - 1] = {
      ...last,
      dirtyPages: last.dirtyPages + n,
      pagesSent: last.pagesSent + n,
      modelledCycles: last.modelledCycles + roundCycles(),
      counters: mergeCounters(last.counters, roundCounters()),
    };
  }
  const downtimePages = rounds[rounds.length - 1]!.pagesSent;
  const sourceDigest = memory.digest();
  const destinationDigest = destination.digest();
  const pagesSent = rounds.reduce((a, r) => a + r.pagesSent, 0);
  // Guest progress over the rounds the guest ran in: every round but the stop-and-copy (whose cycles are the
  // last harvest's, with the guest stopped).
  const ran = rounds.slice(0, -1);
  const progressAccesses = ran.reduce((a, r) => a + r.guestAccesses, 0);
  const progressCycles = ran.reduce((a, r) => a + r.modelledCycles, 0);
  return {
    schema: 'vmexit.migrate/1',
    variant: describeVariant(variant),
    workload: o.workload,
    mode: o.mode,
    seed: o.seed,
    dirtyLog: mode,
    vcpus: o.variant.vcpus,
    memory: o.variant.memory,
    copyRate,
    stopPages,
    maxRounds,
    rounds,
    stoppedBy,
    digestMatch: sourceDigest === destinationDigest,
    source: { memoryDigest: sourceDigest },
    destination: { memoryDigest: destinationDigest },
    pagesSent,
    modelled: { pageCopyCycles, totalCopyCycles: pagesSent * pageCopyCycles, downtimeCycles: downtimePages * pageCopyCycles },
    counters: { total: vm.counters().total },
    guestProgress: { accesses: progressAccesses, cycles: progressCycles, accessesPerKcycle: guestProgress(progressAccesses, progressCycles) },
    ...(log.rings !== null
      ? {
          dirtyRing: {
            entries: ringEntries,
            softLimit: log.rings[0]!.softLimit,
            harvested: ringHarvested,
            fullExits: vm.counters().total['dirty_ring_full_exits'] ?? 0,
          },
        }
      : {}),
  };
}

function mergeCounters(a: Readonly<Record<string, number>>, b: Readonly<Record<string, number>>): Record<string, number> {
  const out: Record<string, number> = { ...a };
  for (const [k, v] of Object.entries(b)) out[k] = (out[k] ?? 0) + v;
  return out;
}

/** The per-round table `vmexit migrate` prints. */
export function formatMigrate(r: MigrateResult): string {
  const lines = [
    `migrate ${r.workload} (${r.mode}, seed ${r.seed}) on ${JSON.stringify(r.variant)}, dirty log: ${r.dirtyLog}`,
    'round  dirty pages  pages sent  guest accesses     exits  pf_fixed  pf_fast  mmu_lock.acquired  contended  modelled cycles',
  ];
  for (const x of r.rounds) {
    const c = x.counters;
    lines.push(
      `${String(x.round).padStart(5)}  ${String(x.dirtyPages).padStart(11)}  ${String(x.pagesSent).padStart(10)}  ${String(x.guestAccesses).padStart(14)}  ${String(c['exits'] ?? 0).padStart(8)}  ${String(c['pf_fixed'] ?? 0).padStart(8)}  ${String(c['pf_fast'] ?? 0).padStart(7)}  ${String(c['mmu_lock.acquired'] ?? 0).padStart(17)}  ${String(c['mmu_lock.contended'] ?? 0).padStart(9)}  ${String(x.modelledCycles).padStart(15)}`,
    );
  }
  const m = r.modelled;
  if (r.dirtyRing !== undefined) {
    const d = r.dirtyRing;
    lines.push(
      `dirty ring: ${d.entries} entries per vCPU (soft limit ${d.softLimit}); ${d.harvested} entries harvested; ${d.fullExits} KVM_EXIT_DIRTY_RING_FULL exits`,
    );
  }
  lines.push(
    `guest progress after dirty logging started: ${r.guestProgress.accesses} accesses in ${r.guestProgress.cycles + r.guestProgress.accesses * GUEST_ACCESS_CYCLES} modelled cycles = ${r.guestProgress.accessesPerKcycle.toFixed(3)} accesses per 1000 cycles`,
    `stopped by ${r.stoppedBy}; ${r.pagesSent} pages sent; modelled copy ${m.totalCopyCycles} cycles, downtime ${m.downtimeCycles} cycles (${m.pageCopyCycles} per page, an estimate)`,
    `source digest ${r.source.memoryDigest}`,
    `destination   ${r.destination.memoryDigest}  ${r.digestMatch ? 'match' : 'MISMATCH: a dirty page was lost'}`,
  );
  return `${lines.join('\n')}\n`;
}
