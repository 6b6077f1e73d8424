import {
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_LA57,
  CR4_PAE,
  CR4_PGE,
  CR4_PSE,
  defaultMemslots,
  EFER_LME,
  EFER_NXE,
  GP_VECTOR,
  GuestAbort,
  guestPhysicalEnd,
  MMIO_HOLE_START,
  PAGE_SIZE,
  PFERR_FETCH,
  PFERR_RSVD,
  PFERR_USER,
  PFERR_WRITE,
  PF_VECTOR,
  PT_ACCESSED,
  PT_DIRTY,
  PT_GLOBAL,
  PT_PAGE_SIZE,
  PT_PRESENT,
  PT_USER,
  PT_WRITABLE,
  type Machine,
  type Vcpu,
} from '@vmexit/core';
import { FRAME_ANON, FRAME_CACHE, FRAME_FREE, FRAME_TABLE, FrameAllocator } from './frames.js';

/** Frames that boot warms through the direct map (256 MiB of RAM, see `Kernel.warm`). */
const WARM_FRAMES = 65536;
import { MODE_LEGACY32, MODE_LONG4, MODE_LONG5, MODE_PAE, modeLayout, tableIndex, tableSpan, type ModeLayout } from './layout.js';
import {
  FAULT_COW,
  FAULT_DEMAND_ZERO,
  FAULT_FILE,
  FAULT_SIGSEGV,
  FAULT_SPURIOUS,
  FAULT_WP_REUSE,
  FAULT_ZERO_PAGE,
  GuestEventLog,
  KernelStats,
} from './stats.js';
import { PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE, VMA_ALIAS, VMA_ANON, VMA_FILE_PRIVATE, VMA_FILE_SHARED, Vma, VmaList, type FileObject } from './vma.js';

/** Guest personalities: behaviours of guests that broke KVM's shadow MMU historically. */
export const PERSONALITIES = ['byte-pte-writes', 'sparse-pdptes', 'aliased-pdes'] as const;
export type Personality = (typeof PERSONALITIES)[number];

/** The kernel reached a state Linux would oops on (a fault in kernel mode, a reserved-bit fault). */
export class KernelPanic extends Error {
  constructor(message: string) {
    super(`guest kernel panic: ${message}`);
    this.name = 'KernelPanic';
  }
}

/** A bad kernel configuration (mode, memory size, personality), reported before the guest boots. */
export class GuestConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestConfigError';
  }
}

/** Linux `tlb_single_page_flush_ceiling` (arch/x86/mm/tlb.c): up to 33 pages are flushed one by one. */
export const TLB_SINGLE_PAGE_FLUSH_CEILING = 33;

/** Bit 10 of a not-present pte marks a PROT_NONE page that keeps its frame (Linux `_PAGE_PROTNONE` in spirit). */
const PTE_PROTNONE = 1 << 10;
/** Flags of a user page-table entry that points to a table (Linux `_PAGE_TABLE`). */
const USER_TABLE = PT_PRESENT | PT_WRITABLE | PT_USER | PT_ACCESSED | PT_DIRTY;
/** Flags of a kernel page-table entry that points to a table (Linux `_KERNPG_TABLE`). */
const KERNEL_TABLE = PT_PRESENT | PT_WRITABLE | PT_ACCESSED | PT_DIRTY;
/** A direct-map large page (Linux `__PAGE_KERNEL_LARGE`): global, dirty, accessed. */
const KERNEL_LARGE = PT_PRESENT | PT_WRITABLE | PT_ACCESSED | PT_DIRTY | PT_PAGE_SIZE | PT_GLOBAL;
/** XD, bit 63 = bit 31 of the high half. */
const HI_XD = 0x80000000 | 0;
/** What Solaris leaves in a not-present PDPTE (sparse-pdptes): P=0, junk in reserved and address bits. */
const JUNK_PDPTE_LO = 0xdeadbee6 | 0;
const JUNK_PDPTE_HI = 0x0badf00d;

/** One area an exec creates. */
export interface AreaSpec {
  readonly start: number;
  readonly end: number;
  readonly prot: number;
  readonly backing: number;
  readonly file: FileObject | null;
  readonly offset: number;
  readonly growsDown: boolean;
}

/** An executable image that exec maps (text and data from the file, bss, heap above it, a stack). */
export interface ImageSpec {
  readonly path: string;
  readonly textPages: number;
  readonly dataPages: number;
  readonly bssPages: number;
  readonly stackPages: number;
}

export class Process {
  readonly vmas = new VmaList();
  /** Physical address of the top table (what CR3 holds). */
  root = 0;
  brkBase = 0;
  brkEnd = 0;
  exited = false;
  /** Page-table pages this address space holds, per level. */
  readonly tables = new Float64Array(6);
  /** Tasks (threads) of this process that have not finished. */
  threads = 0;
  constructor(
    readonly pid: number,
    readonly parent: Process | null,
    public name: string,
  ) {}
}

export interface KernelOptions {
  readonly personalities?: readonly Personality[];
  /** Read and write back every free page through the direct map at boot (default true). */
  readonly warmDirectMap?: boolean;
}

/**
 * The guest OS model: a Linux-like kernel whose bookkeeping (processes, VMAs, the frame allocator) is plain
 * TypeScript, and whose every access to page tables and page contents is a guest memory access through a
 * vCPU, via the kernel direct map. A hypervisor beneath sees all of it; the kernel never looks at host state,
 * only at what it wrote itself.
 */
export class Kernel {
  readonly machine: Machine;
  readonly layout: ModeLayout;
  readonly frames: FrameAllocator;
  readonly stats = new KernelStats();
  readonly events = new GuestEventLog();
  readonly personalities: ReadonlySet<Personality>;
  /** The process each vCPU runs (null: idle, on the kernel-only tables). */
  readonly current: (Process | null)[];
  readonly processes: Process[] = [];
  /** Top table of init_mm (swapper_pg_dir): the kernel half only. */
  readonly idleRoot: number;
  /** PAE: the kernel PD that PDPTE 3 of every process points to. */
  private kernelPd = 0;
  readonly zeroFrame: number;
  private readonly files = new Map<string, FileObject>();
  private nextPid = 1;
  private hi = 0;
  /** > 0 while kernel code runs (a system call, the #PF handler, a context switch): a #GP then is the kernel's. */
  private inKernel = 0;
  private readonly byteWrites: boolean;
  private readonly sparsePdptes: boolean;
  private readonly aliased: boolean;
  private readonly nx: boolean;
  private readonly esz: 4 | 8;
  private readonly dm: number;

  constructor(machine: Machine, mode: number, options: KernelOptions = {}) {
    this.machine = machine;
    if (mode !== MODE_LEGACY32 && mode !== MODE_PAE && mode !== MODE_LONG4 && mode !== MODE_LONG5) throw new GuestConfigError(`unknown paging mode ${mode}`);
    const layout = modeLayout(mode);
    this.layout = layout;
    this.personalities = new Set(options.personalities ?? []);
    this.byteWrites = this.personalities.has('byte-pte-writes');
    this.sparsePdptes = this.personalities.has('sparse-pdptes');
    this.aliased = this.personalities.has('aliased-pdes');
    if (this.sparsePdptes && mode !== MODE_PAE) throw new GuestConfigError('personality sparse-pdptes needs PAE paging (--mode pae): only PAE has PDPTEs');
    this.nx = mode !== MODE_LEGACY32;
    this.esz = layout.entrySize;
    this.dm = layout.directMapBase;
    const mem = machine.memory.size;
    if (mem % layout.directMapPage !== 0) {
      throw new GuestConfigError(
        `guest memory of ${mem} bytes is not a multiple of the ${layout.directMapPage / 2 ** 20} MiB direct-map page of this paging mode`,
      );
    }
    const want = defaultMemslots(mem);
    const slots = machine.memory.slots;
    if (slots.length !== want.length || slots.some((s, i) => s.baseGfn * PAGE_SIZE !== want[i]!.base || s.pages * PAGE_SIZE !== want[i]!.size)) {
      throw new GuestConfigError('the guest kernel expects the default RAM layout: one memslot at guest-physical 0 (and one at 4 GiB for RAM beyond 3 GiB)');
    }
    // 32-bit paging maps 4 KiB pages and page tables below 4 GiB only (PSE-36, SDM Vol. 3A §4.3, reaches above
    // it with 4 MiB pages alone, which this kernel does not use for memory it hands out): RAM beyond the MMIO
    // hole, at 4 GiB and up, would be out of its reach.
    if (mode === MODE_LEGACY32 && guestPhysicalEnd(mem) > 2 ** 32) {
      throw new GuestConfigError(
        `guest memory of ${mem} bytes puts RAM above 4 GiB (RAM beyond ${MMIO_HOLE_START / 2 ** 30} GiB goes above the MMIO hole), which 32-bit paging without PSE-36 cannot address: give legacy32 at most ${MMIO_HOLE_START / 2 ** 30} GiB`,
      );
    }
    // The RAM the kernel direct-maps and allocates from: what its direct map holds (Linux without HIGHMEM leaves
    // RAM above lowmem unused), and only below the MMIO hole (its ptes are written with 32-bit frame addresses).
    const usable = Math.min(mem, layout.maxMemory, MMIO_HOLE_START);
    this.current = machine.vcpus.map(() => null);

    // Boot: the boot loader has put the kernel's initial page tables in RAM (written here before paging is
    // on, as a loaded kernel image holds them): frame 0 is reserved (real-mode IVT/BIOS data), then the
    // idle top table and the direct map's tables, then the zero page.
    const totalFrames = usable / PAGE_SIZE;
    let next = 1;
    const bootAlloc = (): number => {
      const f = next++;
      if (f >= totalFrames) throw new GuestConfigError(`guest memory of ${mem} bytes is too small to boot`);
      return f * PAGE_SIZE;
    };
    this.idleRoot = this.buildDirectMap(bootAlloc, usable);
    this.zeroFrame = bootAlloc() / PAGE_SIZE;
    this.frames = new FrameAllocator(totalFrames, next);
    if (this.frames.freeCount < 64) throw new GuestConfigError(`guest memory of ${mem} bytes leaves only ${this.frames.freeCount} free pages after boot`);

    for (const v of machine.vcpus) this.bootCpu(v);
    if (options.warmDirectMap !== false) this.warm(machine.vcpus[0]!);
  }

  // ------------------------------------------------------------------------------------------------
  // Boot

  /** Writes the idle top table and the direct map of all RAM (physical writes: paging is still off). */
  private buildDirectMap(bootAlloc: () => number, mem: number): number {
    const m = this.machine.memory;
    const L = this.layout;
    const root = bootAlloc();
    const put = (tablePa: number, idx: number, lo: number, hi: number): void => {
      m.write32(tablePa + idx * this.esz, lo >>> 0);
      if (this.esz === 8) m.write32(tablePa + idx * 8 + 4, hi >>> 0);
    };
    const get = (tablePa: number, idx: number): number => m.read32(tablePa + idx * this.esz);
    const leafHi = this.nx ? HI_XD : 0;
    for (let pa = 0; pa < mem; pa += L.directMapPage) {
      const va = this.dm + pa;
      let table = root;
      for (let level = L.top; level > 2; level--) {
        const idx = tableIndex(L, va, level);
        let e = get(table, idx);
        if ((e & PT_PRESENT) === 0) {
          const t = bootAlloc();
          // A PAE PDPTE has only P (bits 2:1 and 8:5 are reserved, §4.4.1).
          e = (t | (L.mode === MODE_PAE ? PT_PRESENT : KERNEL_TABLE)) >>> 0;
          put(table, idx, e, 0);
          if (L.mode === MODE_PAE) this.kernelPd = t;
        }
        table = e & ~0xfff;
      }
      put(table, tableIndex(L, va, 2), (pa | KERNEL_LARGE) >>> 0, leafHi);
    }
    return root;
  }

  /** Programs a vCPU's paging (SDM Vol. 3A §9.8.5 for IA-32e: PAE, then LME, then CR3, then PG), and the #PF and #GP handlers. */
  private bootCpu(v: Vcpu): void {
    const mode = this.layout.mode;
    v.setCpl(0);
    let cr4 = CR4_PGE;
    if (mode === MODE_LEGACY32) cr4 |= CR4_PSE;
    else cr4 |= CR4_PAE;
    if (mode === MODE_LONG5) cr4 |= CR4_LA57;
    v.movToCr4(cr4);
    let efer = 0;
    if (this.nx) efer |= EFER_NXE;
    if (mode === MODE_LONG4 || mode === MODE_LONG5) efer |= EFER_LME;
    v.writeEfer(efer);
    v.movToCr3(this.idleRoot);
    v.movToCr0(CR0_PG | CR0_WP | CR0_PE);
    v.setExceptionHandler(PF_VECTOR, (vcpu, _vector, errorCode, cr2) => this.pageFault(vcpu, errorCode, cr2));
    v.setExceptionHandler(GP_VECTOR, (vcpu, _vector, errorCode, address) => this.generalProtection(vcpu, errorCode, address));
  }

  /**
   * Touches the free pages of the first WARM_FRAMES frames through the direct map (a read and the same value
   * written back): the frames the allocator hands out first (lowest first), so that a workload that fits in them
   * finds its direct-map translations warm. Bounded, so that boot does not cost in proportion to the RAM size.
   */
  private warm(v: Vcpu): void {
    const f = this.frames;
    this.inKernel++;
    try {
      for (let frame = 0; frame < Math.min(f.totalFrames, WARM_FRAMES); frame++) {
        if (f.useOf(frame) !== FRAME_FREE) continue;
        const va = this.dm + frame * PAGE_SIZE;
        v.write(va, 4, v.read(va, 4));
      }
    } finally {
      this.inKernel--;
    }
  }

  // ------------------------------------------------------------------------------------------------
  // Page-table entries, through the direct map

  /** The direct-map linear address of physical address `pa`. */
  directMap(pa: number): number {
    return this.dm + pa;
  }

  /** Reads entry `idx` of the table at `tablePa`; returns the low half, leaves the high half in `this.hi`. */
  private rd(v: Vcpu, tablePa: number, idx: number): number {
    const lo = v.read(this.dm + tablePa + idx * this.esz, this.esz);
    this.hi = this.esz === 8 ? v.valueHi : 0;
    return lo;
  }

  /**
   * Writes entry `idx` of the table at `tablePa`: one aligned 4- or 8-byte store (Linux `set_pte`), or with
   * byte-pte-writes one 1-byte store per byte that changes - the present byte last when the entry becomes
   * present, first when it stops being present.
   */
  private wr(v: Vcpu, tablePa: number, idx: number, lo: number, hi: number): void {
    const va = this.dm + tablePa + idx * this.esz;
    this.stats.pteWrites++;
    if (!this.byteWrites) {
      v.write(va, this.esz, lo | 0, hi | 0);
      return;
    }
    const oldLo = v.read(va, this.esz);
    const oldHi = this.esz === 8 ? v.valueHi : 0;
    const bytes = this.esz;
    const byteOf = (l: number, h: number, b: number): number => (b < 4 ? (l >>> (8 * b)) & 0xff : (h >>> (8 * (b - 4))) & 0xff);
    const present = (lo & PT_PRESENT) !== 0;
    for (let k = 0; k < bytes; k++) {
      const b = present ? bytes - 1 - k : k;
      const nb = byteOf(lo, hi, b);
      if (nb !== byteOf(oldLo, oldHi, b)) v.write(va + b, 1, nb);
    }
  }

  private frameOf(lo: number, hi: number): number {
    return ((lo >>> 12) + (this.esz === 8 ? (hi & 0xfffff) * 0x100000 : 0)) | 0;
  }

  private allocTable(v: Vcpu, proc: Process, level: number): number {
    const f = this.frames.alloc(FRAME_TABLE + level);
    const pa = f * PAGE_SIZE;
    // __get_free_page(GFP_PGTABLE_USER) with __GFP_ZERO: clear_page (rep stosq) through the direct map.
    v.repStos(this.dm + pa, PAGE_SIZE / 8, 8, 0, 0);
    proc.tables[level]++;
    this.stats.tablesAllocated[level]++;
    return pa;
  }

  private freeTable(proc: Process, pa: number, level: number): void {
    this.frames.put(pa / PAGE_SIZE);
    proc.tables[level]--;
    this.stats.tablesFreed[level]++;
  }

  /** Entry value of a user table entry at `level` (the PAE PDPT's entries carry P only). */
  private tableEntry(pa: number, level: number): number {
    return pa | (this.layout.mode === MODE_PAE && level === 3 ? PT_PRESENT : USER_TABLE) | 0;
  }

  /**
   * The physical address of the table of `level` that maps `va` in `proc`, allocating the missing tables
   * on the way down when `alloc` (Linux `pud_alloc`/`pmd_alloc`/`pte_alloc`); -1 when a table is missing.
   */
  tableFor(v: Vcpu, proc: Process, va: number, level: number, alloc: boolean): number {
    const L = this.layout;
    let table = proc.root;
    for (let lv = L.top; lv > level; lv--) {
      const idx = tableIndex(L, va, lv);
      let lo = this.rd(v, table, idx);
      let hi = this.hi;
      if ((lo & PT_PRESENT) === 0) {
        if (!alloc) return -1;
        const child = this.allocTable(v, proc, lv - 1);
        lo = this.tableEntry(child, lv);
        hi = 0;
        this.wr(v, table, idx, lo, 0);
        if (L.mode === MODE_PAE && lv === 3) this.reloadPdptes(v, proc);
        if (this.aliased && lv - 1 === 1 && this.inArena(va)) this.setAliasPde(v, proc, va, child);
      }
      table = this.frameOf(lo, hi) * PAGE_SIZE;
    }
    return table;
  }

  /** PAE: a PDPTE changed in memory; the PDPTE registers are loaded only by a CR3 load (§4.4.1), so reload. */
  private reloadPdptes(v: Vcpu, proc: Process): void {
    for (const w of this.machine.vcpus) {
      if (this.current[w.id] === proc || (w === v && w.cr3 === proc.root)) {
        w.movToCr3(proc.root);
        this.stats.fullFlushes++;
      }
    }
  }

  private inArena(va: number): boolean {
    const L = this.layout;
    return va >= L.arenaBase && va < L.arenaBase + L.arenaSize;
  }

  private inAliasWindow(va: number): boolean {
    const L = this.layout;
    return va >= L.arenaBase + L.arenaSize && va < L.arenaBase + 2 * L.arenaSize;
  }

  /** aliased-pdes: the PDE of the alias view of `va` points to the same page table, without R/W (as Xen PAE does). */
  private setAliasPde(v: Vcpu, proc: Process, va: number, pt: number): void {
    const alias = va + this.layout.arenaSize;
    const pd = this.tableFor(v, proc, alias, 2, true);
    this.wr(v, pd, tableIndex(this.layout, alias, 2), pt | PT_PRESENT | PT_USER | PT_ACCESSED | 0, 0);
  }

  private clearAliasPde(v: Vcpu, proc: Process, va: number): void {
    const alias = va + this.layout.arenaSize;
    const pd = this.tableFor(v, proc, alias, 2, false);
    if (pd >= 0) this.wr(v, pd, tableIndex(this.layout, alias, 2), 0, 0);
  }

  // ------------------------------------------------------------------------------------------------
  // Address spaces

  /** A new top table with the kernel half of init_mm (Linux `pgd_alloc`: `clone_pgd_range`, a memcpy). */
  private newMm(v: Vcpu, proc: Process): void {
    const L = this.layout;
    const top = this.allocTable(v, proc, L.top);
    proc.root = top;
    if (L.mode === MODE_PAE) {
      // PDPTE 3: the shared kernel PD. The user PDs are preallocated (Linux `preallocate_pmds`), because a
      // PDPTE change needs a CR3 reload; Solaris instead leaves junk in the PDPTEs it does not use.
      this.wr(v, top, 3, this.kernelPd | PT_PRESENT | 0, 0);
      for (let i = 0; i < 3; i++) {
        if (this.sparsePdptes) this.wr(v, top, i, JUNK_PDPTE_LO ^ (i << 12), JUNK_PDPTE_HI);
        else this.wr(v, top, i, this.tableEntry(this.allocTable(v, proc, 2), 3), 0);
      }
      return;
    }
    const first = L.kernelTopIndex;
    const n = L.entries - first;
    v.repMovs(this.dm + top + first * this.esz, this.dm + this.idleRoot + first * this.esz, n, this.esz);
  }

  /** Creates a process with an empty user address space (a kernel-made init, or a posix_spawn'd one). */
  createProcess(v: Vcpu, name: string, parent: Process | null = null): Process {
    return this.syscall(v, () => {
      const p = new Process(this.nextPid++, parent, name);
      this.newMm(v, p);
      this.processes.push(p);
      this.stats.processes++;
      return p;
    });
  }

  /** Context switch: CR3 := the process's top table (the idle tables for null). */
  switchTo(v: Vcpu, proc: Process | null): void {
    if (this.current[v.id] === proc) return;
    this.current[v.id] = proc;
    this.stats.contextSwitches++;
    this.inKernel++;
    try {
      v.movToCr3(proc === null ? this.idleRoot : proc.root);
    } finally {
      this.inKernel--;
    }
  }

  private syscall<T>(v: Vcpu, fn: () => T): T {
    const saved = v.cpl;
    v.setCpl(0);
    this.inKernel++;
    try {
      return fn();
    } finally {
      this.inKernel--;
      v.setCpl(saved);
    }
  }

  /** The page cache page `index` of `file`, read in on a miss (the block layer's copy into a new page). */
  private cachePage(v: Vcpu, file: FileObject, index: number): number {
    let f = file.pages.get(index);
    if (f !== undefined) return f;
    f = this.frames.alloc(FRAME_CACHE);
    this.stats.pageCacheMisses++;
    // The file's contents: a deterministic word per (file, page), stored by the kernel through the direct map.
    v.repStos(this.dm + f * PAGE_SIZE, PAGE_SIZE / 4, 4, fileWord(file.id, index));
    file.pages.set(index, f);
    return f;
  }

  file(path: string): FileObject {
    let f = this.files.get(path);
    if (f === undefined) {
      f = { id: this.files.size + 1, path, pages: new Map() };
      this.files.set(path, f);
    }
    return f;
  }

  // ------------------------------------------------------------------------------------------------
  // The #PF handler (Linux arch/x86/mm/fault.c `exc_page_fault` -> mm/memory.c `handle_mm_fault`)

  private pageFault(v: Vcpu, errorCode: number, cr2: number): void {
    const proc = this.current[v.id]!;
    const ev = this.events.push(v.id, proc === null ? 0 : proc.pid, cr2, errorCode);
    this.stats.pageFaults++;
    if ((errorCode & PFERR_USER) === 0 || proc === null) {
      throw new KernelPanic(`vCPU ${v.id}: page fault in kernel mode at ${hexa(cr2)}, error code ${errorCode}`);
    }
    if ((errorCode & PFERR_RSVD) !== 0) {
      throw new KernelPanic(`vCPU ${v.id}: reserved bit set in a page-table entry for ${hexa(cr2)} (pid ${proc.pid}), error code ${errorCode}`);
    }
    this.inKernel++;
    let kind: number;
    try {
      kind = this.handleUserFault(v, proc, cr2, errorCode);
    } finally {
      this.inKernel--;
    }
    this.stats.faults[kind]++;
    this.events.setKind(ev, kind);
    if (kind === FAULT_SIGSEGV) throw new GuestAbort(`SIGSEGV: pid ${proc.pid} at ${hexa(cr2)}, error code ${errorCode}`);
  }

  /**
   * The #GP handler (Linux arch/x86/kernel/traps.c `exc_general_protection`). From user mode it sends
   * SIGSEGV (`force_sig(SIGSEGV)`), as for a user access to a non-canonical address (SDM Vol. 3A §4.5.1 and
   * §6.15, "Interrupt 13": a non-canonical linear address is #GP, not #PF); in the kernel it is an oops.
   */
  private generalProtection(v: Vcpu, errorCode: number, address: number): void {
    const proc = this.current[v.id];
    if (this.inKernel > 0 || proc === null) {
      throw new KernelPanic(`vCPU ${v.id}: general protection fault in kernel mode at ${hexa(address)}, error code ${errorCode}`);
    }
    this.stats.generalProtection++;
    throw new GuestAbort(`SIGSEGV: pid ${proc.pid}: general protection fault at ${hexa(address)}, error code ${errorCode}`);
  }

  private handleUserFault(v: Vcpu, proc: Process, cr2: number, errorCode: number): number {
    let vma = proc.vmas.find(cr2);
    if (vma === null) return FAULT_SIGSEGV;
    const write = (errorCode & PFERR_WRITE) !== 0;
    const need = write ? PROT_WRITE : (errorCode & PFERR_FETCH) !== 0 ? PROT_EXEC : PROT_READ;
    if ((vma.prot & need) === 0) return FAULT_SIGSEGV;
    let va = cr2 - (((cr2 % PAGE_SIZE) + PAGE_SIZE) % PAGE_SIZE);
    if (vma.backing === VMA_ALIAS) {
      // The read-only view of an arena page: fault the page in through its primary mapping; the alias PDE
      // points to the same page table.
      va -= this.layout.arenaSize;
      vma = proc.vmas.find(va);
      if (vma === null || (vma.prot & PROT_READ) === 0) return FAULT_SIGSEGV;
    }
    const pt = this.tableFor(v, proc, va, 1, true);
    const idx = tableIndex(this.layout, va, 1);
    const lo = this.rd(v, pt, idx);
    const hi = this.hi;
    if ((lo & PT_PRESENT) === 0) return this.notPresent(v, vma, va, pt, idx, write);
    if (write && (lo & PT_WRITABLE) === 0) return this.writeProtect(v, proc, vma, va, pt, idx, lo, hi);
    return FAULT_SPURIOUS;
  }

  private leafHi(vma: Vma): number {
    return this.nx && (vma.prot & PROT_EXEC) === 0 ? HI_XD : 0;
  }

  private notPresent(v: Vcpu, vma: Vma, va: number, pt: number, idx: number, write: boolean): number {
    const hi = this.leafHi(vma);
    if (vma.backing === VMA_ANON) {
      if (!write) {
        this.wr(v, pt, idx, (this.zeroFrame * PAGE_SIZE) | PT_PRESENT | PT_USER | PT_ACCESSED, hi);
        return FAULT_ZERO_PAGE;
      }
      const f = this.newAnonPage(v, vma, -1);
      this.wr(v, pt, idx, (f * PAGE_SIZE) | PT_PRESENT | PT_WRITABLE | PT_USER | PT_ACCESSED | PT_DIRTY, hi);
      return FAULT_DEMAND_ZERO;
    }
    const cache = this.cachePage(v, vma.file!, vma.filePage(va));
    if (vma.backing === VMA_FILE_PRIVATE && write) {
      const f = this.newAnonPage(v, vma, cache);
      this.wr(v, pt, idx, (f * PAGE_SIZE) | PT_PRESENT | PT_WRITABLE | PT_USER | PT_ACCESSED | PT_DIRTY, hi);
      return FAULT_COW;
    }
    this.frames.get(cache);
    let lo = (cache * PAGE_SIZE) | PT_PRESENT | PT_USER | PT_ACCESSED;
    if (vma.backing === VMA_FILE_SHARED && (vma.prot & PROT_WRITE) !== 0) lo |= PT_WRITABLE | (write ? PT_DIRTY : 0);
    this.wr(v, pt, idx, lo, hi);
    return FAULT_FILE;
  }

  /** A new anonymous page: zeroed (clear_page) or a copy of frame `from` (copy_page), through the direct map. */
  private newAnonPage(v: Vcpu, vma: Vma, from: number): number {
    const f = this.frames.alloc(FRAME_ANON);
    const dst = this.dm + f * PAGE_SIZE;
    if (from < 0 || from === this.zeroFrame) v.repStos(dst, PAGE_SIZE / 8, 8, 0, 0);
    else v.repMovs(dst, this.dm + from * PAGE_SIZE, PAGE_SIZE / 8, 8);
    vma.anon = true;
    return f;
  }

  /** A write to a present read-only pte in a writable area: COW (mm/memory.c `do_wp_page`). */
  private writeProtect(v: Vcpu, proc: Process, vma: Vma, va: number, pt: number, idx: number, lo: number, hi: number): number {
    const frame = this.frameOf(lo, hi);
    if (vma.backing === VMA_FILE_SHARED) {
      this.wr(v, pt, idx, lo | PT_WRITABLE | PT_DIRTY | PT_ACCESSED, hi);
      return FAULT_WP_REUSE;
    }
    const f = this.frames;
    if (frame !== this.zeroFrame && f.useOf(frame) === FRAME_ANON && f.refcountOf(frame) === 1) {
      // wp_page_reuse: the only user. Making a pte more permissive needs no flush (a stale entry faults
      // again and the walk sees the new pte, SDM Vol. 3A §4.10.4.3).
      this.wr(v, pt, idx, lo | PT_WRITABLE | PT_DIRTY | PT_ACCESSED, hi);
      return FAULT_WP_REUSE;
    }
    // wp_page_copy: copy, then ptep_clear_flush (clear the pte, flush the TLBs) and set the new pte.
    const copy = this.newAnonPage(v, vma, frame);
    this.wr(v, pt, idx, 0, 0);
    this.flushRange(v, proc, va, va + PAGE_SIZE);
    this.wr(v, pt, idx, (copy * PAGE_SIZE) | PT_PRESENT | PT_WRITABLE | PT_USER | PT_ACCESSED | PT_DIRTY, hi);
    if (frame !== this.zeroFrame) f.put(frame);
    return FAULT_COW;
  }

  /**
   * Flushes [start, end) of `proc` on every vCPU that runs it: INVLPG per page up to the ceiling, else a
   * full (non-global) flush by reloading CR3 (Linux `flush_tlb_mm_range`; on other vCPUs by IPI).
   */
  private flushRange(v: Vcpu, proc: Process, start: number, end: number): void {
    const pages = (end - start) / PAGE_SIZE;
    for (const w of this.machine.vcpus) {
      if (this.current[w.id] !== proc) continue;
      if (w !== v) this.stats.shootdowns++;
      if (pages <= TLB_SINGLE_PAGE_FLUSH_CEILING) {
        for (let a = start; a < end; a += PAGE_SIZE) w.invlpg(a);
        this.stats.invlpgs += pages;
      } else {
        w.movToCr3(w.cr3);
        this.stats.fullFlushes++;
      }
    }
  }

  /** flush_tlb_mm: a full flush on every vCPU that runs `proc`. */
  private flushMm(v: Vcpu, proc: Process): void {
    for (const w of this.machine.vcpus) {
      if (this.current[w.id] !== proc) continue;
      if (w !== v) this.stats.shootdowns++;
      w.movToCr3(w.cr3);
      this.stats.fullFlushes++;
    }
  }

  // ------------------------------------------------------------------------------------------------
  // Walking ranges of the page tables (every entry read through the vCPU)

  /**
   * Calls `leaf(pt, idx, va, lo, hi)` for every pte in [start, end) that is present or PROT_NONE, visiting
   * only tables that exist. Alias PDEs (aliased-pdes) are not descended: the primary mapping owns the PT.
   */
  private forEachPte(v: Vcpu, proc: Process, start: number, end: number, leaf: (pt: number, idx: number, va: number, lo: number, hi: number) => void): void {
    this.visit(v, proc.root, this.layout.top, 0, start, end, leaf);
  }

  private visit(
    v: Vcpu,
    table: number,
    level: number,
    base: number,
    start: number,
    end: number,
    leaf: (pt: number, idx: number, va: number, lo: number, hi: number) => void,
  ): void {
    const L = this.layout;
    const span = 2 ** L.shift[level]!;
    const first = Math.max(0, Math.floor((start - base) / span));
    const n = L.mode === MODE_PAE && level === 3 ? 4 : L.entries;
    const last = Math.min(n - 1, Math.ceil((end - base) / span) - 1);
    for (let i = first; i <= last; i++) {
      const va = base + i * span;
      if (level === L.top && i >= L.kernelTopIndex) break;
      const lo = this.rd(v, table, i);
      const hi = this.hi;
      if (level === 1) {
        if ((lo & (PT_PRESENT | PTE_PROTNONE)) !== 0) leaf(table, i, va, lo, hi);
        continue;
      }
      if ((lo & PT_PRESENT) === 0) continue;
      if (level === 2 && this.aliased && this.inAliasWindow(va)) continue;
      this.visit(v, this.frameOf(lo, hi) * PAGE_SIZE, level - 1, va, start, end, leaf);
    }
  }

  /**
   * Frees the page-table pages under [start, end) whose whole span no area uses any more (Linux
   * `free_pgtables` with its floor and ceiling): clears the entry that points to each, then frees it.
   * `all` frees every user table (exit, exec). The top table is never freed here.
   */
  private freeTables(v: Vcpu, proc: Process, start: number, end: number, all: boolean): void {
    this.freeUnder(v, proc, proc.root, this.layout.top, 0, start, end, all);
  }

  private freeUnder(v: Vcpu, proc: Process, table: number, level: number, base: number, start: number, end: number, all: boolean): void {
    const L = this.layout;
    const span = 2 ** L.shift[level]!;
    const first = Math.max(0, Math.floor((start - base) / span));
    const n = L.mode === MODE_PAE && level === 3 ? 4 : L.entries;
    const last = Math.min(n - 1, Math.ceil((end - base) / span) - 1);
    for (let i = first; i <= last; i++) {
      const va = base + i * span;
      if (level === L.top && i >= L.kernelTopIndex) break;
      const lo = this.rd(v, table, i);
      const hi = this.hi;
      if ((lo & PT_PRESENT) === 0) continue;
      if (level === 2 && this.aliased && this.inAliasWindow(va)) {
        // An alias PDE: the PT belongs to the primary mapping; drop only the entry.
        if (all || !proc.vmas.intersects(va, va + span)) this.wr(v, table, i, 0, 0);
        continue;
      }
      const child = this.frameOf(lo, hi) * PAGE_SIZE;
      if (level - 1 > 1) this.freeUnder(v, proc, child, level - 1, va, start, end, all);
      if (!all && proc.vmas.intersects(va, va + span)) continue;
      // PAE without sparse-pdptes keeps its preallocated PDs until the process ends.
      if (L.mode === MODE_PAE && level === 3 && !this.sparsePdptes && !all) continue;
      if (L.mode === MODE_PAE && level === 3 && this.sparsePdptes) {
        this.wr(v, table, i, JUNK_PDPTE_LO ^ (i << 12), JUNK_PDPTE_HI);
        if (!all) this.reloadPdptes(v, proc);
      } else {
        this.wr(v, table, i, 0, 0);
      }
      if (this.aliased && level - 1 === 1 && this.inArena(va)) this.clearAliasPde(v, proc, va);
      this.freeTable(proc, child, level - 1);
    }
  }

  /** Clears the ptes of [start, end) and drops their pages; returns [min, max) of what was present, or null. */
  private zap(v: Vcpu, proc: Process, start: number, end: number): [number, number] | null {
    let min = Infinity;
    let max = -Infinity;
    this.forEachPte(v, proc, start, end, (pt, idx, va, lo, hi) => {
      this.wr(v, pt, idx, 0, 0);
      const frame = this.frameOf(lo, hi);
      if (frame !== this.zeroFrame) this.frames.put(frame);
      if ((lo & PT_PRESENT) !== 0) {
        min = Math.min(min, va);
        max = Math.max(max, va + PAGE_SIZE);
      }
    });
    return min < max ? [min, max] : null;
  }

  // ------------------------------------------------------------------------------------------------
  // System calls

  /** mmap: a new area (MAP_FIXED replaces what was there). Returns its start. */
  mmap(v: Vcpu, proc: Process, addr: number | null, length: number, prot: number, backing: number, file: FileObject | null = null, offset = 0): number {
    return this.syscall(v, () => {
      this.stats.mmaps++;
      const L = this.layout;
      const len = Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
      let start: number;
      const arena = this.aliased && backing === VMA_ANON && addr === null;
      if (addr !== null) {
        start = addr;
        if (start % PAGE_SIZE !== 0 || start < 0 || start + len > L.userLimit) {
          throw new GuestAbort(`mmap of [${hexa(start)}, ${hexa(start + len)}) is outside user space`);
        }
        if (proc.vmas.intersects(start, start + len)) this.unmapRange(v, proc, start, start + len);
      } else {
        start = arena ? proc.vmas.findGap(L.arenaBase, len, L.arenaBase + L.arenaSize) : proc.vmas.findGap(L.mmapBase, len, L.userLimit);
        if (start < 0) throw new GuestAbort(`mmap of ${len} bytes: no room in the address space (ENOMEM)`);
      }
      proc.vmas.insert(new Vma(start, start + len, prot, backing, file, offset));
      if (arena) proc.vmas.insert(new Vma(start + L.arenaSize, start + L.arenaSize + len, PROT_READ, VMA_ALIAS, null, 0));
      return start;
    });
  }

  munmap(v: Vcpu, proc: Process, start: number, length: number): void {
    this.syscall(v, () => {
      this.stats.munmaps++;
      const end = start + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
      this.unmapRange(v, proc, start, end);
      if (this.aliased && this.inArena(start)) {
        const a = this.layout.arenaSize;
        proc.vmas.remove(proc.vmas.carve(start + a, end + a));
      }
    });
  }

  private unmapRange(v: Vcpu, proc: Process, start: number, end: number): void {
    const areas = proc.vmas.carve(start, end);
    if (areas.length === 0) return;
    let lo = Infinity;
    let hi = -Infinity;
    for (const a of areas) {
      if (a.backing === VMA_ALIAS) continue;
      const r = this.zap(v, proc, a.start, a.end);
      if (r !== null) {
        lo = Math.min(lo, r[0]);
        hi = Math.max(hi, r[1]);
      }
    }
    proc.vmas.remove(areas);
    if (lo < hi) this.flushRange(v, proc, lo, hi);
    this.freeTables(v, proc, areas[0]!.start, areas[areas.length - 1]!.end, false);
  }

  /**
   * mprotect (mm/mprotect.c `change_protection`): new rights for the areas, and each present pte rewritten
   * with `pte_modify`: a private writable area keeps its ptes read-only (PAGE_COPY: the write fault makes
   * them writable); PROT_NONE makes them not present. The range is flushed when a pte changed.
   */
  mprotect(v: Vcpu, proc: Process, start: number, length: number, prot: number): void {
    this.syscall(v, () => {
      this.stats.mprotects++;
      const end = start + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
      const areas = proc.vmas.carve(start, end);
      for (const a of areas) {
        if (a.backing === VMA_ALIAS) continue;
        a.prot = prot;
        let changed = 0;
        const hiNew = this.leafHi(a);
        this.forEachPte(v, proc, a.start, a.end, (pt, idx, _va, lo, hi) => {
          let n = lo & ~(PT_PRESENT | PT_WRITABLE | PTE_PROTNONE);
          if (prot === PROT_NONE) n |= PTE_PROTNONE;
          else {
            n |= PT_PRESENT;
            if (a.backing === VMA_FILE_SHARED && (prot & PROT_WRITE) !== 0 && (lo & PT_DIRTY) !== 0) n |= PT_WRITABLE;
          }
          const nh = this.esz === 8 ? ((hi & ~HI_XD) | hiNew) >>> 0 : 0;
          if (n >>> 0 !== lo >>> 0 || nh !== hi >>> 0) {
            this.wr(v, pt, idx, n, nh);
            changed++;
          }
        });
        if (changed > 0) this.flushRange(v, proc, a.start, a.end);
      }
      proc.vmas.mergeAdjacent();
    });
  }

  /** brk: moves the end of the heap ([brkBase, brkEnd), anonymous, read-write). */
  brk(v: Vcpu, proc: Process, newEnd: number): number {
    return this.syscall(v, () => {
      this.stats.brks++;
      const end = Math.ceil(newEnd / PAGE_SIZE) * PAGE_SIZE;
      const cur = Math.ceil(proc.brkEnd / PAGE_SIZE) * PAGE_SIZE;
      if (end > cur) {
        if (proc.vmas.intersects(cur, end)) return proc.brkEnd;
        proc.vmas.insert(new Vma(cur, end, PROT_READ | PROT_WRITE, VMA_ANON, null, 0));
        proc.vmas.mergeAdjacent();
      } else if (end < cur) {
        this.unmapRange(v, proc, end, cur);
      }
      proc.brkEnd = newEnd;
      return newEnd;
    });
  }

  /**
   * fork (kernel/fork.c `dup_mmap`): the child gets copies of the areas; for areas with anonymous pages
   * (`vma_needs_copy`) the ptes are copied (`copy_page_range`): a writable pte of a private area is
   * write-protected in the parent and the child, the child's copy is old (A=0); then the parent's TLBs are
   * flushed (`flush_tlb_mm`).
   */
  fork(v: Vcpu, parent: Process): Process {
    return this.syscall(v, () => {
      this.stats.forks++;
      const child = new Process(this.nextPid++, parent, parent.name);
      this.newMm(v, child);
      this.processes.push(child);
      this.stats.processes++;
      child.brkBase = parent.brkBase;
      child.brkEnd = parent.brkEnd;
      for (const a of parent.vmas.list) child.vmas.insert(a.clone());
      for (const a of parent.vmas.list) {
        if (!a.anon || a.backing === VMA_ALIAS) continue;
        const cow = a.backing !== VMA_FILE_SHARED;
        this.forEachPte(v, parent, a.start, a.end, (pt, idx, va, lo, hi) => {
          let c = lo & ~PT_ACCESSED;
          if (cow && (lo & PT_WRITABLE) !== 0) {
            this.wr(v, pt, idx, lo & ~PT_WRITABLE, hi);
            c &= ~PT_WRITABLE;
          }
          if (!cow) c &= ~PT_DIRTY;
          const frame = this.frameOf(lo, hi);
          if (frame !== this.zeroFrame) this.frames.get(frame);
          const cpt = this.tableFor(v, child, va, 1, true);
          this.wr(v, cpt, idx, c, hi);
        });
      }
      this.flushMm(v, parent);
      return child;
    });
  }

  /**
   * exec: a new address space with the image's areas; the vCPU switches to it, then the old one is torn
   * down (fs/exec.c `exec_mmap`, then `mmput` -> `exit_mmap`), its page-table pages freed.
   */
  exec(v: Vcpu, proc: Process, image: ImageSpec): void {
    this.execWith(v, proc, image.path, () => this.mapImage(proc, image));
  }

  /** exec with explicit areas (a trace's exec event: the mappings the loader made). */
  execAreas(v: Vcpu, proc: Process, path: string, areas: readonly AreaSpec[]): void {
    this.execWith(v, proc, path, () => {
      for (const a of areas) {
        if (a.end <= a.start || proc.vmas.intersects(a.start, a.end)) continue;
        const vma = new Vma(a.start, a.end, a.prot, a.backing, a.file, a.offset);
        vma.growsDown = a.growsDown;
        proc.vmas.insert(vma);
      }
      proc.brkBase = 0;
      proc.brkEnd = 0;
    });
  }

  private execWith(v: Vcpu, proc: Process, path: string, map: () => void): void {
    this.syscall(v, () => {
      this.stats.execs++;
      const old = new Process(proc.pid, proc.parent, proc.name);
      old.root = proc.root;
      for (const a of proc.vmas.list) old.vmas.list.push(a);
      old.tables.set(proc.tables);
      proc.vmas.clear();
      proc.tables.fill(0);
      proc.name = path;
      this.newMm(v, proc);
      map();
      for (const w of this.machine.vcpus) {
        if (this.current[w.id] === proc) w.movToCr3(proc.root);
      }
      this.teardown(v, old);
    });
  }

  /** The areas of an image (ELF load, fs/binfmt_elf.c): text and data from the file, bss, heap, stack. */
  mapImage(proc: Process, image: ImageSpec): void {
    const L = this.layout;
    const file = this.file(image.path);
    let at = L.textBase;
    const add = (pages: number, prot: number, backing: number, offset: number): Vma | null => {
      if (pages <= 0) return null;
      const vma = new Vma(at, at + pages * PAGE_SIZE, prot, backing, backing === VMA_ANON ? null : file, offset);
      proc.vmas.insert(vma);
      at += pages * PAGE_SIZE;
      return vma;
    };
    add(image.textPages, PROT_READ | PROT_EXEC, VMA_FILE_PRIVATE, 0);
    add(image.dataPages, PROT_READ | PROT_WRITE, VMA_FILE_PRIVATE, image.textPages * PAGE_SIZE);
    add(image.bssPages, PROT_READ | PROT_WRITE, VMA_ANON, 0);
    proc.brkBase = at;
    proc.brkEnd = at;
    if (image.stackPages > 0) {
      const stack = new Vma(L.stackTop - image.stackPages * PAGE_SIZE, L.stackTop, PROT_READ | PROT_WRITE, VMA_ANON, null, 0);
      stack.growsDown = true;
      proc.vmas.insert(stack);
    }
  }

  /** Where the image's areas start: text, and the stack's top. */
  imageAddresses(): { text: number; stackTop: number } {
    return { text: this.layout.textBase, stackTop: this.layout.stackTop };
  }

  /** exit: the vCPUs that run the process go idle, then its address space is torn down. */
  exit(v: Vcpu, proc: Process): void {
    if (proc.exited) return;
    this.syscall(v, () => {
      this.stats.exits++;
      for (const w of this.machine.vcpus) if (this.current[w.id] === proc) this.switchTo(w, null);
      this.teardown(v, proc);
      proc.exited = true;
    });
  }

  /** exit_mmap: zap every area, free every user table, then the top table (pgd_free). */
  private teardown(v: Vcpu, proc: Process): void {
    for (const a of proc.vmas.list) if (a.backing !== VMA_ALIAS) this.zap(v, proc, a.start, a.end);
    // free_pgtables over all of user space (PAE: the preallocated PDs too), then pgd_free.
    this.freeTables(v, proc, 0, this.layout.userLimit + PAGE_SIZE, true);
    this.freeTable(proc, proc.root, this.layout.top);
    proc.vmas.clear();
  }

  // ------------------------------------------------------------------------------------------------
  // Inspection (tests, reports): a software walk of the kernel's own tables, read from guest memory.

  /** The pte of `va` in `proc` as (lo, hi) read from guest memory directly, or null if a table is missing. */
  inspectPte(proc: Process, va: number): { lo: number; hi: number; table: number } | null {
    const m = this.machine.memory;
    const L = this.layout;
    let table = proc.root;
    for (let lv = L.top; lv >= 1; lv--) {
      const a = table + tableIndex(L, va, lv) * this.esz;
      const lo = m.read32(a);
      const hi = this.esz === 8 ? m.read32(a + 4) : 0;
      if (lv === 1) return { lo, hi, table };
      if ((lo & PT_PRESENT) === 0) return null;
      table = this.frameOf(lo, hi) * PAGE_SIZE;
    }
    return null;
  }

  /** The span of a page table (level 1): how much one PT maps. */
  get ptSpan(): number {
    return tableSpan(this.layout, 1);
  }
}

/** The deterministic content word of page `index` of file `id`. */
export function fileWord(id: number, index: number): number {
  let h = Math.imul(id, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b);
  h ^= h >>> 15;
  return Math.imul(h, 0xc2b2ae35) >>> 0;
}

export function hexa(n: number): string {
  return n < 0 ? `-0x${(-n).toString(16)}` : `0x${n.toString(16)}`;
}

export { PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE, VMA_ANON, VMA_FILE_PRIVATE, VMA_FILE_SHARED } from './vma.js';
