import * as arch from '../arch/constants.js';
import { hexU64 } from '../arch/hex.js';
import * as modes from '../arch/modes.js';
import type { PagingModeId } from '../arch/modes.js';
import type { PhysicalMemory } from '../memory/physical.js';
import { NestedPagingContext } from '../paging/nested-context.js';
import type { PagingContext, SecondStage } from '../paging/types.js';
import * as pagingTypes from '../paging/types.js';
import { WalkResult } from '../paging/types.js';
import { loadPdptes, rightsFault, walk } from '../paging/walker.js';
import * as tlb from '../tlb/tlb.js';
import { Tlb } from '../tlb/tlb.js';
import type { GuestMemory } from './guest-memory.js';
import { MachineError } from './errors.js';
import { cr0Loaded, cr0WriteFaults, cr4WriteFaults, crOperand, eferWriteFaults } from './cr-checks.js';
import * as ram from './ram-access.js';
import { NativeHooks, type FaultAction, type VcpuHooks } from './hooks.js';
import * as faultActions from './hooks.js';
// Module-local copies of the imported constants (and leaf helpers) the access and exit paths use. V8 folds a module's
// own constants into its compiled code, but reads an imported binding through its module cell, with a check, on
// every use (DESIGN.md, "Speed").
const { ACC_FETCH, ACC_READ, ACC_USER, ACC_WRITE, CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PCIDE, CR4_PGE, CR4_PKE, CR4_PSE, CR4_SMAP, CR4_SMEP } = arch;
const { EFER_LMA, EFER_LME, EFER_NXE, GP_VECTOR, PAGE_SIZE, pageNumber, PF_VECTOR } = arch;
const { MODE_LEGACY32, MODE_LONG4, MODE_LONG5, MODE_PAE } = modes;
const { NESTED_R, NESTED_W, NESTED_X, WALK_GP, WALK_NESTED_FAULT, WALK_OK, WALK_PAGE_FAULT, WALK_SIDE_EFFECTS } = pagingTypes;
const { TLB_FETCH_SUP, TLB_FETCH_USER, TLB_GLOBAL, TLB_READ_SUP, TLB_READ_USER, TLB_WRITE_SUP, TLB_WRITE_USER } = tlb;
const { checkScalarSpan, checkSpan, copyElements, fillElements, OPEN_BUS, openBus, storeAt, zeroStore } = ram;
const { FAULT_DELIVER, FAULT_DONE, FAULT_RETRY } = faultActions;

/** MSR number of IA32_EFER, the `cr` argument of VcpuHooks.crWrite for an EFER write. */
export const MSR_EFER = 0xc0000080;

/** A guest exception handler: the guest's IDT entry for one vector. Runs at CPL 0. */
export type ExceptionHandler = (vcpu: Vcpu, vector: number, errorCode: number, cr2: number) => void;

/** Result of the slow path: a RAM buffer offset, or one of these. */
const SLOW_DONE = -2; // completed by emulation (or an MMIO access): nothing left to do
/** How many times one access may be re-executed before the vCPU calls it a fault loop. */
const MAX_RETRIES = 64;

/** One vCPU: the architectural state and the guest-visible operations (see core DESIGN.md, "The vCPU"). */
export class Vcpu {
  readonly id: number;
  readonly memory: GuestMemory;
  /** The guest's paging state, as it programmed CR0/CR3/CR4/EFER. */
  readonly ctx: PagingContext;
  /**
   * What the hardware walks: `ctx` natively; under TDP a `NestedPagingContext` over `ctx` with the second
   * stage (`setSecondStage`); the shadow tables under shadow paging.
   */
  activeCtx: PagingContext;
  activeMem: PhysicalMemory;
  /**
   * The processor's MAXPHYADDR (the host's), 36..52: what the hardware checks when it walks the guest's tables
   * under TDP. `ctx.maxPhyAddr` is the guest's (CPUID.80000008H:EAX[7:0] as the hypervisor reports it), which
   * may be smaller (KVM allow_smaller_maxphyaddr). Natively there is one processor: both are the same.
   */
  readonly hostMaxPhyAddr: number;
  /** The second stage (EPT/NPT) in force, or null (native, shadow paging). */
  secondStage: SecondStage | null = null;
  readonly tlb: Tlb;
  hooks: VcpuHooks<Vcpu>;

  cr0 = 0;
  cr3 = 0;
  cr4 = 0;
  efer = 0;
  cr2 = 0;
  cpl: 0 | 3 = 0;
  /** The current PCID (CR3[11:0] when CR4.PCIDE=1, else 0). */
  pcid = 0;
  /** Error code an exception is delivered with (see VcpuHooks.exception). */
  deliverErrorCode = 0;
  /** High half of the last 8-byte load. */
  valueHi = 0;

  /** The access in flight, for emulation: linear address, PFERR kind, size, store value. */
  pendingVa = 0;
  pendingAccess = 0;
  pendingSize = 0;
  pendingLo = 0;
  pendingHi = 0;
  /** False for accesses the emulator does not handle (16-byte vector stores), see emulatePendingAccess. */
  pendingEmulatable = true;
  /** A load completed by emulation leaves its value here. */
  emulatedLo = 0;
  emulatedHi = 0;
  /**
   * The guest-physical address that the hypervisor's own successful walk of the guest's tables found for the
   * access in flight (`noteGuestWalk`), or -1: the emulator completes that access at it instead of walking the
   * same tables again (`takeGuestWalk`). Cleared when an exit starts (`clearGuestWalk`) and when taken.
   */
  private walkedGpa = -1;
  private walkedVa = 0;
  private walkedAccess = 0;

  /** Guest-visible counters. */
  accesses = 0;
  /**
   * Hardware walks of the active tables: one per TLB miss as the hardware has them. An access whose walk faults
   * (a #PF the guest handles, an exit the hypervisor resolves) is re-executed, misses again and walks again, so
   * this counts more than `tlb.misses`, which counts each access that missed once.
   */
  walks = 0;
  /**
   * Memory references of those walks: paging-structure entries read (one-dimensional: top level down to where
   * the walk ended, PAE's PDPTE registers excluded), plus under TDP every second-stage entry read
   * (`WalkResult.refs`: up to 24 for 4-level guest and second-stage tables).
   */
  walkRefs = 0;
  exceptions = 0;
  pageFaultsDelivered = 0;

  private readonly idt: (ExceptionHandler | undefined)[] = [];
  private handlerDepth = 0;
  private readonly walkResult = new WalkResult();
  /** The second-stage fault of a PDPTE load (kept apart from the access walk's result). */
  private readonly pdpteResult = new WalkResult();
  /**
   * Pages never written are backed by the shared zero page (GuestMemory): a TLB entry may point there. Per TLB
   * entry, the guest page it stands for (valid while the entry's host page is 0), and per such guest page the
   * entries that may point to the zero page for it, so that backing the page re-points them (see `zeroBacked`).
   */
  private readonly zeroGfn: Float64Array;
  private readonly zeroRefs = new Map<number, number[]>();

  constructor(id: number, memory: GuestMemory, options: { maxPhyAddr?: number; hostMaxPhyAddr?: number; tlbEntries?: number } = {}) {
    this.id = id;
    const hostMaxPhyAddr = options.hostMaxPhyAddr ?? options.maxPhyAddr ?? 46;
    if (!Number.isInteger(hostMaxPhyAddr) || hostMaxPhyAddr < 36 || hostMaxPhyAddr > 52) {
      throw new RangeError(`vCPU ${id}: host MAXPHYADDR ${hostMaxPhyAddr} is outside 36..52`);
    }
    this.hostMaxPhyAddr = hostMaxPhyAddr;
    this.memory = memory;
    this.ctx = {
      mode: MODE_LEGACY32,
      cr3: 0,
      pdpteLo: new Uint32Array(4),
      pdpteHi: new Uint32Array(4),
      maxPhyAddr: options.maxPhyAddr ?? 46,
      cr0Wp: false,
      cr4Pse: false,
      cr4Pge: false,
      cr4Smep: false,
      cr4Smap: false,
      cr4Pke: false,
      eferNxe: false,
      eflagsAc: false,
      pkru: 0,
      nested: null,
    };
    this.activeCtx = this.ctx;
    this.activeMem = memory;
    this.tlb = new Tlb(options.tlbEntries ?? 4096);
    this.zeroGfn = new Float64Array(this.tlb.size).fill(-1);
    memory.onBack((gfn, offset) => this.zeroBacked(gfn, offset));
    this.hooks = new NativeHooks();
  }

  /** CR0.PG: paging is on. Every guest access needs it (real mode and nonpaging are not modelled). */
  get pagingEnabled(): boolean {
    return (this.cr0 & CR0_PG) !== 0;
  }

  get mode(): PagingModeId {
    return this.ctx.mode;
  }

  get rflagsAc(): boolean {
    return this.ctx.eflagsAc;
  }

  get pkru(): number {
    return this.ctx.pkru;
  }

  /** Registers the guest's handler for `vector` (an IDT entry). */
  setExceptionHandler(vector: number, handler: ExceptionHandler): void {
    this.idt[vector] = handler;
  }

  // ---------------------------------------------------------------------------------------------------
  // Guest-visible memory operations. The hot path: a TLB lookup; everything else is in slowPath().

  /** One access of kind `kind` (ACC_READ, ACC_WRITE or ACC_FETCH) with no data, as a trace record replays. */
  touch(va: number, kind: number): void {
    const access = kind | (this.cpl === 3 ? ACC_USER : 0);
    this.accesses++;
    if (this.tlb.lookup(va, access, this.pcid) >= 0) return;
    // A store with no data (size 0): emulation writes back the byte that is there; the data never changes.
    this.setPending(va, access, (kind & ACC_WRITE) !== 0 ? 0 : 1, 0, 0);
    this.slowPath(va, access);
  }

  /** A load of `size` (1, 2, 4 or 8) bytes. For 8 bytes the low half is returned, the high half is in valueHi. */
  read(va: number, size: number): number {
    return this.load(va, size, ACC_READ);
  }

  /** An instruction fetch of `size` bytes. */
  fetch(va: number, size: number): number {
    return this.load(va, size, ACC_FETCH);
  }

  /** A store of `size` (1, 2, 4 or 8) bytes: `lo` (and `hi` for 8 bytes). */
  write(va: number, size: number, lo: number, hi = 0): void {
    const access = ACC_WRITE | (this.cpl === 3 ? ACC_USER : 0);
    this.accesses++;
    checkScalarSpan(va, size);
    let off = this.tlb.lookup(va, access, this.pcid);
    if (off < 0) {
      this.setPending(va, access, size, lo, hi);
      off = this.slowPath(va, access);
      if (off < 0) return; // emulated, or dropped (MMIO write)
    }
    // The zero page (a page never written): zeros change nothing; anything else backs the page first.
    if (off < PAGE_SIZE && (off = this.unzero(va, off, zeroStore(size, lo, hi))) < 0) return;
    storeAt(this.memory, off, size, lo, hi);
  }

  /**
   * `rep stos`: `count` stores of `elemSize` (1, 2, 4, 8, or 16 for a vector store of the value repeated)
   * bytes from `va` upwards, one translation per page. A page whose store is emulated is stored element by
   * element (each element may exit).
   */
  repStos(va: number, count: number, elemSize: number, lo: number, hi = 0): void {
    const access = ACC_WRITE | (this.cpl === 3 ? ACC_USER : 0);
    const store = elemSize === 16 ? 8 : elemSize;
    let i = 0;
    while (i < count) {
      const a = va + i * elemSize;
      checkSpan(a, elemSize);
      this.accesses++;
      let off = this.tlb.lookup(a, access, this.pcid);
      if (off < 0) {
        this.setPending(a, access, elemSize, lo, hi);
        this.pendingEmulatable = elemSize <= 8;
        off = this.slowPath(a, access);
        this.pendingEmulatable = true;
        if (off < 0) {
          i++;
          continue;
        }
      }
      // The rest of this page in one go: every element of it is a store the TLB now allows.
      const inPage = Math.min(count - i, Math.floor((PAGE_SIZE - (a & 0xfff)) / elemSize));
      const n = Math.max(1, inPage);
      const pieces = (n * elemSize) / store;
      if (off < PAGE_SIZE) off = this.unzero(a, off, zeroStore(store, lo, hi));
      if (off >= 0) fillElements(this.memory, off, pieces, store, lo, hi);
      this.accesses += n - 1;
      i += n;
    }
  }

  /** `rep movs`: copies `count` elements of `elemSize` bytes from `src` to `dst`, one translation per page per side. */
  repMovs(dst: number, src: number, count: number, elemSize: number): void {
    const user = this.cpl === 3 ? ACC_USER : 0;
    let i = 0;
    while (i < count) {
      const s = src + i * elemSize;
      const d = dst + i * elemSize;
      checkSpan(s, elemSize);
      checkSpan(d, elemSize);
      const room = Math.min(PAGE_SIZE - (s & 0xfff), PAGE_SIZE - (d & 0xfff));
      const n = Math.max(1, Math.min(count - i, Math.floor(room / elemSize)));
      // Source first, as the instruction reads before it writes.
      const lo = this.load(s, elemSize, ACC_READ);
      const hi = this.valueHi;
      this.accesses++;
      let doff = this.tlb.lookup(d, ACC_WRITE | user, this.pcid);
      if (doff < 0) {
        this.setPending(d, ACC_WRITE | user, elemSize, lo, hi);
        doff = this.slowPath(d, ACC_WRITE | user);
        if (doff < 0) {
          i++;
          continue;
        }
      }
      // The rest of the page is copied below from a source that need not be zeros: back the zero page.
      if (doff < PAGE_SIZE) doff = this.unzero(d, doff, false);
      storeAt(this.memory, doff, elemSize, lo, hi);
      if (n > 1) {
        const soff = this.tlb.lookup(s, ACC_READ | user, this.pcid);
        if (soff >= 0) {
          copyElements(this.memory.u8, doff + elemSize, soff + elemSize, (n - 1) * elemSize, elemSize);
          this.accesses += 2 * (n - 1);
          i += n;
          continue;
        }
      }
      i++;
    }
  }

  // ---------------------------------------------------------------------------------------------------
  // Control registers (SDM Vol. 3A §2.5, §4.1, §4.10.4).

  /**
   * MOV to CR0. Invalid values are #GP(0), CR0 unchanged, and reserved bits of CR0[31:0] are ignored (cr0WriteFaults).
   * Changing PG or WP flushes the TLB (§4.10.4.1; WP because TLB permissions were computed under it).
   * In PAE paging a change of PG, CD (bit 30) or NW (bit 29) reloads the PDPTE registers (§4.4.1).
   */
  movToCr0(value: number): void {
    const operand = crOperand(this, value);
    if (cr0WriteFaults(this, value)) return this.crWriteFault(0, operand);
    const old = this.cr0;
    const v = cr0Loaded(value);
    this.cr0 = v;
    this.updateMode();
    if (this.pagingEnabled && this.ctx.mode === MODE_PAE && ((old ^ v) & (CR0_PG | 0x60000000)) !== 0 && !this.reloadPdptes()) {
      this.cr0 = old;
      this.updateMode();
      this.crWriteFault(0, v);
      return;
    }
    if (((old ^ v) & (CR0_PG | CR0_WP)) !== 0) this.tlb.flushAll(false);
    this.hooks.crWrite(this, 0, old, operand);
  }

  /**
   * MOV to CR3 (§4.10.4.1): the new root; in PAE mode the PDPTE registers are loaded (a present PDPTE with
   * a reserved bit set is #GP and CR3 is unchanged, §4.4.1; under a hypervisor that intercepts the write,
   * the exit comes first, see VcpuHooks.crWriteFault). Non-global TLB entries are flushed; with CR4.PCIDE
   * those of the new PCID, unless `noFlush` (bit 63 of the source operand) is set.
   */
  movToCr3(value: number, noFlush = false): void {
    value = crOperand(this, value); // a 32-bit operand outside 64-bit mode (Vol. 2B MOV)
    const old = this.cr3;
    const oldCtxCr3 = this.ctx.cr3;
    const pcide = (this.cr4 & CR4_PCIDE) !== 0;
    // IA-32e mode: operand bits 63:M are reserved (§4.5.2, Tables 4-12/4-13; bit 63 is the no-flush hint only
    // with CR4.PCIDE): #GP(0), CR3 unchanged (Vol. 2B MOV). M is the processor's under TDP, else the guest's.
    const m = this.secondStage !== null ? this.hostMaxPhyAddr : this.ctx.maxPhyAddr;
    if ((this.efer & EFER_LMA) !== 0 && ((noFlush && !pcide) || !(value < 2 ** m))) return this.crWriteFault(3, value);
    this.cr3 = value;
    this.ctx.cr3 = this.ctx.mode === MODE_PAE ? value - (value % 32) : value - (value % PAGE_SIZE);
    if (this.pagingEnabled && this.ctx.mode === MODE_PAE && !this.reloadPdptes()) {
      this.cr3 = old;
      this.ctx.cr3 = oldCtxCr3;
      this.crWriteFault(3, value);
      return;
    }
    if (pcide) {
      this.pcid = value % PAGE_SIZE;
      if (!noFlush) this.tlb.flushPcid(this.pcid);
    } else {
      this.tlb.flushAll((this.cr4 & CR4_PGE) !== 0);
    }
    this.hooks.crWrite(this, 3, old, value);
  }

  /**
   * MOV to CR4. PGE, PAE, PSE, PCIDE, SMEP, SMAP, PKE, LA57 changes flush the whole TLB (§4.10.4.1 for PGE
   * and PCIDE; the others because TLB permissions were computed under them). In PAE mode, changes of PAE,
   * PGE, PSE or SMEP reload the PDPTE registers (§4.4.1).
   */
  movToCr4(value: number): void {
    // #GP(0), CR4 unchanged: reserved bits, PCIDE outside IA-32e mode or with CR3[11:0] != 0, PAE or LA57 in IA-32e mode.
    const operand = crOperand(this, value);
    if (cr4WriteFaults(this, value)) return this.crWriteFault(4, operand);
    const old = this.cr4;
    const v = value >>> 0;
    this.cr4 = v;
    this.updateMode();
    const changed = old ^ v;
    if (this.pagingEnabled && this.ctx.mode === MODE_PAE && (changed & (CR4_PAE | CR4_PGE | CR4_PSE | CR4_SMEP)) !== 0 && !this.reloadPdptes()) {
      this.cr4 = old;
      this.updateMode();
      this.crWriteFault(4, v);
      return;
    }
    if ((changed & (CR4_PGE | CR4_PAE | CR4_PSE | CR4_PCIDE | CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_LA57)) !== 0) this.tlb.flushAll(false);
    if ((v & CR4_PCIDE) === 0) this.pcid = 0;
    this.hooks.crWrite(this, 4, old, operand);
  }

  /**
   * WRMSR IA32_EFER. Reserved bits, or an LME change with paging on, are #GP(0), EFER unchanged (eferWriteFaults).
   * LMA follows LME and CR0.PG (§9.8.5; a written LMA is ignored); an NXE change flushes the TLB.
   */
  writeEfer(value: number): void {
    if (eferWriteFaults(this, value)) return this.crWriteFault(MSR_EFER, value);
    const old = this.efer;
    this.efer = value >>> 0;
    this.updateMode();
    if (((old ^ this.efer) & (EFER_NXE | EFER_LME)) !== 0) this.tlb.flushAll(false);
    this.hooks.crWrite(this, MSR_EFER, old, value);
  }

  /** INVLPG (§4.10.4.1): invalidates the TLB entries for the page holding `va`, then tells the hooks. */
  invlpg(va: number): void {
    this.tlb.invlpg(va, this.pcid);
    this.hooks.invlpg(this, va);
  }

  /** Switches the current privilege level (the guest model's kernel/user transitions). */
  setCpl(cpl: 0 | 3): void {
    this.cpl = cpl;
  }

  /** STAC / CLAC: RFLAGS.AC, which lifts SMAP for explicit supervisor accesses (§4.6.1). Flushes the TLB. */
  setAc(ac: boolean): void {
    if (this.ctx.eflagsAc === ac) return;
    this.ctx.eflagsAc = ac;
    this.tlb.flushAll(false);
  }

  /** WRPKRU (§4.6.2). Flushes the TLB, whose permission bits were computed under the old PKRU. */
  wrpkru(value: number): void {
    if (this.ctx.pkru === value >>> 0) return;
    this.ctx.pkru = value >>> 0;
    this.tlb.flushAll(false);
  }

  /**
   * A MOV to CR`cr` (or WRMSR EFER, `cr` = MSR_EFER) of `value` failed its checks (state unchanged or restored): #GP(0), unless what runs below
   * the guest handled it (it exited, and the hypervisor injected the #GP), see VcpuHooks.crWriteFault.
   */
  private crWriteFault(cr: number, value: number): void {
    this.deliverErrorCode = 0;
    if (this.hooks.crWriteFault(this, cr, value) === FAULT_DELIVER) this.raise(GP_VECTOR, this.deliverErrorCode, 0);
  }

  /**
   * Re-reads the PAE PDPTE registers from CR3 (for a hypervisor that emulates the load). False = #GP. Under
   * TDP the processor loads them through the second stage, from host memory (SDM Vol. 3C §29.3.3.2).
   */
  reloadPdptes(): boolean {
    if (this.secondStage !== null && this.activeCtx.nested === this.secondStage) {
      // A second-stage refusal of the PDPT's address is an EPT violation / #NPF (SDM Vol. 3C §29.3.3.2, Table
      // 28-7 bit 7 clear: no linear address), which exits; the hypervisor maps the page and the MOV is
      // re-executed. Only a reserved bit in a PDPTE is the #GP.
      const r = this.pdpteResult;
      for (let attempt = 0; attempt < MAX_RETRIES; attempt++) {
        if (loadPdptes(this.activeCtx, this.activeMem, r)) return true;
        if (r.status !== WALK_NESTED_FAULT) return false;
        const action = this.hooks.nestedFault(this, 0, ACC_READ, r);
        if (action !== FAULT_RETRY) {
          throw new MachineError('nested-fault', `vCPU ${this.id}: the second-stage fault on the PDPT at ${hexU64(r.nestedGpa)} was not resolved by a retry`);
        }
      }
      throw new MachineError('fault-loop', `vCPU ${this.id}: the PDPTE load from ${hexU64(r.nestedGpa)} faulted ${MAX_RETRIES} times in a row: a fault loop`);
    }
    return loadPdptes(this.ctx, this.memory);
  }

  // ---------------------------------------------------------------------------------------------------
  // Two-dimensional paging (the hardware side of TDP).

  /**
   * Turns two-dimensional paging on (`stage` = the EPT/NPT walk the backend made from its EPTP / nCR3, see
   * `Backend.createSecondStage`) or off (null). On: the hardware walks the guest's own tables (`ctx`) with
   * every guest-physical address translated by `stage`, reading guest RAM at the host-physical addresses it
   * gives in `hostMem` (guest RAM's host-physical addresses equal its guest-physical ones, so by default the
   * vCPU's memory). The TLB is flushed: its entries were combined under the old stage (SDM Vol. 3C §29.4.1).
   */
  setSecondStage(stage: SecondStage | null, hostMem: PhysicalMemory = this.memory): void {
    this.secondStage = stage;
    if (stage === null) {
      this.activeCtx = this.ctx;
      this.activeMem = this.memory;
    } else {
      if (stage.maxPhyAddr !== this.hostMaxPhyAddr) {
        throw new RangeError(`vCPU ${this.id}: the second stage walks with MAXPHYADDR ${stage.maxPhyAddr}, the processor has ${this.hostMaxPhyAddr}`);
      }
      this.activeCtx = new NestedPagingContext(this.ctx, stage);
      this.activeMem = hostMem;
    }
    this.tlb.flushAll(false);
  }

  /**
   * Invalidates the combined (guest-linear -> host-physical) translations the TLB holds (VMX INVEPT, SVM
   * VMRUN with a TLB_CONTROL flush): what the TDP MMU does after it zaps or changes a second-stage entry,
   * since the TLB caches the combined mappings (SDM Vol. 3C §29.4.1, §29.4.3.1).
   */
  invalidateCombinedMappings(): void {
    this.tlb.flushAll(false);
  }

  // ---------------------------------------------------------------------------------------------------
  // The slow path: the hardware walk of the active tables, faults, hooks, emulation.

  private load(va: number, size: number, kind: number): number {
    const access = kind | (this.cpl === 3 ? ACC_USER : 0);
    this.accesses++;
    checkScalarSpan(va, size);
    let off = this.tlb.lookup(va, access, this.pcid);
    if (off < 0) {
      this.setPending(va, access, size, 0, 0);
      off = this.slowPath(va, access);
      if (off < 0) {
        this.valueHi = this.emulatedHi;
        return this.emulatedLo;
      }
    }
    return loadAt(this, off, size);
  }

  /**
   * The hypervisor walked the guest's own tables for linear address `va` with access `access` (PFERR_* bits, as
   * the emulator would walk for the access in flight), with side effects, and it succeeded at `gpa` (KVM
   * FNAME(walk_addr) in FNAME(page_fault)). Until the next exit starts, an emulation of the same access uses
   * it: a second walk would read the same entries (only the hypervisor runs in between, and it writes no guest
   * paging-structure entry), find the accessed and dirty flags already set (SDM Vol. 3A §4.8: they are set
   * only when not set already), and end at the same address. KVM's emulator walks again (x86.c
   * emulator_read_write_onepage -> FNAME(gva_to_gpa)); folding it changes no result and no guest byte.
   */
  noteGuestWalk(va: number, access: number, gpa: number): void {
    this.walkedVa = va;
    this.walkedAccess = access;
    this.walkedGpa = gpa;
  }

  /** Forgets a walk noted by `noteGuestWalk` (an exit starts: what was walked before may have changed since). */
  clearGuestWalk(): void {
    this.walkedGpa = -1;
  }

  /**
   * The gpa of the hypervisor's guest walk for the access in flight (`pendingVa`, `pendingAccess`), or -1 when
   * none was noted for exactly that access since the exit started. Taking it clears it.
   */
  takeGuestWalk(): number {
    const gpa = this.walkedGpa;
    this.walkedGpa = -1;
    return gpa >= 0 && this.walkedVa === this.pendingVa && this.walkedAccess === this.pendingAccess ? gpa : -1;
  }

  private setPending(va: number, access: number, size: number, lo: number, hi: number): void {
    this.pendingVa = va;
    this.pendingAccess = access;
    this.pendingSize = size;
    this.pendingLo = lo;
    this.pendingHi = hi;
  }

  /**
   * Walks the active tables for `va` until the access can proceed: returns the RAM buffer offset (and fills
   * the TLB), or SLOW_DONE when the access was completed another way (emulation, MMIO).
   */
  private slowPath(va: number, access: number): number {
    if (!this.pagingEnabled) throw new MachineError('paging-disabled', `vCPU ${this.id}: an access to ${hexU64(va)} with CR0.PG=0 (real mode is not modelled)`);
    const r = this.walkResult;
    for (let attempt = 0; attempt < MAX_RETRIES; attempt++) {
      const st = walk(this.activeCtx, this.activeMem, va, access, WALK_SIDE_EFFECTS, r);
      this.walks++;
      // Entries read: from the top level down to where the walk ended (PAE's PDPTE registers are not read);
      // a two-dimensional walk counts its own, second-stage entries included.
      if (this.activeCtx.nested !== null) this.walkRefs += r.refs;
      else if (st !== WALK_GP) this.walkRefs += (this.activeCtx.mode === MODE_PAE ? 2 : r.topLevel) - r.leafLevel + 1;
      let action: FaultAction;
      let vector = PF_VECTOR;
      if (st === WALK_OK) {
        const pa = r.pa;
        const slot = this.memory.slotForGfn(pageNumber(pa));
        // No slot: MMIO. A store to read-only RAM is MMIO too (KVM_MEM_READONLY: "writes ... exit to user
        // space as KVM_EXIT_MMIO", Documentation/virt/kvm/api.rst, KVM_SET_USER_MEMORY_REGION).
        if (slot === null || ((access & ACC_WRITE) !== 0 && slot.readonly === true)) {
          action = this.hooks.mmio(this, pa, access);
          if (action === FAULT_DONE) {
            this.emulatedLo = openBus(this.pendingSize);
            this.emulatedHi = this.pendingSize === 8 ? OPEN_BUS : 0;
            return SLOW_DONE;
          }
          if (action === FAULT_RETRY) continue;
          vector = GP_VECTOR;
        } else {
          // A page never written reads through the zero page (offset 0 + page offset); see `unzero`.
          const off = this.memory.readOffset(pa);
          const hostPage = off - (pa & 0xfff);
          this.fillTlb(va, hostPage, r, slot.readonly);
          if (hostPage === 0) this.noteZero(va, pageNumber(pa));
          return off;
        }
      } else if (st === WALK_PAGE_FAULT) {
        this.deliverErrorCode = r.errorCode;
        action = this.hooks.exception(this, PF_VECTOR, r.errorCode, va, access);
      } else if (st === WALK_GP) {
        vector = GP_VECTOR;
        this.deliverErrorCode = 0;
        action = this.hooks.exception(this, GP_VECTOR, 0, va, access);
      } else if (st === WALK_NESTED_FAULT) {
        this.tlb.dropPage(va, this.pcid); // an EPT violation drops the combined mappings of va (SDM Vol. 3C §29.4.3.1)
        action = this.hooks.nestedFault(this, va, access, r);
      } else {
        throw new MachineError('walk-status', `unknown walk status ${st}`);
      }
      if (action === FAULT_DONE) return SLOW_DONE;
      if (action === FAULT_DELIVER) {
        // The guest's handler makes accesses of its own, which overwrite the access in flight: keep it for
        // the re-execution (whose exit may emulate it from these fields).
        const pVa = this.pendingVa;
        const pAccess = this.pendingAccess;
        const pSize = this.pendingSize;
        const pLo = this.pendingLo;
        const pHi = this.pendingHi;
        const pEmulatable = this.pendingEmulatable;
        // A #PF the guest sees invalidates the TLB entries of the faulting page (SDM Vol. 3A §4.10.4.1; KVM does it
        // for the #PF it injects, kvm_inject_emulated_page_fault): the handler's fix is seen, whether it retries or not.
        if (vector === PF_VECTOR) this.tlb.dropPage(va, this.pcid);
        this.raise(vector, this.deliverErrorCode, va);
        this.setPending(pVa, pAccess, pSize, pLo, pHi);
        this.pendingEmulatable = pEmulatable;
      }
      // FAULT_RETRY, or the guest handled the exception: re-execute the access.
    }
    throw new MachineError(
      'fault-loop',
      `vCPU ${this.id}: the access to ${hexU64(va)} (access bits ${access}) faulted ${MAX_RETRIES} times in a row` +
        ` (last walk status ${r.status}, error code ${r.errorCode}): a fault loop`,
    );
  }

  /** TLB entry of `va` now points to the zero page for guest page `gfn`. */
  private noteZero(va: number, gfn: number): void {
    const i = Math.floor(va / 4096) & this.tlb.mask; // the TLB's own index of va (Tlb.lookup)
    this.zeroGfn[i] = gfn;
    let l = this.zeroRefs.get(gfn);
    if (l === undefined) {
      // Entries refilled since stay listed until their page is backed: rebuild the lists from the TLB when
      // they outgrow it (bounded memory whatever the guest reads).
      if (this.zeroRefs.size >= 4 * this.tlb.size) this.rebuildZeroRefs();
      this.zeroRefs.set(gfn, (l = []));
    }
    l.push(i);
  }

  private rebuildZeroRefs(): void {
    this.zeroRefs.clear();
    const data = this.tlb.data;
    for (let i = 0; i < data.length; i++) {
      const g = this.zeroGfn[i]!;
      if (data[i] === 0 || (data[i]! & ~0xfff) !== 0 || g < 0) continue;
      const l = this.zeroRefs.get(g);
      if (l === undefined) this.zeroRefs.set(g, [i]);
      else l.push(i);
    }
  }

  /** Guest page `gfn` was backed at RAM offset `offset`: TLB entries that read it through the zero page now point there. */
  private zeroBacked(gfn: number, offset: number): void {
    const l = this.zeroRefs.get(gfn);
    if (l === undefined) return;
    this.zeroRefs.delete(gfn);
    const data = this.tlb.data;
    for (const i of l) {
      const d = data[i]!;
      if (d !== 0 && (d & ~0xfff) === 0 && this.zeroGfn[i] === gfn) data[i] = offset | (d & 0xfff) | 0;
    }
  }

  /**
   * A store through the TLB entry of `va` landed on the zero page (`off` < 4096): a page never written. A store
   * of zeros changes nothing (-1: skip it); any other backs the page (which re-points the entry, `zeroBacked`)
   * and returns the offset to store at.
   */
  private unzero(va: number, off: number, zeros: boolean): number {
    if (zeros) return -1;
    const i = Math.floor(va / 4096) & this.tlb.mask; // the TLB's own index of va (Tlb.lookup)
    const gfn = this.zeroGfn[i]!;
    if (gfn < 0 || (this.tlb.data[i]! & ~0xfff) !== 0) {
      throw new MachineError('zero-page', `vCPU ${this.id}: a store to ${hexU64(va)} through the zero page with no guest page recorded for its TLB entry`);
    }
    return this.memory.backGfn(gfn) + (off & 0xfff);
  }

  /**
   * Computes the TLB permission bits for the translation in `r` and caches it. A page of read-only RAM gets
   * no write permission whatever the pte says, so that every store to it misses and goes the MMIO way
   * (above) instead of completing from the TLB into the ROM.
   */
  private fillTlb(va: number, hostPage: number, r: WalkResult, readonlyRam: boolean): void {
    const ctx = this.activeCtx;
    let flags = 0;
    if (rightsFault(ctx, r, ACC_READ) === 0) flags |= TLB_READ_SUP;
    if (rightsFault(ctx, r, ACC_FETCH) === 0) flags |= TLB_FETCH_SUP;
    if (rightsFault(ctx, r, ACC_READ | ACC_USER) === 0) flags |= TLB_READ_USER;
    if (rightsFault(ctx, r, ACC_FETCH | ACC_USER) === 0) flags |= TLB_FETCH_USER;
    if (r.dirty === true && readonlyRam !== true) {
      if (rightsFault(ctx, r, ACC_WRITE) === 0) flags |= TLB_WRITE_SUP;
      if (rightsFault(ctx, r, ACC_WRITE | ACC_USER) === 0) flags |= TLB_WRITE_USER;
    }
    if (r.global === true && ctx.cr4Pge === true) flags |= TLB_GLOBAL;
    if (ctx.nested !== null) {
      // The combined translation (SDM Vol. 3C §29.4.1): the guest's rights AND the second stage's for the final
      // address; a write completes from the TLB only when the second stage needs no dirty flag set.
      const nr = r.nestedRights;
      if ((nr & NESTED_R) === 0) flags &= ~(TLB_READ_SUP | TLB_READ_USER);
      if ((nr & NESTED_X) === 0) flags &= ~(TLB_FETCH_SUP | TLB_FETCH_USER);
      if ((nr & NESTED_W) === 0 || r.nestedDirty !== true) flags &= ~(TLB_WRITE_SUP | TLB_WRITE_USER);
    }
    this.tlb.fill(va, this.pcid, hostPage, flags, r.pageSize);
  }

  /**
   * Delivers exception `vector` to the guest's handler (an interrupt gate: CPL 0), then returns as IRET
   * does, restoring CPL and RFLAGS.AC. A #PF sets CR2 (§4.7). A handler that throws GuestAbort abandons the
   * access. No handler, or an exception inside a handler that is not itself resolved, is a triple fault.
   */
  raise(vector: number, errorCode: number, address: number): void {
    const h = this.idt[vector];
    this.exceptions++;
    if (h === undefined) {
      throw new MachineError('triple-fault', `vCPU ${this.id}: exception ${vector} (error code ${errorCode}, address ${hexU64(address)}) with no handler`);
    }
    if (this.handlerDepth >= 3) {
      throw new MachineError('triple-fault', `vCPU ${this.id}: exception ${vector} at ${hexU64(address)} nested ${this.handlerDepth} deep in handlers`);
    }
    if (vector === PF_VECTOR) {
      this.cr2 = address;
      this.pageFaultsDelivered++;
    }
    const savedCpl = this.cpl;
    const savedAc = this.ctx.eflagsAc;
    this.cpl = 0;
    this.handlerDepth++;
    try {
      h(this, vector, errorCode, address);
    } finally {
      this.handlerDepth--;
      this.cpl = savedCpl;
      if (this.ctx.eflagsAc !== savedAc) this.setAc(savedAc);
    }
  }

  /** Recomputes the paging mode and rights bits of `ctx` from CR0, CR4 and EFER (§4.1.1, Table 4-1). */
  private updateMode(): void {
    const ctx = this.ctx;
    const pg = (this.cr0 & CR0_PG) !== 0;
    if (pg && (this.efer & EFER_LME) !== 0) this.efer |= EFER_LMA;
    else this.efer &= ~EFER_LMA;
    const lma = (this.efer & EFER_LMA) !== 0;
    ctx.mode = (this.cr4 & CR4_PAE) === 0 ? MODE_LEGACY32 : !lma ? MODE_PAE : (this.cr4 & CR4_LA57) !== 0 ? MODE_LONG5 : MODE_LONG4;
    ctx.cr0Wp = (this.cr0 & CR0_WP) !== 0;
    ctx.cr4Pse = (this.cr4 & CR4_PSE) !== 0;
    ctx.cr4Pge = (this.cr4 & CR4_PGE) !== 0;
    ctx.cr4Smep = (this.cr4 & CR4_SMEP) !== 0;
    ctx.cr4Smap = (this.cr4 & CR4_SMAP) !== 0;
    ctx.cr4Pke = (this.cr4 & CR4_PKE) !== 0;
    ctx.eferNxe = (this.efer & EFER_NXE) !== 0;
    ctx.cr3 = ctx.mode === MODE_PAE ? this.cr3 - (this.cr3 % 32) : this.cr3 - (this.cr3 % PAGE_SIZE);
  }
}

export { openBus } from './ram-access.js';

/** Loads `size` bytes at RAM offset `off`. */
function loadAt(vcpu: Vcpu, off: number, size: number): number {
  const m = vcpu.memory;
  switch (size) {
    case 1:
      return m.u8[off]!;
    case 2:
      return m.view.getUint16(off, true);
    case 4:
      return (off & 3) === 0 ? m.u32[off >>> 2]! : m.view.getUint32(off, true);
    default:
      if ((off & 3) === 0) {
        vcpu.valueHi = m.u32[(off >>> 2) + 1]!;
        return m.u32[off >>> 2]!;
      }
      vcpu.valueHi = m.view.getUint32(off + 4, true);
      return m.view.getUint32(off, true);
  }
}
