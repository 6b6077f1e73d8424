import type {
  FloodEvent,
  MmuDecisionOf,
  MmuEvent,
  MmuHost,
  PrefetchEvent,
  PteWriteDecision,
  PteWriteEvent,
  TrackedWriteEvent,
  UnsyncEvent,
} from '@vmexit/core';
import type { Refillable } from './scratch-events.js';
import type { VcpuShadowState } from './state.js';

/**
 * The five decision points of the shadow MMU that policies may answer, each an MMU event on the vCPU's
 * `mmuEvents` stream (through `MmuHost.decide`):
 *
 * - `flood` (pte-write.ts): is the written page flooded, to be zapped (KVM `detect_write_flooding`)?
 * - `pte-write` (pte-write.ts): what to do with the written sptes: clear, update, or zap the page
 *   (KVM `kvm_mmu_track_write`; `FNAME(update_pte)` of KVM 2007-2021)?
 * - `prefetch` (fault.ts): map the neighbours of a faulting spte (`FNAME(pte_prefetch)`)?
 * - `unsync` (unsync.ts): may a level-1 guest table stay writable, out of sync (`mmu_try_to_unsync_pages`)?
 * - `tracked-write` (fault.ts): unprotect a write-protected gfn instead of emulating the write (KVM 2007's
 *   user-mode write hint, `mmu_unshadow`)?
 *
 * The MMU's own answers, when no policy answers, are today's KVM's for the pte write (never flooded,
 * `zap-spte`: clear the written sptes) and KVM 2007's for the rest (no prefetch, no unsync, emulate).
 */
export const DEFAULT_PTE_WRITE_DECISION: PteWriteDecision = 'zap-spte';
export const DEFAULT_FLOOD_DECISION = false;
export const DEFAULT_PREFETCH_DECISION = false;
export const DEFAULT_UNSYNC_DECISION = false;
export const DEFAULT_TRACKED_WRITE_DECISION = false;

/** KVM's flood threshold (`detect_write_flooding`: `++sp->write_flooding_count >= 3`), for policies. */
export const WRITE_FLOOD_THRESHOLD = 3;

// Each decision builds its event only when something may see it (MmuHost.decideByDefault, through
// VcpuShadowState.decidedByDefault, which asks the host once per kind when it can). The hot paths make that check
// themselves and call decide*Event only when it fails: the fault path (fault.ts) for the tracked-write and prefetch
// decisions, so that no linear address is boxed for a call per exit when the MMU decides alone; the write hook
// (pte-write.ts) for the flood and pte-write decisions, so that what it branches on is a boolean it made, not the
// merge of a default and whatever `host.decide` may return.
//
// An event that policies decide is built once per vCPU and kind and refilled for each decision while nothing
// outside the pipeline can keep it (MmuHost.reusesEvents: no tracer, recorder or mmuEvents$ subscriber), as
// VmHooks refills its exception exit: the policies' operators see it only while it is in the pipeline. A
// decision asked while another is in flight (a policy that calls back into the MMU) takes a new object. The
// scratch field is written only when its event is new: storing an object calls V8's write barrier while a major GC
// marks, which a hot path that stores nothing avoids.

/** Whether this decision may refill the vCPU's scratch event (asked per decision: a subscriber may come between runs). */
function reusable(host: MmuHost, st: VcpuShadowState): boolean {
  return !st.events.inFlight && host.reusesEvents !== undefined && host.reusesEvents(st.vcpu.id);
}

/** `host.decide` of a scratch event, marked in flight while the pipeline has it. */
function decideScratch<E extends MmuEvent>(host: MmuHost, st: VcpuShadowState, ev: E, fallback: MmuDecisionOf<E>): MmuDecisionOf<E> {
  const scratch = st.events;
  scratch.inFlight = true;
  try {
    return host.decide(ev, fallback);
  } finally {
    scratch.inFlight = false;
  }
}

// Each kind's event builder: `into` (the vCPU's scratch event of that kind) refilled with this decision's fields,
// or a new event when `into` is null.

function floodEvent(
  into: Refillable<FloodEvent> | null,
  vcpu: number,
  seq: number,
  gfn: number,
  level: number,
  writeCount: number,
  vcpuWriteCount: number,
): Refillable<FloodEvent> {
  if (into === null) return { kind: 'flood', vcpu, seq, decidedBy: null, gfn, level, writeCount, vcpuWriteCount, decision: null };
  into.seq = seq;
  into.decidedBy = null;
  into.gfn = gfn;
  into.level = level;
  into.writeCount = writeCount;
  into.vcpuWriteCount = vcpuWriteCount;
  into.decision = null;
  return into;
}

/**
 * The flood decision once `st.decidedByDefault(host, 1, 'flood')` said no (pte-write.ts checks that first; by default a
 * page is never flooded, DEFAULT_FLOOD_DECISION): the event, through the host.
 */
export function decideFloodEvent(
  host: MmuHost,
  st: VcpuShadowState,
  seq: number,
  gfn: number,
  level: number,
  writeCount: number,
  vcpuWriteCount: number,
): boolean {
  const vcpu = st.vcpu.id;
  if (!reusable(host, st)) return host.decide(floodEvent(null, vcpu, seq, gfn, level, writeCount, vcpuWriteCount), DEFAULT_FLOOD_DECISION);
  const ev = floodEvent(st.events.flood, vcpu, seq, gfn, level, writeCount, vcpuWriteCount);
  if (st.events.flood !== ev) st.events.flood = ev;
  return decideScratch(host, st, ev, DEFAULT_FLOOD_DECISION);
}

function prefetchEvent(
  into: Refillable<PrefetchEvent> | null,
  vcpu: number,
  seq: number,
  address: number,
  gfn: number,
  direct: boolean,
): Refillable<PrefetchEvent> {
  if (into === null) return { kind: 'prefetch', vcpu, seq, decidedBy: null, address, gfn, direct, decision: null };
  into.seq = seq;
  into.decidedBy = null;
  into.address = address;
  into.gfn = gfn;
  into.direct = direct;
  into.decision = null;
  return into;
}

/** The prefetch decision once `st.decidedByDefault(host, 2, 'prefetch')` said no (fault.ts checks that first): the event, through the host. */
export function decidePrefetchEvent(host: MmuHost, st: VcpuShadowState, seq: number, address: number, gfn: number, direct: boolean): boolean {
  const vcpu = st.vcpu.id;
  if (!reusable(host, st)) return host.decide(prefetchEvent(null, vcpu, seq, address, gfn, direct), DEFAULT_PREFETCH_DECISION);
  const ev = prefetchEvent(st.events.prefetch, vcpu, seq, address, gfn, direct);
  if (st.events.prefetch !== ev) st.events.prefetch = ev;
  return decideScratch(host, st, ev, DEFAULT_PREFETCH_DECISION);
}

function unsyncEvent(into: Refillable<UnsyncEvent> | null, vcpu: number, seq: number, gfn: number): Refillable<UnsyncEvent> {
  if (into === null) return { kind: 'unsync', vcpu, seq, decidedBy: null, gfn, decision: null };
  into.seq = seq;
  into.decidedBy = null;
  into.gfn = gfn;
  into.decision = null;
  return into;
}

export function decideUnsync(host: MmuHost, st: VcpuShadowState, seq: number, gfn: number): boolean {
  if (st.decidedByDefault(host, 3, 'unsync')) return DEFAULT_UNSYNC_DECISION;
  const vcpu = st.vcpu.id;
  if (!reusable(host, st)) return host.decide(unsyncEvent(null, vcpu, seq, gfn), DEFAULT_UNSYNC_DECISION);
  const ev = unsyncEvent(st.events.unsync, vcpu, seq, gfn);
  if (st.events.unsync !== ev) st.events.unsync = ev;
  return decideScratch(host, st, ev, DEFAULT_UNSYNC_DECISION);
}

function trackedWriteEvent(
  into: Refillable<TrackedWriteEvent> | null,
  vcpu: number,
  seq: number,
  gfn: number,
  address: number,
  errorCode: number,
): Refillable<TrackedWriteEvent> {
  if (into === null) return { kind: 'tracked-write', vcpu, seq, decidedBy: null, gfn, address, errorCode, decision: null };
  into.seq = seq;
  into.decidedBy = null;
  into.gfn = gfn;
  into.address = address;
  into.errorCode = errorCode;
  into.decision = null;
  return into;
}

/** The tracked-write decision once `st.decidedByDefault(host, 4, 'tracked-write')` said no (fault.ts checks that first): the event, through the host. */
export function decideTrackedWriteEvent(host: MmuHost, st: VcpuShadowState, seq: number, gfn: number, address: number, errorCode: number): boolean {
  const vcpu = st.vcpu.id;
  if (!reusable(host, st)) return host.decide(trackedWriteEvent(null, vcpu, seq, gfn, address, errorCode), DEFAULT_TRACKED_WRITE_DECISION);
  const ev = trackedWriteEvent(st.events.trackedWrite, vcpu, seq, gfn, address, errorCode);
  if (st.events.trackedWrite !== ev) st.events.trackedWrite = ev;
  return decideScratch(host, st, ev, DEFAULT_TRACKED_WRITE_DECISION);
}

function pteWriteEvent(
  into: Refillable<PteWriteEvent> | null,
  vcpu: number,
  seq: number,
  gpa: number,
  size: number,
  oldLo: number,
  oldHi: number,
  newLo: number,
  newHi: number,
  level: number,
  misaligned: boolean,
): Refillable<PteWriteEvent> {
  // The halves unsigned, whatever the write hook was given (pteWrite takes them signed on its hot path).
  oldLo >>>= 0;
  oldHi >>>= 0;
  newLo >>>= 0;
  newHi >>>= 0;
  if (into === null) return { kind: 'pte-write', vcpu, seq, decidedBy: null, gpa, size, oldLo, oldHi, newLo, newHi, level, misaligned, decision: null };
  into.seq = seq;
  into.decidedBy = null;
  into.gpa = gpa;
  into.size = size;
  into.oldLo = oldLo;
  into.oldHi = oldHi;
  into.newLo = newLo;
  into.newHi = newHi;
  into.level = level;
  into.misaligned = misaligned;
  into.decision = null;
  return into;
}

/**
 * The pte-write decision once `st.decidedByDefault(host, 0, 'pte-write')` said no (pte-write.ts checks that first; by
 * default DEFAULT_PTE_WRITE_DECISION): the event, through the host.
 */
export function decidePteWriteEvent(
  host: MmuHost,
  st: VcpuShadowState,
  seq: number,
  gpa: number,
  size: number,
  oldLo: number,
  oldHi: number,
  newLo: number,
  newHi: number,
  level: number,
  misaligned: boolean,
): PteWriteDecision {
  const vcpu = st.vcpu.id;
  if (!reusable(host, st)) {
    return host.decide(pteWriteEvent(null, vcpu, seq, gpa, size, oldLo, oldHi, newLo, newHi, level, misaligned), DEFAULT_PTE_WRITE_DECISION);
  }
  const ev = pteWriteEvent(st.events.pteWrite, vcpu, seq, gpa, size, oldLo, oldHi, newLo, newHi, level, misaligned);
  if (st.events.pteWrite !== ev) st.events.pteWrite = ev;
  return decideScratch(host, st, ev, DEFAULT_PTE_WRITE_DECISION);
}

/**
 * KVM `detect_write_misaligned` (arch/x86/kvm/mmu/mmu.c): a write that spans two gptes, or is shorter than
 * 4 bytes, except a 1-byte write at a gpte-aligned offset (Linux updates status bits with `andb`).
 */
export function detectWriteMisaligned(gpa: number, bytes: number, pteSize: number): boolean {
  const offset = gpa & 0xfff; // gpa % 4096 (an integer below 2^53), without fmod
  if ((offset & (pteSize - 1)) === 0 && bytes === 1) return false;
  const misaligned = ((offset ^ (offset + bytes - 1)) & ~(pteSize - 1)) !== 0;
  return misaligned || bytes < 4;
}

/**
 * KVM `get_written_sptes` (arch/x86/kvm/mmu/mmu.c), with KVM's quadrant math (DESIGN.md, "Quadrants"): which sptes of a
 * shadow page with role level `level` and quadrant `quadrant` a write at `gpa` touches. Returns the first
 * spte index * 4 + the count (1 or 2), or -1 when the write belongs to another quadrant's alias.
 */
export function writtenSptes(gpa: number, fourByteGpte: boolean, level: number, quadrant: number): number {
  let pageOffset = gpa & 0xfff; // gpa % 4096
  let nspte = 1;
  if (fourByteGpte) {
    pageOffset <<= 1; // 4-byte gpte index -> 8-byte spte index
    // A 32-bit guest's 4 MiB PDE is two 2 MiB shadow PDEs.
    if (level === 2) {
      pageOffset &= ~7; // kill the rounding error of a write inside the PDE
      pageOffset <<= 1;
      nspte = 2;
    }
    const q = pageOffset >>> 12;
    pageOffset &= 0xfff;
    if (q !== quadrant) return -1;
  }
  return (pageOffset >>> 3) * 4 + nspte;
}
