import { GuestMemory, type MemslotSpec } from './guest-memory.js';
import { Rng } from './rng.js';
import { Vcpu } from './vcpu.js';

export interface MachineOptions {
  /** Bytes of guest RAM (ignored when `memslots` is given). */
  readonly memoryBytes: number;
  readonly vcpus?: number;
  /** The guest-physical layout; by default one RAM slot from 0. */
  readonly memslots?: readonly MemslotSpec[];
  /** CPUID.80000008H:EAX[7:0] of the guest, 36..52 (default 46). */
  readonly maxPhyAddr?: number;
  /**
   * The processor's (host's) MAXPHYADDR, 36..52 (default: the guest's). Under TDP the hardware walks the
   * guest's tables with it; a guest MAXPHYADDR below it is KVM's allow_smaller_maxphyaddr case.
   */
  readonly hostMaxPhyAddr?: number;
  readonly tlbEntries?: number;
  /** Seed of the scheduler's interleaving. */
  readonly seed?: number;
}

/**
 * The machine: guest-physical memory and the vCPUs, interleaved on one thread by a seeded scheduler. What
 * runs below the guest is set per vCPU through `vcpu.hooks` (native by default).
 */
export class Machine {
  readonly memory: GuestMemory;
  readonly vcpus: readonly Vcpu[];
  readonly scheduler: Scheduler;

  constructor(options: MachineOptions) {
    const n = options.vcpus ?? 1;
    if (!Number.isInteger(n) || n < 1 || n > 256) throw new RangeError(`vcpus must be an integer from 1 to 256, not ${n}`);
    const maxPhyAddr = options.maxPhyAddr ?? 46;
    if (!Number.isInteger(maxPhyAddr) || maxPhyAddr < 36 || maxPhyAddr > 52) throw new RangeError(`maxPhyAddr must be 36..52, not ${maxPhyAddr}`);
    const hostMaxPhyAddr = options.hostMaxPhyAddr ?? maxPhyAddr;
    if (!Number.isInteger(hostMaxPhyAddr) || hostMaxPhyAddr < maxPhyAddr || hostMaxPhyAddr > 52) {
      throw new RangeError(`hostMaxPhyAddr must be an integer from the guest's maxPhyAddr (${maxPhyAddr}) to 52, not ${hostMaxPhyAddr}`);
    }
    this.memory = new GuestMemory(options.memoryBytes, options.memslots);
    const vcpus: Vcpu[] = [];
    for (let i = 0; i < n; i++) vcpus.push(new Vcpu(i, this.memory, { maxPhyAddr, hostMaxPhyAddr, tlbEntries: options.tlbEntries }));
    this.vcpus = vcpus;
    this.scheduler = new Scheduler(options.seed ?? 0);
  }
}

/**
 * The seeded scheduler that interleaves vCPUs on one thread: given how many are runnable, which one runs the
 * next quantum, and how long the quantum is. Same seed, same interleaving.
 */
export class Scheduler {
  readonly rng: Rng;

  constructor(seed: number) {
    this.rng = new Rng(seed ^ 0x5eed);
  }

  /** The index (0..runnable-1) of the vCPU that runs next. */
  pick(runnable: number): number {
    return runnable <= 1 ? 0 : this.rng.nextInt(runnable);
  }

  /** A quantum length in operations, uniformly in [min, max]. */
  quantum(min: number, max: number): number {
    return min + this.rng.nextInt(max - min + 1);
  }
}
