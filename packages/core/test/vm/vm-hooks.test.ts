import { describe, expect, it } from 'vitest';
import {
  ACC_WRITE,
  ArrayRecorder,
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  EFER_LME,
  GP_VECTOR,
  GuestAbort,
  MachineError,
  NoopRecorder,
  NoopTracer,
  PF_VECTOR,
  PT_DIRTY,
  Vm,
  type FaultPolicy,
  type HardwareExitBuffer,
  type MemslotSpec,
  type Mmu,
  type ExitResolution,
  type Vcpu,
  type VmExit,
} from '../../src/index.js';
import { tap } from 'rxjs';
import { variantSchema } from '../../src/vm/variant.js';
import { FakeBackend } from './fake-backend.js';
import { TestTables } from '../machine/tables.js';

/**
 * A shadow MMU in miniature: the hardware walks `shadowRoot` (tables the test builds) when set, else the
 * guest's own tables; #PF exits resolve as `onFault` says. Records what it was told.
 */
class FakeMmu implements Mmu {
  readonly name = 'shadow' as const;
  shadowRoot: number | null = null;
  onFault: ExitResolution = { kind: 'resume' };
  unprotect: (gpa: number) => boolean = () => false;
  readonly log: string[] = [];
  init(): void {}
  attachVcpu(vcpu: Vcpu): void {
    this.point(vcpu);
  }
  private point(vcpu: Vcpu): void {
    vcpu.activeCtx = this.shadowRoot === null ? vcpu.ctx : { ...vcpu.ctx, cr3: this.shadowRoot };
  }
  handlePageFault(_v: Vcpu, address: number, errorCode: number): ExitResolution {
    this.log.push(`pf ${address.toString(16)} ${errorCode}`);
    return this.onFault;
  }
  trackWrite(_v: Vcpu, gpa: number, size: number): void {
    this.log.push(`write ${gpa.toString(16)} ${size}`);
  }
  crWritten(vcpu: Vcpu, cr: number, _old: number, exited: boolean): void {
    this.log.push(`cr${cr} ${exited ? 'exited' : 'no exit'}`);
    this.point(vcpu);
  }
  invlpg(): void {}
  emulationFailed(_v: Vcpu, gpa: number): boolean {
    this.log.push(`emulation failed ${gpa.toString(16)}`);
    return this.unprotect(gpa);
  }
}

function vmWith(opts: { memslots?: MemslotSpec[] } = {}) {
  const backend = new FakeBackend();
  const mmu = new FakeMmu();
  const rec = new ArrayRecorder();
  const variant = variantSchema.parse({ backend: 'vmx', mmu: 'shadow', memory: '4M', vcpus: 1 });
  const vm = new Vm(variant, backend, mmu, [], () => null, new NoopTracer(), rec, 1, { memslots: opts.memslots });
  const v = vm.vcpus[0]!;
  const exits = () => rec.exits.map((e) => `${e.hw.name} -> ${e.resolution?.kind ?? 'none'}`);
  return { vm, v, backend, mmu, rec, exits, total: () => vm.counters().total };
}

/** A long4 guest on `vmWith`'s VM: tables from 0x1000, identity-mapped kernel pages as the test asks. */
function long4(r: ReturnType<typeof vmWith>, firstFrame = 0x1000): TestTables {
  const t = new TestTables(r.vm.machine.memory, 'long4', firstFrame);
  r.v.writeEfer(EFER_LME);
  r.v.movToCr4(CR4_PAE);
  r.v.movToCr3(t.root);
  r.v.movToCr0(CR0_PG | CR0_WP | 1); // WP: supervisor stores honour read-only ptes
  return t;
}

describe('VmHooks', () => {
  describe('.mmio', () => {
    it('makes a store to read-only RAM an exit to user space each time, and never writes the ROM', () => {
      const ROM = 0x200000;
      const r = vmWith({
        memslots: [
          { base: 0, size: 0x100000 },
          { base: ROM, size: 0x10000, readonly: true },
        ],
      });
      const t = long4(r);
      const mem = r.vm.machine.memory;
      mem.write32(ROM, 0x1234abcd);
      t.map(0x400000, ROM, 0x3 | PT_DIRTY);
      // Exits: the read is RAM (none); each of the two stores is an MMIO exit that user space completes by
      // dropping it (KVM_MEM_READONLY -> KVM_EXIT_MMIO), because the read's TLB entry has no write permission.
      expect(r.v.read(0x400000, 4)).toBe(0x1234abcd);
      r.v.write(0x400000, 4, 1);
      r.v.write(0x400000, 4, 2);
      expect(r.v.read(0x400000, 4)).toBe(0x1234abcd);
      expect(r.exits()).toEqual(['MMIO -> userspace', 'MMIO -> userspace']);
      expect(r.rec.exits.map((e) => (e.kind === 'mmio' ? [e.gpa, e.access] : null))).toEqual([
        [ROM, ACC_WRITE],
        [ROM, ACC_WRITE],
      ]);
      expect(r.total()['mmio_exits']).toBe(2);
    });

    it('counts an emulated store that lands in read-only RAM as an MMIO exit, and leaves the ROM alone', () => {
      const ROM = 0x200000;
      const r = vmWith({
        memslots: [
          { base: 0, size: 0x100000 },
          { base: ROM, size: 0x10000, readonly: true },
        ],
      });
      const t = long4(r);
      t.map(0x400000, ROM, 0x3 | PT_DIRTY);
      // The active tables map the page read-only, so the store faults; the MMU answers "emulate".
      const s = new TestTables(r.vm.machine.memory, 'long4', 0x80000);
      s.map(0x400000, ROM, 0x1);
      r.mmu.shadowRoot = s.root;
      r.v.movToCr3(t.root);
      r.backend.interceptPf = true;
      r.mmu.onFault = { kind: 'emulate' };
      r.v.write(0x400000, 4, 0x77);
      // Exit 1: the #PF (P|W) -> emulate: the emulator's walk of the guest tables reaches the ROM -> MMIO.
      expect(r.exits()).toEqual(['EXCEPTION_14 -> emulate']);
      expect(r.total()).toMatchObject({ mmio_exits: 1, insn_emulation: 1 });
      expect(r.vm.machine.memory.read32(ROM)).toBe(0);
      // Nor does the emulator back the ROM page that it found read-only: it was never written, and stays unbacked.
      expect(r.vm.machine.memory.isBacked(ROM / 4096)).toBe(false);
      expect(r.mmu.log.filter((l) => l.startsWith('write'))).toEqual([]); // no tracked write: nothing was stored
    });
  });

  describe('.crWriteFault', () => {
    /** A PAE guest, and a PDPT whose first entry is present with reserved bit 5 set. */
    function paeWithBadPdpt() {
      const r = vmWith();
      const t = new TestTables(r.vm.machine.memory, 'pae');
      r.v.movToCr4(CR4_PAE);
      r.v.movToCr3(t.root);
      r.v.movToCr0(CR0_PG | 1);
      const bad = t.alloc();
      r.vm.machine.memory.write32(bad, 0x5000 | 1 | (1 << 5));
      const gp: number[] = [];
      r.v.setExceptionHandler(GP_VECTOR, (_v, _vec, ec) => gp.push(ec));
      r.mmu.log.length = 0;
      return { ...r, t, bad, gp };
    }

    it('exits before the #GP when CR3 writes are intercepted; the handler injects #GP(0) and the MMU hears nothing', () => {
      const r = paeWithBadPdpt();
      r.backend.intercepted.add(3);
      r.v.movToCr3(r.bad);
      // SDM Vol. 3C §26.1.1: the CR3-load exit has priority over the #GP of the PDPTE load. Exit 1, the CR3
      // write (faulted): KVM kvm_set_cr3 -> load_pdptrs fails -> inject #GP(0); VM entry delivers it to the
      // guest's handler. No second exit (#GP is not intercepted); the MMU is not told (no root switch).
      expect(r.exits()).toEqual(['CR3_WRITE -> inject']);
      const e = r.rec.exits[0]!;
      expect(e.kind === 'cr-write' ? [e.cr, e.value, e.oldValue, e.faulted] : null).toEqual([3, r.bad, r.t.root, true]);
      expect(e.resolution).toEqual({ kind: 'inject', vector: GP_VECTOR, errorCode: 0 });
      expect(r.gp).toEqual([0]);
      expect(r.v.cr3).toBe(r.t.root);
      expect(r.mmu.log).toEqual([]);
      expect(r.total()).toMatchObject({ exits: 1, 'exits.kind.cr-write': 1 });
      // The same guest-visible outcome as without the intercept:
      r.backend.intercepted.delete(3);
      r.v.movToCr3(r.bad);
      expect(r.gp).toEqual([0, 0]);
      expect(r.v.cr3).toBe(r.t.root);
      expect(r.rec.exits.length).toBe(1); // no exit this time: the guest's own #GP
    });

    it('without the CR3 intercept, the #GP is an ordinary exception: it exits only when #GP is intercepted', () => {
      const r = paeWithBadPdpt();
      r.backend.interceptGp = true;
      r.v.movToCr3(r.bad);
      // Exit 1: the #GP itself (exception bitmap bit 13) -> reflected to the guest (KVM handle_exception_nmi).
      expect(r.exits()).toEqual(['EXCEPTION_13 -> inject']);
      expect(r.gp).toEqual([0]);
      expect(r.v.cr3).toBe(r.t.root);
      expect(r.mmu.log).toEqual([]);
    });

    it('lets a good PAE CR3 write exit and reach the MMU as before', () => {
      const r = paeWithBadPdpt();
      r.backend.intercepted.add(3);
      const good = r.t.alloc();
      r.vm.machine.memory.write32(good, 0x5000 | 1);
      r.v.movToCr3(good);
      expect(r.exits()).toEqual(['CR3_WRITE -> resume']);
      expect(r.rec.exits[0]!.kind === 'cr-write' && r.rec.exits[0]!.faulted).toBe(false);
      expect(r.v.cr3).toBe(good);
      expect(r.mmu.log).toEqual(['cr3 exited']);
      expect(r.gp).toEqual([]);
    });
  });

  describe('emulation failure', () => {
    /**
     * A long4 guest whose page 0x400000 (gpa 0x300000) is writable in its own tables and read-only in the
     * active ones: a store to it exits (#PF P|W), and the MMU answers "emulate". A 16-byte vector store is
     * what the emulator cannot do.
     */
    function writeProtected() {
      const r = vmWith();
      const t = long4(r);
      t.map(0x400000, 0x300000, 0x3 | PT_DIRTY);
      const s = new TestTables(r.vm.machine.memory, 'long4', 0x80000);
      const spte = s.pteAddr(0x400000);
      s.map(0x400000, 0x300000, 0x1);
      r.mmu.shadowRoot = s.root;
      r.v.movToCr3(t.root);
      r.backend.interceptPf = true;
      r.mmu.onFault = { kind: 'emulate' };
      r.mmu.log.length = 0;
      return { ...r, s, spte };
    }

    it('retries once the MMU unprotected a shadowed page table at the gpa, and the guest does the store itself', () => {
      const r = writeProtected();
      r.mmu.unprotect = () => {
        r.s.set(r.spte, 0x300000 | 0x3 | PT_DIRTY, 0); // the gfn is no longer write-protected
        return true;
      };
      r.v.repStos(0x400000, 2, 16, 0x11111111, 0x22222222);
      // Exit 1: #PF -> emulate -> the emulator fails (16-byte store) -> kvm_mmu_unprotect_page -> retry,
      // which finds the page writable: the whole rep stos completes from there, with no second exit.
      expect(r.exits()).toEqual(['EXCEPTION_14 -> emulate']);
      expect(r.mmu.log).toEqual(['pf 400000 3', 'emulation failed 300000']);
      expect(r.total()).toMatchObject({ insn_emulation: 1, insn_emulation_fail: 1 });
      expect(r.vm.machine.memory.read32(0x300000 + 28)).toBe(0x22222222);
    });

    it('stops the run with an error naming the gpa when there was nothing to unprotect, instead of retrying forever', () => {
      const r = writeProtected();
      let err: unknown = null;
      try {
        r.v.repStos(0x400010, 1, 16, 0x11111111, 0x22222222);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(MachineError);
      expect((err as MachineError).code).toBe('emulation-failure');
      expect((err as MachineError).message).toMatch(/emulation failed for the 16-byte store of 0x400010 \(gpa 0x300010\).*KVM_EXIT_INTERNAL_ERROR/);
      // One exit, one failed emulation, one question to the MMU: no loop.
      expect(r.exits()).toEqual(['EXCEPTION_14 -> emulate']);
      expect(r.mmu.log).toEqual(['pf 400010 3', 'emulation failed 300010']);
      expect(r.vm.machine.memory.read32(0x300010)).toBe(0);
      // The emulator stored nothing, and took no page to store into: the page, never written, stays unbacked.
      expect(r.vm.machine.memory.isBacked(0x300000 / 4096)).toBe(false);
    });
  });

  describe('.exception (exit objects)', () => {
    /** A backend that can describe an exception exit into a buffer, like VMX and SVM. */
    class BufferingBackend extends FakeBackend {
      exceptionExitInto(_s: unknown, vector: number, _ec: number, _a: number, out: HardwareExitBuffer): void {
        out.backend = 'vmx';
        out.code = 0;
        out.name = `EXCEPTION_${vector}`;
      }
    }

    /** A VM with no tracer or recorder, whose one policy keeps every exit object it sees and its seq then. */
    function quietVm() {
      const backend = new BufferingBackend();
      const mmu = new FakeMmu();
      const seen: { exit: VmExit; seq: number }[] = [];
      const keep: FaultPolicy<unknown> = {
        name: 'keep',
        description: 'keeps what it sees',
        needs: [],
        exits: () => tap((e: VmExit) => seen.push({ exit: e, seq: e.seq })),
      };
      const variant = variantSchema.parse({ backend: 'vmx', mmu: 'shadow', memory: '4M', vcpus: 1 });
      const vm = new Vm(variant, backend, mmu, [{ policy: keep, options: {} }], () => null, new NoopTracer(), new NoopRecorder(), 1);
      const r = { vm, v: vm.vcpus[0]!, backend, mmu, rec: new ArrayRecorder(), exits: () => [], total: () => vm.counters().total };
      const t = long4(r);
      // The guest maps the page writable; the active (shadow) tables read-only: each store faults (P|W) and
      // the MMU answers "emulate", so each store is one exit and nothing is left in the TLB to hit.
      t.map(0x400000, 0x300000, 0x3 | PT_DIRTY);
      const s = new TestTables(vm.machine.memory, 'long4', 0x80000);
      s.map(0x400000, 0x300000, 0x1);
      mmu.shadowRoot = s.root;
      r.v.movToCr3(t.root);
      backend.interceptPf = true;
      mmu.onFault = { kind: 'emulate' };
      return { ...r, seen };
    }

    it('refills one exit object per vCPU while nothing outside the pipeline can keep it', () => {
      const r = quietVm();
      r.v.write(0x400000, 4, 1);
      r.v.write(0x400008, 4, 2);
      // Two exits (one per store), the same object, numbered 1 and 2 as they went through.
      expect(r.seen.map((x) => x.seq)).toEqual([1, 2]);
      expect(r.seen[0]!.exit).toBe(r.seen[1]!.exit);
      expect(r.total()).toMatchObject({ exits: 2, 'exits.EXCEPTION_14': 2, 'exits.kind.exception': 2, insn_emulation: 2 });
      expect(r.vm.machine.memory.read32(0x300008)).toBe(2);
    });

    it('gives each exit an object of its own while something subscribes to exits$', () => {
      const r = quietVm();
      const out: VmExit[] = [];
      const sub = r.vm.exits$.subscribe((e) => out.push(e));
      r.v.write(0x400000, 4, 1);
      r.v.write(0x400008, 4, 2);
      sub.unsubscribe();
      expect(out.map((e) => e.seq)).toEqual([1, 2]);
      expect(out[0]).not.toBe(out[1]);
      expect(out.map((e) => e.hw.name)).toEqual(['EXCEPTION_14', 'EXCEPTION_14']);
    });
  });

  describe('an intercepted #PF under TDP (KVM handle_exception_nmi -> kvm_fixup_and_inject_pf_error)', () => {
    /**
     * A TDP MMU in miniature for a guest told MAXPHYADDR 36 on a processor with 46: the hardware walks the
     * guest's tables as the processor does, with its own MAXPHYADDR (activeCtx, re-made after each CR write).
     */
    function tdpVm() {
      const backend = new FakeBackend();
      const log: string[] = [];
      const point = (vcpu: Vcpu) => {
        vcpu.activeCtx = { ...vcpu.ctx, maxPhyAddr: vcpu.hostMaxPhyAddr };
      };
      const mmu: Mmu = {
        name: 'tdp',
        init() {},
        attachVcpu: point,
        handlePageFault(_v, address, errorCode) {
          log.push(`pf ${address.toString(16)} ${errorCode}`);
          return { kind: 'resume' };
        },
        trackWrite() {},
        crWritten: point,
        invlpg() {},
        emulationFailed: () => false,
      };
      const rec = new ArrayRecorder();
      const variant = variantSchema.parse({ backend: 'vmx', mmu: 'tdp', memory: '4M', vcpus: 1 });
      const vm = new Vm(variant, backend, mmu, [], () => null, new NoopTracer(), rec, 1, { maxPhyAddr: 36, hostMaxPhyAddr: 46 });
      const v = vm.vcpus[0]!;
      const r = {
        vm,
        v,
        backend,
        mmu: null as unknown as FakeMmu,
        rec,
        exits: () => rec.exits.map((e) => `${e.hw.name} -> ${e.resolution?.kind ?? 'none'}`),
        total: () => vm.counters().total,
      };
      const t = long4(r);
      const codes: number[] = [];
      v.setExceptionHandler(PF_VECTOR, (_v, _n, errorCode) => {
        codes.push(errorCode);
        throw new GuestAbort('abandon');
      });
      backend.interceptPf = true;
      return { ...r, t, log, codes };
    }

    function attempt(f: () => void): void {
      try {
        f();
      } catch (e) {
        if (!(e instanceof GuestAbort)) throw e;
      }
    }

    it("injects the guest walk's own fault (RSVD under the guest's MAXPHYADDR), else the processor's error code; the MMU is not called", () => {
      const r = tdpVm();
      r.t.set(r.t.pteAddr(0x400000), 0x300000 | 0x1, 1 << 8); // gpa 2^40 + 0x300000, present, read-only: bit 40 is reserved to the guest, legal to the processor
      r.t.map(0x401000, 0x300000, 0x1); // present, read-only, no reserved bit
      attempt(() => r.v.write(0x400000, 4, 1)); // exit 1: P|W from the processor; injected P|W|RSVD (0xb)
      attempt(() => r.v.write(0x401000, 4, 1)); // exit 2: P|W; the guest walk agrees: injected P|W (0x3)
      expect(r.codes).toEqual([0xb, 0x3]);
      expect(r.exits()).toEqual(['EXCEPTION_14 -> inject', 'EXCEPTION_14 -> inject']);
      expect(r.log).toEqual([]); // kvm_mmu_page_fault is not reached (the address is linear, not a gpa)
      expect(r.total()).toMatchObject({ exits: 2, pf_guest: 2 });
    });
  });
});
