import { PAGE_SIZE, type Machine } from '@vmexit/core';
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
  /** The process each vCPU runs (null: idle, on the kernel-only tables). */
  readonly current: (Process | null)[];
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
    if (mem > layout.maxMemory) {
      throw new GuestConfigError(`guest memory of ${mem} bytes does not fit the ${layout.maxMemory / 2 ** 30} GiB kernel direct map of this paging mode`);
    }
    if (mem % layout.directMapPage !== 0) {
      throw new GuestConfigError(
        `guest memory of ${mem} bytes is not a multiple of the ${layout.directMapPage / 2 ** 20} MiB direct-map page of this paging mode`,
      );
    }
    if (machine.memory.slots.length !== 1 || machine.memory.slots[0]!.baseGfn !== 0) {
      throw new GuestConfigError('the guest kernel expects one RAM memslot at guest-physical address 0');
    }
    this.current = machine.vcpus.map(() => null);

    // Frame 0 is reserved (real-mode IVT/BIOS data), then the idle top table and the direct map's tables,
    // then the zero page.
    const totalFrames = mem / PAGE_SIZE;
    let next = 1;
    const bootAlloc = (): number => {
      const f = next++;
      if (f >= totalFrames) throw new GuestConfigError(`guest memory of ${mem} bytes is too small to boot`);
      return f * PAGE_SIZE;
    };
    const boot = buildDirectMap(machine.memory, layout, this.nx, bootAlloc);
    this.idleRoot = boot.root;
    this.kernelPd = boot.kernelPd;
    this.zeroFrame = bootAlloc() / PAGE_SIZE;
    this.frames = new FrameAllocator(totalFrames, next);
    if (this.frames.freeCount < 64) throw new GuestConfigError(`guest memory of ${mem} bytes leaves only ${this.frames.freeCount} free pages after boot`);
  }
}
