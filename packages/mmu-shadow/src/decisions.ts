import type { FloodEvent, MmuHost, PrefetchEvent, PteWriteDecision, PteWriteEvent, TrackedWriteEvent, UnsyncEvent } from '@vmexit/core';
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
// VcpuShadowState.decidedByDefault, which asks the host once per kind when it can). For the tracked-write and
// prefetch decisions the fault path (fault.ts) makes that check itself and calls decide*Event only when it
// fails: no call, and no linear address boxed for one, per exit when the MMU decides alone.

export function decideFlood(host: MmuHost, st: VcpuShadowState, seq: number, gfn: number, level: number, writeCount: number, vcpuWriteCount: number): boolean {
  if (st.decidedByDefault(host, 1, 'flood')) return DEFAULT_FLOOD_DECISION;
  const ev: FloodEvent = { kind: 'flood', vcpu: st.vcpu.id, seq, decidedBy: null, gfn, level, writeCount, vcpuWriteCount, decision: null };
  return host.decide(ev, DEFAULT_FLOOD_DECISION);
}

/** The prefetch decision once `st.decidedByDefault(host, 2, 'prefetch')` said no (fault.ts checks that first): the event, through the host. */
export function decidePrefetchEvent(host: MmuHost, st: VcpuShadowState, seq: number, address: number, gfn: number, direct: boolean): boolean {
  const ev: PrefetchEvent = { kind: 'prefetch', vcpu: st.vcpu.id, seq, decidedBy: null, address, gfn, direct, decision: null };
  return host.decide(ev, DEFAULT_PREFETCH_DECISION);
}

export function decideUnsync(host: MmuHost, st: VcpuShadowState, seq: number, gfn: number): boolean {
  if (st.decidedByDefault(host, 3, 'unsync')) return DEFAULT_UNSYNC_DECISION;
  const ev: UnsyncEvent = { kind: 'unsync', vcpu: st.vcpu.id, seq, decidedBy: null, gfn, decision: null };
  return host.decide(ev, DEFAULT_UNSYNC_DECISION);
}

/** The tracked-write decision once `st.decidedByDefault(host, 4, 'tracked-write')` said no (fault.ts checks that first): the event, through the host. */
export function decideTrackedWriteEvent(host: MmuHost, st: VcpuShadowState, seq: number, gfn: number, address: number, errorCode: number): boolean {
  const ev: TrackedWriteEvent = { kind: 'tracked-write', vcpu: st.vcpu.id, seq, decidedBy: null, gfn, address, errorCode, decision: null };
  return host.decide(ev, DEFAULT_TRACKED_WRITE_DECISION);
}

export function decidePteWrite(
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
  if (st.decidedByDefault(host, 0, 'pte-write')) return DEFAULT_PTE_WRITE_DECISION;
  const ev: PteWriteEvent = {
    kind: 'pte-write',
    vcpu: st.vcpu.id,
    seq,
    decidedBy: null,
    gpa,
    size,
    oldLo,
    oldHi,
    newLo,
    newHi,
    level,
    misaligned,
    decision: null,
  };
  return host.decide(ev, DEFAULT_PTE_WRITE_DECISION);
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
