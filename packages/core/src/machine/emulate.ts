import * as arch from '../arch/constants.js';
import * as pagingTypes from '../paging/types.js';
import { WalkResult } from '../paging/types.js';
import { walk } from '../paging/walker.js';
import * as faultActions from './hooks.js';
import type { FaultAction } from './hooks.js';
import * as ram from './ram-access.js';
import type { Vcpu } from './vcpu.js';

// Module-local copies of the imported constants (and leaf helpers) the access and exit paths use. V8 folds a module's
// own constants into its compiled code, but reads an imported binding through its module cell, with a check, on
// every use (DESIGN.md, "Speed").
const { ACC_WRITE, GP_VECTOR, PF_VECTOR } = arch;
const { WALK_OK, WALK_PAGE_FAULT, WALK_SIDE_EFFECTS } = pagingTypes;
const { FAULT_DELIVER, FAULT_DONE, FAULT_RETRY } = faultActions;
const { openBus, storeAt } = ram;

/**
 * What the emulator tells after a store to guest RAM: the MMU's write hook (KVM `kvm_mmu_track_write`).
 * Declared here, where it is consumed; `Mmu` (vm/mmu.ts) extends it.
 */
export interface WriteTracker {
  /** After an emulated store of `size` bytes at `gpa`, with the old and new values (32-bit halves). */
  trackWrite(vcpu: Vcpu, gpa: number, size: number, oldLo: number, oldHi: number, newLo: number, newHi: number): void;
}

/** emulatePendingAccess could not emulate the access (see Vcpu.pendingEmulatable). */
export const EMULATION_FAILED = -1;

/** What the emulator did; `vector` is the exception to deliver when the result is FAULT_DELIVER. */
export interface EmulationOutcome {
  action: FaultAction | typeof EMULATION_FAILED;
  vector: number;
  gpa: number;
  /** The access was completed as MMIO (no memslot, or a store to read-only RAM), FAULT_DONE. */
  mmio?: boolean;
  /** The emulator's guest walk (one per outcome, reused; created on first use when absent); not updated when `folded`. */
  walk?: WalkResult;
  /** The emulator used the hypervisor's walk of the guest's tables for this access (Vcpu.noteGuestWalk) instead of its own. */
  folded?: boolean;
}

/**
 * Emulates the access in flight on `vcpu` (`pendingVa`, `pendingAccess`, `pendingSize`, `pendingLo/Hi`) as
 * KVM's x86 emulator does after RET_PF_EMULATE: translate the linear address through the GUEST's own tables
 * (vcpu.ctx over guest memory, setting guest A/D bits as the hardware would; or take the translation the
 * hypervisor's own walk found for this access, Vcpu.noteGuestWalk), perform the access on guest
 * RAM, and for a store call the MMU's write hook afterwards with the old and new values
 * (`kvm_mmu_track_write`, arch/x86/kvm/mmu/mmu.c). A guest walk that faults injects that #PF (the emulator's
 * `inject_emulated_exception`). A guest-physical address with no RAM is MMIO (FAULT_DONE after the caller
 * counts its user-space exit: reads return all ones). Vector stores (16 bytes) are not emulated:
 * EMULATION_FAILED, after which KVM unprotects the gfn and lets the guest retry when the gfn was a
 * shadowed page table (`kvm_mmu_unprotect_page`), and reports the failure to user space otherwise (VmHooks).
 */
export function emulatePendingAccess(vcpu: Vcpu, mmu: WriteTracker | null, out: EmulationOutcome): EmulationOutcome {
  out.vector = PF_VECTOR;
  out.gpa = -1;
  out.mmio = false;
  // The hypervisor's walk of the guest's tables for this very access, when it made one (Vcpu.noteGuestWalk);
  // otherwise the emulator's own.
  let gpa = vcpu.takeGuestWalk();
  out.folded = gpa >= 0;
  if (gpa < 0) {
    const r = (out.walk ??= new WalkResult());
    const st = walk(vcpu.ctx, vcpu.memory, vcpu.pendingVa, vcpu.pendingAccess, WALK_SIDE_EFFECTS, r);
    if (st === WALK_PAGE_FAULT) {
      vcpu.deliverErrorCode = r.errorCode;
      out.action = FAULT_DELIVER;
      return out;
    }
    if (st !== WALK_OK) {
      vcpu.deliverErrorCode = 0;
      out.vector = GP_VECTOR;
      out.action = FAULT_DELIVER;
      return out;
    }
    gpa = r.pa;
  }
  out.gpa = gpa;
  const mem = vcpu.memory;
  const write = (vcpu.pendingAccess & ACC_WRITE) !== 0;
  // A load reads a page never written through the zero page; a store backs the page, unless it is read-only RAM,
  // which a store never changes, or a store the emulator cannot do (it fails below, having stored nothing): no
  // page is backed for nothing.
  const off = !write ? mem.readOffset(gpa) : mem.isReadonly(gpa) ? -1 : vcpu.pendingEmulatable === true ? mem.gpaToOffset(gpa) : mem.readOffset(gpa);
  if (off < 0) {
    vcpu.emulatedLo = openBus(vcpu.pendingSize);
    vcpu.emulatedHi = vcpu.pendingSize === 8 ? 0xffffffff : 0;
    out.mmio = true;
    out.action = FAULT_DONE;
    return out;
  }
  if (vcpu.pendingEmulatable !== true) {
    out.action = EMULATION_FAILED;
    return out;
  }
  const size = vcpu.pendingSize;
  if (!write) {
    const v = mem.view;
    vcpu.emulatedLo = size === 1 ? mem.u8[off]! : size === 2 ? v.getUint16(off, true) : v.getUint32(off, true);
    vcpu.emulatedHi = size === 8 ? v.getUint32(off + 4, true) : 0;
    out.action = FAULT_DONE;
    return out;
  }
  // A store. Size 0 is a data-less store (a trace record): the byte that is there is written back.
  const n = size === 0 ? 1 : size;
  const v = mem.view;
  const oldLo = n === 1 ? mem.u8[off]! : n === 2 ? v.getUint16(off, true) : v.getUint32(off, true);
  const oldHi = n === 8 ? v.getUint32(off + 4, true) : 0;
  const newLo = size === 0 ? oldLo : n === 1 ? vcpu.pendingLo & 0xff : n === 2 ? vcpu.pendingLo & 0xffff : vcpu.pendingLo >>> 0;
  const newHi = size === 0 ? oldHi : n === 8 ? vcpu.pendingHi >>> 0 : 0;
  storeAt(mem, off, n, newLo, newHi);
  if (mmu !== null) mmu.trackWrite(vcpu, gpa, n, oldLo, oldHi, newLo, newHi);
  out.action = FAULT_DONE;
  return out;
}

/** A fresh outcome object (one per caller, reused across calls). */
export function createEmulationOutcome(): EmulationOutcome {
  return { action: FAULT_RETRY, vector: PF_VECTOR, gpa: -1, mmio: false, walk: new WalkResult(), folded: false };
}
