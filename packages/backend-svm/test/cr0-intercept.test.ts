import { CR0_PE, CR0_PG, CR0_WP, CR4_PAE, createVm, EFER_LME, TYPES, type ExitResolution, type Mmu, type MmuMode, type Vm } from '@vmexit/core';
import { ContainerModule } from 'inversify';
import { describe, expect, it } from 'vitest';
import { SvmBackend } from '../src/backend.js';
import {
  CR0_CD,
  CR0_ET,
  CR0_MP,
  CR0_TS,
  INTERCEPT_CR0_READ,
  INTERCEPT_CR0_WRITE,
  INTERCEPT_SELECTIVE_CR0,
  VMEXIT_CR0_SEL_WRITE,
  VMEXIT_CR0_WRITE,
} from '../src/constants.js';
import { svmModule } from '../src/module.js';
import { createVmcb } from '../src/state.js';

const svm = new SvmBackend();
/** CR0.AM (bit 18): a bit neither paging nor TS/MP. */
const CR0_AM = 1 << 18;
/** What a guest OS runs with: PG, WP, ET, PE (ET reads as 1, so a read-modify-write keeps it). */
const GUEST_CR0 = (CR0_PG | CR0_WP | CR0_ET | CR0_PE) >>> 0;

/** An MMU that only hears CR writes: these tests make no memory access (long mode loads no PDPTEs). */
function crOnlyMmu(name: MmuMode): Mmu {
  return {
    name,
    init() {},
    attachVcpu() {},
    handlePageFault(): ExitResolution {
      throw new Error('no page fault expected');
    },
    trackWrite() {},
    crWritten() {},
    invlpg() {},
    emulationFailed: () => false,
  };
}

async function svmVm(mmu: MmuMode): Promise<Vm> {
  const mmuModule = new ContainerModule(({ bind }) => {
    bind<Mmu>(TYPES.Mmu).toConstantValue(crOnlyMmu(mmu));
  });
  return createVm({ backend: 'svm', mmu }, { sources: { backends: { svm: svmModule }, mmus: { [mmu]: mmuModule }, policies: [] } });
}

function exitsOf(vm: Vm): Record<string, number> {
  return Object.fromEntries(Object.entries(vm.counters().total).flatMap(([k, n]) => (k.startsWith('exits.VMEXIT_') ? [[k.slice('exits.'.length), n]] : [])));
}

describe('SvmBackend CR0 intercepts as KVM programs them (svm.c init_vmcb, svm_set_cr0)', () => {
  it('starts with the CR0 write intercept and the selective CR0 write intercept on, the VMCB CR0 from RESET', () => {
    const s = createVmcb('shadow');
    const t = createVmcb('tdp');
    for (const v of [s, t]) {
      expect(v.interceptCr & INTERCEPT_CR0_WRITE).not.toBe(0);
      expect(v.interceptMisc1 & INTERCEPT_SELECTIVE_CR0).toBe(1 << 5); // Table B-1: vector 3 bit 5
    }
    // RESET CR0 6000_0010h; CD and NW cleared (KVM_X86_QUIRK_CD_NW_CLEARED); PG and WP forced under shadow paging.
    expect(s.cr0).toBe((CR0_PG | CR0_WP | CR0_ET) >>> 0);
    expect(t.cr0).toBe(CR0_ET);
  });

  it('clears the CR0 read and write intercepts once the VMCB runs the guest its own CR0, and sets them back otherwise', () => {
    for (const mmu of ['shadow', 'tdp'] as const) {
      const v = createVmcb(mmu);
      v.interceptCr |= INTERCEPT_CR0_READ;
      svm.crWriteHandled(v, 0, GUEST_CR0);
      expect([v.cr0, v.interceptCr & (INTERCEPT_CR0_READ | INTERCEPT_CR0_WRITE)], mmu).toEqual([GUEST_CR0, 0]);
      // CD set: KVM runs the guest with CD clear (the quirk), so hcr0 != cr0 and the intercepts come back.
      svm.crWriteHandled(v, 0, GUEST_CR0 | CR0_CD);
      expect(v.interceptCr & (INTERCEPT_CR0_READ | INTERCEPT_CR0_WRITE), mmu).toBe(INTERCEPT_CR0_READ | INTERCEPT_CR0_WRITE);
    }
    // Without WP: under shadow paging KVM forces WP on (hcr0 != cr0: intercepted); under NPT it does not.
    const s = createVmcb('shadow');
    const t = createVmcb('tdp');
    svm.crWriteHandled(s, 0, (CR0_PG | CR0_PE) >>> 0);
    svm.crWriteHandled(t, 0, (CR0_PG | CR0_PE) >>> 0);
    expect(s.interceptCr & INTERCEPT_CR0_WRITE).toBe(INTERCEPT_CR0_WRITE);
    expect(t.interceptCr & INTERCEPT_CR0_WRITE).toBe(0);
  });

  it('with only the selective intercept, exits on a CR0 write that changes a bit other than TS and MP, as VMEXIT_CR0_SEL_WRITE', () => {
    const v = createVmcb('tdp');
    svm.crWriteHandled(v, 0, GUEST_CR0);
    for (const value of [GUEST_CR0, GUEST_CR0 | CR0_TS, GUEST_CR0 | CR0_MP, GUEST_CR0 | CR0_TS | CR0_MP]) expect(svm.crWriteExits(v, 0, value)).toBe(false);
    for (const value of [GUEST_CR0 | CR0_AM, GUEST_CR0 & ~CR0_WP, (GUEST_CR0 & ~CR0_PG) >>> 0]) expect(svm.crWriteExits(v, 0, value)).toBe(true);
    // A 64-bit operand with bit 32 set changes a bit other than TS and MP: it exits (then KVM injects the #GP).
    expect(svm.crWriteExits(v, 0, GUEST_CR0 + 2 ** 32)).toBe(true);
    // APM §15.33.1 decode assists: EXITINFO1 bit 63 = MOV (KVM cr_interception checks CR_VALID for SEL_WRITE too).
    expect(svm.crWriteExit(v, 0, GUEST_CR0 | CR0_AM)).toMatchObject({
      code: VMEXIT_CR0_SEL_WRITE,
      name: 'VMEXIT_CR0_SEL_WRITE',
      fields: { exitInfo1: 2 ** 63 },
    });
    // The CR0 write intercept has priority over the selective one (§15.9.2).
    expect(svm.crWriteExit(createVmcb('tdp'), 0, GUEST_CR0)).toMatchObject({ code: VMEXIT_CR0_WRITE });
  });

  for (const mmu of ['shadow', 'tdp'] as const) {
    it(`${mmu}: a guest that boots and then rewrites CR0 takes exactly the exits KVM's VMCB gives`, async () => {
      const vm = await svmVm(mmu);
      const v = vm.vcpus[0]!;
      v.writeEfer(EFER_LME);
      v.movToCr4(CR4_PAE);
      v.movToCr3(0x10000);
      v.movToCr0(GUEST_CR0);
      // Boot: EFER (MSR_PROT), CR4 (always intercepted), CR3 (shadow paging only), CR0 (the CR0 write intercept
      // is on since RESET): 1 VMEXIT_CR0_WRITE, after which KVM clears the CR0 write intercept.
      v.movToCr0(GUEST_CR0 | CR0_TS); // TS only: no exit
      v.movToCr0(GUEST_CR0 | CR0_TS | CR0_MP); // MP only: no exit
      v.movToCr0(GUEST_CR0); // TS and MP back: no exit
      v.movToCr0(GUEST_CR0); // the same value: no exit
      v.movToCr0(GUEST_CR0 | CR0_AM); // AM changes: 1 VMEXIT_CR0_SEL_WRITE
      expect(exitsOf(vm)).toEqual({
        VMEXIT_MSR: 1,
        VMEXIT_CR4_WRITE: 1,
        ...(mmu === 'shadow' ? { VMEXIT_CR3_WRITE: 1 } : {}),
        VMEXIT_CR0_WRITE: 1,
        VMEXIT_CR0_SEL_WRITE: 1,
      });
    });
  }
});
