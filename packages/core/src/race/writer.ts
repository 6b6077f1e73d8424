import { ACC_WRITE, PAGE_SIZE } from '../arch/constants.js';
import { hexU64 as hex } from '../arch/hex.js';
import type { GuestMemory } from '../machine/guest-memory.js';
import type { Vcpu } from '../machine/vcpu.js';
import type { DirtyLog } from '../mmu/dirty-log.js';
import { FAST_FIXED, FAST_MORE, FAST_SPURIOUS, pageFaultCanBeFast } from '../mmu/fast-fault.js';
import { WALK_OK, WALK_SIDE_EFFECTS, WalkResult } from '../paging/types.js';
import { walk } from '../paging/walker.js';
import { TLB_READ_SUP, TLB_WRITE_SUP } from '../tlb/tlb.js';
import type { RaceThread } from './thread.js';

/** One guest store of a `GuestWriter`: the 32-bit `value` at `va`. */
export interface GuestWrite {
  readonly va: number;
  readonly value: number;
}

/** An MMU's fast page fault as a step machine (mmu-shadow `FastPageFault`, mmu-tdp `TdpFastPageFault`), as a `GuestWriter` drives it. */
export interface SteppedFastFault {
  /** What the next step does (for schedules). */
  readonly phaseName: string;
  /** Begins the fast path on the fault at `addr` (the va or the gpa the MMU faults on) with `errorCode`. */
  start(addr: number, errorCode: number): void;
  /** One atomic step: FAST_MORE, or the outcome once the lockless section has ended. */
  step(): number;
}

/** What a `GuestWriter` reads of its MMU to decide between the fast and the slow path. */
export interface GuestWriterMmu {
  /** The `fast-page-fault` policy is composed. */
  readonly fastPageFault: boolean;
  /** The VM's dirty log, once attached. */
  readonly dirtyLog: DirtyLog | null;
}

const V_ACCESS = 0;
const V_FAST = 1;
const V_LOCK = 2;
const V_FAULT = 3;
const V_UNLOCK = 4;
const V_DONE = 5;
const V_UNLOCKED = 6;

/**
 * A vCPU of a race scenario that performs guest stores, each one instruction: a TLB hit, or the hardware walk
 * and then the store; or the walk faults into the MMU: the fast page fault (lockless, when dirty logging is on
 * and KVM `page_fault_can_be_fast` holds), and, when it does not fix the fault, the slow path under `mmu_lock`.
 * The MMU-specific parts (which walk status is the MMU's fault, its address and error code, the fast path, the
 * lock mode and the slow path) are the subclass's: mmu-shadow faults on a guest #PF under `mmu_lock`, mmu-tdp
 * on the second stage (EPT violation / #NPF) under `mmu_lock` held for read.
 */
export abstract class GuestWriter implements RaceThread {
  readonly name: string;
  private phase = V_ACCESS;
  private i = 0;
  private addr = 0;
  private errorCode = 0;
  private readonly r = new WalkResult();

  constructor(
    /** The vCPU that stores. */
    protected readonly vcpu: Vcpu,
    private readonly memory: GuestMemory,
    private readonly mmu: GuestWriterMmu,
    private readonly writes: readonly GuestWrite[],
  ) {
    this.name = `vcpu${vcpu.id}`;
    if (writes.length === 0) this.phase = V_DONE;
  }

  /** The walk status that is this MMU's fault (WALK_PAGE_FAULT, WALK_NESTED_FAULT). */
  protected abstract readonly faultStatus: number;
  /** This vCPU's fast page fault. */
  protected abstract readonly fast: SteppedFastFault;
  /** The lock as schedules name it ('mmu_lock', 'mmu_lock (read)'). */
  protected abstract readonly lockName: string;
  /** The address the MMU faults on (the va, or the walk's nested gpa). */
  protected abstract faultAddress(r: WalkResult, va: number): number;
  /** The fault's error code. */
  protected abstract faultErrorCode(r: WalkResult): number;
  /** The schedule's text for the fault of the store to `va`. */
  protected abstract describeFault(va: number, addr: number, errorCode: number): string;
  /** Whether this vCPU could take `mmu_lock` (in its mode) now. */
  protected abstract lockAvailable(): boolean;
  /** Takes `mmu_lock` in this vCPU's mode if free. */
  protected abstract tryLock(): boolean;
  /** Releases `mmu_lock`. */
  protected abstract unlock(): void;
  /** The slow page fault under `mmu_lock` on `addr` (of the store to `va`); returns the MMU's resolution kind. */
  protected abstract slowFault(va: number, addr: number, errorCode: number): string;
  /**
   * The slow page fault's first part, a step of its own before the lock, when the MMU has one (none by default: the
   * slow path begins with the lock). mmu-shadow: the guest walk, which KVM's `FNAME(page_fault)` (paging_tmpl.h) runs
   * before it takes `mmu_lock`. Returns the step's label.
   */
  protected slowFaultUnlocked?(va: number, addr: number, errorCode: number): string;

  get done(): boolean {
    return this.phase === V_DONE;
  }

  runnable(): boolean {
    return this.phase !== V_LOCK || this.lockAvailable();
  }

  step(): string {
    const vcpu = this.vcpu;
    const wr = this.writes[this.i]!;
    switch (this.phase) {
      case V_ACCESS: {
        let off = vcpu.tlb.lookup(wr.va, ACC_WRITE, vcpu.pcid);
        let how = 'TLB hit';
        if (off < 0) {
          const st = walk(vcpu.activeCtx, vcpu.activeMem, wr.va, ACC_WRITE, WALK_SIDE_EFFECTS, this.r);
          if (st === this.faultStatus) {
            this.addr = this.faultAddress(this.r, wr.va);
            this.errorCode = this.faultErrorCode(this.r);
            const { mmu } = this;
            const log = mmu.dirtyLog;
            this.phase = mmu.fastPageFault && log !== null && log.loggingSlots > 0 && pageFaultCanBeFast(this.errorCode) ? V_FAST : this.slowPhase();
            if (this.phase === V_FAST) this.fast.start(this.addr, this.errorCode);
            return this.describeFault(wr.va, this.addr, this.errorCode);
          }
          if (st !== WALK_OK) throw new Error(`${this.name}: the walk of ${hex(wr.va)} ended with status ${st}`);
          off = this.memory.gpaToOffset(this.r.pa);
          vcpu.tlb.fill(wr.va, vcpu.pcid, off - (off % PAGE_SIZE), TLB_READ_SUP | TLB_WRITE_SUP, PAGE_SIZE);
          how = 'walk';
        }
        this.memory.u32[off >>> 2] = wr.value;
        if (++this.i >= this.writes.length) this.phase = V_DONE;
        return `write ${hex(wr.va)} = ${wr.value} (${how})`;
      }
      case V_FAST: {
        const what = this.fast.phaseName;
        const res = this.fast.step();
        if (res === FAST_MORE) return `fast: ${what}`;
        this.phase = res === FAST_FIXED || res === FAST_SPURIOUS ? V_ACCESS : this.slowPhase();
        return `fast: ${what} -> ${res === FAST_FIXED ? 'fixed' : res === FAST_SPURIOUS ? 'spurious' : 'slow path'}`;
      }
      case V_UNLOCKED:
        this.phase = V_LOCK;
        return this.slowFaultUnlocked!(wr.va, this.addr, this.errorCode);
      case V_LOCK:
        if (!this.tryLock()) return `spin on ${this.lockName}`;
        this.phase = V_FAULT;
        return this.lockName;
      case V_FAULT: {
        const kind = this.slowFault(wr.va, this.addr, this.errorCode);
        if (kind !== 'resume') throw new Error(`${this.name}: the fault on ${hex(this.addr)} resolved as ${kind}; the scenario expects a fixed fault`);
        this.phase = V_UNLOCK;
        return 'page fault (slow path)';
      }
      case V_UNLOCK:
        this.unlock();
        this.phase = V_ACCESS;
        return this.lockName.replace('mmu_lock', 'mmu_unlock');
      default:
        throw new Error(`${this.name} stepped after its end`);
    }
  }

  /** Where the slow path begins: its lockless first part, when the MMU has one, else the lock. */
  private slowPhase(): number {
    return this.slowFaultUnlocked === undefined ? V_LOCK : V_UNLOCKED;
  }
}
