import { CR0_PE, CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, DirtyLog, EFER_LME, EFER_NXE, GuestAbort, Machine, PF_VECTOR, type Vcpu } from '@vmexit/core';
import { levelIndex } from '../src/gpte.js';
import { ShadowMmu } from '../src/index.js';
import { GuestTables, Harness, P, W } from './harness.js';

/**
 * The same guest run natively (the core's walker over the guest's own tables) and under the shadow MMU (the
 * harness: every #PF, CR write and INVLPG exits, or with `pfecMask`/`pfecMatch` VMX's #PF filter), so that a
 * scenario can compare what the guest sees: the faults delivered (error codes) and the data read.
 */

/** 4-level tables, or 5-level ones (CR4.LA57: a PML5 above the PML4, SDM Vol. 3A §4.5.1). */
export class LongTables extends GuestTables {
  constructor(
    machine: Machine,
    readonly levels: 4 | 5,
  ) {
    super(machine, 'long4');
  }

  override entryAddr(va: number, level: number): number {
    const m = this.machine.memory;
    let table = this.root;
    for (let l = this.levels; l > level; l--) {
      const e = table + levelIndex(va, l) * 8;
      if ((m.read32(e) & P) === 0) this.w64(e, this.alloc() | P | W | 4 /* U */, 0);
      table = m.read32(e) & 0xfffff000;
    }
    return table + levelIndex(va, level) * 8;
  }
}

export interface ParityGuest {
  machine: Machine;
  vcpu: Vcpu;
  pt: GuestTables;
  /** The shadow run's harness and MMU (null natively). */
  h: Harness | null;
  mmu: ShadowMmu | null;
  /** What the guest saw, in order: a read's value, `ok` for a completed write or fetch, `#PF <ec hex>`. */
  log: string[];
  /** A 4-byte data read at CPL `cpl` on vCPU `cpu`, logged. */
  read(va: number, cpl?: 0 | 3, cpu?: number): void;
  /** A 4-byte store, logged. */
  write(va: number, value: number, cpl?: 0 | 3, cpu?: number): void;
  /** An instruction fetch, logged. */
  fetch(va: number, cpl?: 0 | 3, cpu?: number): void;
}

export interface ParityOptions {
  levels?: 4 | 5;
  /** A 32-bit guest instead (`levels` is then ignored): 32-bit paging with CR4.PSE, or PAE paging. */
  paging?: 'legacy32' | 'pae';
  wp?: boolean;
  /** Extra CR4 bits set before paging is enabled (PAE, and LA57 for 5 levels, are added). */
  cr4?: number;
  vcpus?: number;
  pfecMask?: number;
  pfecMatch?: number;
  /** The shadow run's MMU decisions (harness `decider`): pte-write, unsync, prefetch policies. */
  decider?: Harness['decider'];
  /** The bypass encoding (trap/notrap sptes, KVM's ~0xffe and 0) with VMX's filter: P=0 faults go to the guest. */
  bypass?: boolean;
  /** The fast page fault, with every page of slot 0 dirty-logged. */
  fastDirtyLog?: boolean;
}

/**
 * A 64-bit guest (or a 32-bit one, `paging`) of 16 MiB, tables from 1 MiB, the first 4 MiB identity-mapped
 * supervisor-writable, EFER.NXE (not for 32-bit paging), natively (`shadow` false) or under the shadow MMU.
 */
export function parityGuest(shadow: boolean, o: ParityOptions = {}): ParityGuest {
  const machine = new Machine({ memoryBytes: 16 * 1024 * 1024, vcpus: o.vcpus ?? 1 });
  let mmu: ShadowMmu | null = null;
  let h: Harness | null = null;
  if (shadow) {
    mmu = new ShadowMmu({ fastPageFault: o.fastDirtyLog === true });
    h = new Harness(machine, mmu);
    h.pfecMask = o.pfecMask ?? 0;
    h.pfecMatch = o.pfecMatch ?? 0;
    h.decider = o.decider ?? null;
    mmu.init(h);
    if (o.bypass === true) {
      mmu.setNonPresentSptes(0xfffff001, 0xffffffff, 0, 0);
      h.pfecMask = 1;
      h.pfecMatch = 1;
    }
    if (o.fastDirtyLog === true) {
      const log = new DirtyLog(machine.memory);
      mmu.attachDirtyLog(log);
      log.enable(0);
    }
  }
  const pt = o.paging !== undefined ? new GuestTables(machine, o.paging) : new LongTables(machine, o.levels ?? 4);
  for (let va = 0; va < 0x400000; va += 4096) pt.map(va, va, P | W);
  for (const vcpu of machine.vcpus) {
    if (mmu !== null && h !== null) {
      mmu.attachVcpu(vcpu);
      vcpu.hooks = h;
    }
    if (o.paging === undefined) vcpu.writeEfer(EFER_LME | EFER_NXE);
    else if (o.paging === 'pae') vcpu.writeEfer(EFER_NXE);
    const mode = o.paging === 'legacy32' ? CR4_PSE : o.paging === 'pae' ? CR4_PAE : CR4_PAE | (o.levels === 5 ? CR4_LA57 : 0);
    vcpu.movToCr4(mode | (o.cr4 ?? 0));
    vcpu.movToCr3(pt.root);
    vcpu.movToCr0(CR0_PG | CR0_PE | (o.wp === false ? 0 : CR0_WP));
  }
  h?.reset();
  const vcpu = machine.vcpus[0]!;
  const log: string[] = [];
  for (const v of machine.vcpus) {
    v.setExceptionHandler(PF_VECTOR, (_v, _vec, ec) => {
      log.push(`#PF ${ec.toString(16)}`);
      throw new GuestAbort('#PF');
    });
  }
  const at = (v: Vcpu, cpl: 0 | 3, f: () => void): void => {
    v.setCpl(cpl);
    try {
      f();
    } catch (e) {
      if (!(e instanceof GuestAbort)) throw e;
    } finally {
      v.setCpl(0);
    }
  };
  return {
    machine,
    vcpu,
    pt,
    h,
    mmu,
    log,
    read: (va, cpl = 0, cpu = 0) => {
      const v = machine.vcpus[cpu]!;
      at(v, cpl, () => log.push(`${v.read(va, 4)}`));
    },
    write: (va, value, cpl = 0, cpu = 0) => {
      const v = machine.vcpus[cpu]!;
      at(v, cpl, () => {
        v.write(va, 4, value);
        log.push('ok');
      });
    },
    fetch: (va, cpl = 0, cpu = 0) => {
      const v = machine.vcpus[cpu]!;
      at(v, cpl, () => {
        v.fetch(va, 1);
        log.push('ok');
      });
    },
  };
}

/** Runs `script` natively and under the shadow MMU; returns both logs (and the shadow guest, for its counters). */
export function runBoth(o: ParityOptions, script: (g: ParityGuest) => void): { native: string[]; shadow: string[]; s: ParityGuest } {
  const n = parityGuest(false, o);
  script(n);
  const s = parityGuest(true, o);
  script(s);
  return { native: n.log, shadow: s.log, s };
}
