import { defaultMemslots, guestPhysicalEnd, MMIO_HOLE_START, PAGE_SIZE, type Machine } from '@vmexit/core';
import { buildDirectMap } from './boot.js';
import { GuestConfigError } from './errors.js';
import { FrameAllocator } from './frames.js';
import { MODE_LEGACY32, MODE_LONG4, MODE_LONG5, MODE_PAE, modeLayout, type ModeLayout } from './layout.js';
import type { Process } from './process.js';
import { GuestEventLog, KernelStats } from './stats.js';
import type { FileObject } from './vma.js';

/** Guest personalities: behaviours of guests that broke KVM's shadow MMU historically. */
export const PERSONALITIES = ['byte-pte-writes', 'sparse-pdptes', 'aliased-pdes'] as const;
/** One guest personality (see PERSONALITIES). */
export type Personality = (typeof PERSONALITIES)[number];

/** How the guest kernel boots: its personalities, and whether it touches every free page through the direct map. */
export interface KernelOptions {
  readonly personalities?: readonly Personality[];
  /** Read and write back every free page through the direct map at boot (default true). */
  readonly warmDirectMap?: boolean;
}

/**
 * The kernel's data, in one declared place (Linux's globals and `init_mm`): what every mm module reads and
 * updates. Building it checks the configuration and lays out the boot page tables in RAM (physical writes,
 * as a loaded kernel image holds them; paging is still off).
 */
export class KernelState {
  readonly layout: ModeLayout;
  readonly frames: FrameAllocator;
  readonly stats = new KernelStats();
  readonly events = new GuestEventLog();
  readonly personalities: ReadonlySet<Personality>;
  /**
   * The address space each vCPU has loaded (arch/x86/mm/tlb.c `cpu_tlbstate.loaded_mm`): the process whose tables
   * CR3 holds (null: idle, on the kernel-only tables). It is `running`'s space (`Process.mm`), or, when `running`
   * is null, a space the vCPU keeps loaded in lazy TLB mode (a vfork child exited there before its exec).
   */
  readonly current: (Process | null)[];
  /** The process each vCPU runs (null: none: the vCPU is idle, lazily on `current` when that is not null). */
  readonly running: (Process | null)[];
  /**
   * A vCPU in lazy TLB mode missed a flush of the space it has loaded (no IPI: its `cpu_tlbstate.ctxs[].tlb_gen`
   * is behind the mm's `context.tlb_gen`); its next switch back to that space reloads CR3 (see tlb.ts).
   */
  readonly lazyBehind: boolean[];
  readonly processes: Process[] = [];
  /** Top table of init_mm (swapper_pg_dir): the kernel half only. */
  readonly idleRoot: number;
  /** PAE: the kernel PD that PDPTE 3 of every process points to. */
  readonly kernelPd: number;
  readonly zeroFrame: number;
  readonly files = new Map<string, FileObject>();
  nextPid = 1;
  /** > 0 while kernel code runs (a system call, the #PF handler, a context switch): a #GP then is the kernel's. */
  inKernel = 0;
  readonly byteWrites: boolean;
  readonly sparsePdptes: boolean;
  readonly aliased: boolean;
  /** EFER.NXE is set: leaves of non-executable areas carry XD. */
  readonly nx: boolean;
  /** Bytes per page-table entry. */
  readonly esz: 4 | 8;
  /** Linear address of the direct map of physical address 0. */
  readonly dm: number;

  constructor(
    readonly machine: Machine,
    mode: number,
    options: KernelOptions,
  ) {
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
    this.running = machine.vcpus.map(() => null);
    this.lazyBehind = machine.vcpus.map(() => false);

    // Frame 0 is reserved (real-mode IVT/BIOS data), then the idle top table and the direct map's tables,
    // then the zero page.
    const totalFrames = usable / PAGE_SIZE;
    let next = 1;
    const bootAlloc = (): number => {
      const f = next++;
      if (f >= totalFrames) throw new GuestConfigError(`guest memory of ${mem} bytes is too small to boot`);
      return f * PAGE_SIZE;
    };
    const boot = buildDirectMap(machine.memory, usable, layout, this.nx, bootAlloc);
    this.idleRoot = boot.root;
    this.kernelPd = boot.kernelPd;
    this.zeroFrame = bootAlloc() / PAGE_SIZE;
    this.frames = new FrameAllocator(totalFrames, next);
    if (this.frames.freeCount < 64) throw new GuestConfigError(`guest memory of ${mem} bytes leaves only ${this.frames.freeCount} free pages after boot`);
  }
}
