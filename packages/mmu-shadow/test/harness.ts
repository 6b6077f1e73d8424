import {
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  CR4_PSE,
  EFER_LME,
  EFER_NXE,
  FAULT_DELIVER,
  FAULT_DONE,
  FAULT_RETRY,
  GuestAbort,
  Machine,
  MSR_EFER,
  PF_VECTOR,
  type FaultAction,
  type MemslotSpec,
  type MmuDecisionOf,
  type MmuEvent,
  type MmuHost,
  type Vcpu,
  type VcpuHooks,
} from '@vmexit/core';
import { EMULATION_FAILED, createEmulationOutcome, emulatePendingAccess } from '@vmexit/core/mmu';
import { levelIndex } from '../src/gpte.js';
import { ShadowMmu, type ShadowMmuOptions } from '../src/index.js';

export type Mode = 'legacy32' | 'pae' | 'long4';

/**
 * A small stand-in for the VM (the exit pipeline is another package's): every #PF, CR write and INVLPG
 * exits (shadow paging on VMX/SVM with the default intercepts), goes to the MMU, and its resolution is
 * applied the way core's emulation contract says. Counts exits by reason and audits after every exit.
 */
export class Harness implements MmuHost, VcpuHooks {
  readonly counters = new Map<string, number>();
  readonly exits = new Map<string, number>();
  decider: ((ev: MmuEvent) => MmuDecisionOf<MmuEvent> | null) | null = null;
  audit = true;
  private readonly out = createEmulationOutcome();

  constructor(
    readonly machine: Machine,
    readonly mmu: ShadowMmu,
  ) {}

  get vcpus(): readonly Vcpu[] {
    return this.machine.vcpus;
  }

  count(_vcpuId: number, name: string, n = 1): void {
    this.counters.set(name, (this.counters.get(name) ?? 0) + n);
  }

  decide<E extends MmuEvent>(event: E, fallback: MmuDecisionOf<E>): MmuDecisionOf<E> {
    const d = this.decider?.(event) ?? null;
    return (d ?? fallback) as MmuDecisionOf<E>;
  }

  c(name: string): number {
    return this.counters.get(name) ?? 0;
  }

  e(reason: string): number {
    return this.exits.get(reason) ?? 0;
  }

  reset(): void {
    this.counters.clear();
    this.exits.clear();
  }

  private exit(reason: string): void {
    this.exits.set(reason, (this.exits.get(reason) ?? 0) + 1);
  }

  /** VMX's #PF filter (SDM Vol. 3C §25.6.3, EB[14] = 1): a #PF exits iff (error code & mask) === match. */
  pfecMask = 0;
  pfecMatch = 0;

  exception(vcpu: Vcpu, vector: number, errorCode: number, address: number): FaultAction {
    if (vector !== PF_VECTOR) return FAULT_DELIVER;
    if ((errorCode & this.pfecMask) !== this.pfecMatch) {
      this.count(vcpu.id, 'pf_bypassed');
      return FAULT_DELIVER;
    }
    this.exit('pf');
    const res = this.mmu.handlePageFault(vcpu, address, errorCode);
    let action: FaultAction;
    switch (res.kind) {
      case 'resume':
        action = FAULT_RETRY;
        break;
      case 'inject':
        // As the VM's hooks do (KVM kvm_inject_page_fault counts pf_guest).
        this.count(vcpu.id, 'pf_guest');
        vcpu.deliverErrorCode = res.errorCode;
        action = FAULT_DELIVER;
        break;
      case 'userspace':
        // As the VM's hooks do: user space completes the access (open bus), through the emulator.
        this.exit('mmio');
        action = emulatePendingAccess(vcpu, this.mmu, this.out).action as FaultAction;
        break;
      case 'emulate': {
        const o = emulatePendingAccess(vcpu, this.mmu, this.out);
        if (o.action === EMULATION_FAILED) {
          this.exit('emulation-failed');
          action = this.mmu.emulationFailed(vcpu, o.gpa) ? FAULT_RETRY : FAULT_DELIVER;
        } else action = o.action;
        break;
      }
    }
    if (this.audit) this.mmu.audit();
    return action;
  }

  nestedFault(): FaultAction {
    throw new Error('no second stage under shadow paging');
  }

  mmio(): FaultAction {
    this.exit('mmio');
    return FAULT_DONE;
  }

  crWrite(vcpu: Vcpu, cr: number, oldValue: number): void {
    this.exit(`cr${cr === MSR_EFER ? 'efer' : cr}`);
    this.mmu.crWritten(vcpu, cr, oldValue, true);
    if (this.audit) this.mmu.audit();
  }

  crWriteFault(_vcpu: Vcpu, cr: number): FaultAction {
    // The write exits before its #GP (SDM Vol. 3C §26.1.1); the handler's PDPTE load fails and it injects
    // #GP(0) (KVM kvm_set_cr3 -> load_pdptrs -> kvm_complete_insn_gp). The MMU hears nothing.
    this.exit(`cr${cr === MSR_EFER ? 'efer' : cr}`);
    if (this.audit) this.mmu.audit();
    return FAULT_DELIVER;
  }

  invlpg(vcpu: Vcpu, va: number): void {
    this.exit('invlpg');
    this.mmu.invlpg(vcpu, va, true);
    if (this.audit) this.mmu.audit();
  }
}

export const P = 1;
export const W = 2;
export const U = 4;
export const A = 0x20;
export const D = 0x40;
export const PS = 0x80;

/** Guest page tables built by hand in guest memory (the guest kernel's own tables), for one mode. */
export class GuestTables {
  root: number;
  private next: number;

  constructor(
    readonly machine: Machine,
    readonly mode: Mode,
    tableBase = 0x100000,
  ) {
    this.next = tableBase;
    this.root = this.alloc();
    if (mode === 'pae') {
      for (let i = 0; i < 4; i++) this.w64(this.root + i * 8, this.alloc() | P, 0);
    }
  }

  alloc(): number {
    const f = this.next;
    this.next += 4096;
    this.machine.memory.u8.fill(0, f, f + 4096);
    return f;
  }

  w64(pa: number, lo: number, hi: number): void {
    this.machine.memory.write32(pa, lo >>> 0);
    this.machine.memory.write32(pa + 4, hi >>> 0);
  }

  r32(pa: number): number {
    return this.machine.memory.read32(pa);
  }

  /** The address of the entry at `level` for `va`, creating the tables above it (non-leaf entries P|W|U). */
  entryAddr(va: number, level: number): number {
    const m = this.machine.memory;
    if (this.mode === 'legacy32') {
      const pde = this.root + (va >>> 22) * 4;
      if (level === 2) return pde;
      if ((m.read32(pde) & P) === 0) m.write32(pde, this.alloc() | P | W | U);
      return (m.read32(pde) & 0xfffff000) + ((va >>> 12) & 1023) * 4;
    }
    let table: number;
    let top: number;
    if (this.mode === 'pae') {
      table = this.machine.memory.read32(this.root + (va >>> 30) * 8) & 0xfffff000;
      top = 2;
    } else {
      table = this.root;
      top = 4;
    }
    for (let l = top; l > level; l--) {
      const e = table + levelIndex(va, l) * 8;
      if ((m.read32(e) & P) === 0) this.w64(e, this.alloc() | P | W | U, 0);
      table = m.read32(e) & 0xfffff000;
    }
    return table + levelIndex(va, level) * 8;
  }

  /** Maps `va` to `pa` with `flags` at `level` (2 = a large page: PS is added). `hi` is the entry's high half. */
  map(va: number, pa: number, flags: number, level = 1, hi = 0): number {
    const e = this.entryAddr(va, level);
    const lo = (pa | flags | (level > 1 ? PS : 0)) >>> 0;
    if (this.mode === 'legacy32') this.machine.memory.write32(e, lo);
    else this.w64(e, lo, hi);
    return e;
  }
}

export interface Setup {
  machine: Machine;
  mmu: ShadowMmu;
  h: Harness;
  pt: GuestTables;
  vcpu: Vcpu;
}

/**
 * A guest in `mode` on `vcpus` vCPUs, 16 MiB of RAM, its tables from 1 MiB, the first 4 MiB identity-mapped
 * for the kernel (supervisor, writable), paging enabled with CR0.WP (unless `wp` is false).
 */
export function setup(
  mode: Mode,
  options: ShadowMmuOptions & { vcpus?: number; wp?: boolean; nxe?: boolean; memoryBytes?: number; memslots?: MemslotSpec[] } = {},
): Setup {
  const machine = new Machine({ memoryBytes: options.memoryBytes ?? 16 * 1024 * 1024, vcpus: options.vcpus ?? 1, memslots: options.memslots });
  const mmu = new ShadowMmu(options);
  const h = new Harness(machine, mmu);
  mmu.init(h);
  const pt = new GuestTables(machine, mode);
  for (let va = 0; va < 0x400000; va += 4096) pt.map(va, va, P | W);
  for (const vcpu of machine.vcpus) {
    mmu.attachVcpu(vcpu);
    vcpu.hooks = h;
    if (options.nxe || mode === 'long4') vcpu.writeEfer((mode === 'long4' ? EFER_LME : 0) | (options.nxe ? EFER_NXE : 0));
    vcpu.movToCr4(mode === 'legacy32' ? CR4_PSE : CR4_PAE);
    vcpu.movToCr3(pt.root);
    vcpu.movToCr0(CR0_PG | (options.wp === false ? 0 : CR0_WP) | 1);
  }
  h.reset();
  return { machine, mmu, h, pt, vcpu: machine.vcpus[0]! };
}

/** The error codes of the #PFs delivered to the guest (each abandons its access, as a guest kills a task). */
export function recordFaults(vcpu: Vcpu): number[] {
  const faults: number[] = [];
  vcpu.setExceptionHandler(PF_VECTOR, (_v, _vec, ec) => {
    faults.push(ec);
    throw new GuestAbort('#PF');
  });
  return faults;
}

/** `f()` at CPL 3 (a user-mode access), back at CPL 0 after it, whatever it threw. */
export function asUser<T>(vcpu: Vcpu, f: () => T): T {
  vcpu.setCpl(3);
  try {
    return f();
  } finally {
    vcpu.setCpl(0);
  }
}
