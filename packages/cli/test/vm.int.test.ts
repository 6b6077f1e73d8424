import {
  COST_PROFILES,
  ACC_WRITE,
  ArrayRecorder,
  CR0_PE,
  CR0_PG,
  CR4_PAE,
  createVm,
  EFER_LME,
  PFERR_PRESENT,
  PT_PRESENT,
  PT_WRITABLE,
  TYPES,
  VariantError,
  type FaultPolicy,
  type ModuleSources,
  type PageFaultFilter,
  type Vcpu,
  type Vm,
} from '@vmexit/core';
import { svmModule } from '@vmexit/backend-svm';
import { vmxModule } from '@vmexit/backend-vmx';
import { ContainerModule } from 'inversify';
import { describe, expect, it } from 'vitest';
import { fakeMmuModule, type FakeMmu } from './helpers/fake-mmu.js';

/** A test policy: KVM's bypass_guest_pf programming (PFEC_MASK = PFEC_MATCH = P), commit c7addb902054. */
const bypassPolicy: FaultPolicy = {
  name: 'test-bypass',
  description: 'PFEC_MASK = PFEC_MATCH = P: not-present #PF go straight to the guest',
  needs: ['PageFaultFilter'],
  setup(ctx) {
    const f = ctx.capability<PageFaultFilter>('PageFaultFilter');
    for (const s of ctx.backendStates) f.setPfecMaskMatch(s, PFERR_PRESENT, PFERR_PRESENT);
  },
};
const testPolicies = new ContainerModule(({ bind }) => {
  bind<FaultPolicy>(TYPES.FaultPolicy).toConstantValue(bypassPolicy);
});

function sources(): { sources: ModuleSources; mmu: () => FakeMmu } {
  const { module, mmu } = fakeMmuModule();
  return { sources: { backends: { vmx: vmxModule, svm: svmModule }, mmus: { shadow: module }, policies: [testPolicies] }, mmu };
}

const PML4 = 0x1000;
const PDPT = 0x2000;
const PD = 0x3000;
const PT = 0x4000;
const VA = 0x40_0000; // PML4[0] PDPT[0] PD[2] PT[0]
const DATA = 0x10_0000;

/** A 4-level guest with VA's page table present and VA's pte empty; its #PF handler maps VA writable. */
function bootGuest(vm: Vm): Vcpu {
  const v = vm.vcpus[0]!;
  const m = v.memory;
  const link = (at: number, to: number) => m.write32(at, to | PT_PRESENT | PT_WRITABLE);
  link(PML4, PDPT);
  link(PDPT, PD);
  link(PD + 2 * 8, PT);
  v.setExceptionHandler(14, (vcpu, _vector, errorCode, cr2) => {
    faults.push([errorCode, cr2]);
    m.write32(PT, DATA | PT_PRESENT | PT_WRITABLE);
  });
  v.writeEfer(EFER_LME);
  v.movToCr4(CR4_PAE);
  v.movToCr3(PML4);
  v.movToCr0((CR0_PG | CR0_PE) >>> 0);
  return v;
}
let faults: [number, number][] = [];

describe('createVm', () => {
  it('runs a guest demand fault on VMX with shadow intercepts: every exit counted, the #PF reflected', async () => {
    faults = [];
    const { sources: src, mmu } = sources();
    const recorder = new ArrayRecorder();
    const vm = await createVm({ backend: 'vmx', mmu: 'shadow', memory: '4M' }, { sources: src, recorder });
    const v = bootGuest(vm);
    v.write(VA, 4, 0xcafe);
    v.invlpg(VA);
    // Exits: WRMSR EFER (MSR bitmap), MOV CR4 (PAE host-owned), MOV CR3 (CR3-load exiting, no targets), MOV CR0
    // (PG/PE host-owned): 4. The write faults with P=0 W=1 (ec 2): EB[14]=1 and mask = match = 0, so it exits
    // (EXCEPTION_NMI), the MMU's handler finds the guest pte not present and injects #PF(2); the guest maps the
    // page; the retry succeeds without an exit. INVLPG exits (INVLPG exiting): 1. Total 6.
    const c = vm.counters();
    expect(c.total).toMatchObject({
      exits: 6,
      'exits.MSR_WRITE': 1,
      'exits.CR_ACCESS': 3,
      'exits.EXCEPTION_NMI': 1,
      'exits.INVLPG': 1,
      pf_guest: 1,
      'guest.page_faults': 1,
    });
    expect(c.perVcpu[0]).toEqual(c.total);
    expect(faults).toEqual([[ACC_WRITE, VA]]);
    expect(v.memory.read32(DATA)).toBe(0xcafe);
    expect(mmu().calls).toEqual(['crEFER exited', 'cr4 exited', 'cr3 exited', 'cr0 exited', `pf ${VA.toString(16)} 2`, `invlpg ${VA.toString(16)} exited`]);
    expect(recorder.exits.map((e) => [e.hw.name, e.resolution?.kind, e.resolvedBy])).toEqual([
      ['MSR_WRITE', 'resume', 'mmu'],
      ['CR_ACCESS', 'resume', 'mmu'],
      ['CR_ACCESS', 'resume', 'mmu'],
      ['CR_ACCESS', 'resume', 'mmu'],
      ['EXCEPTION_NMI', 'inject', 'mmu'],
      ['INVLPG', 'resume', 'mmu'],
    ]);
    // Plus every paging-structure entry the hardware walks read (walk_refs, priced per reference).
    const walkRefs = vm.counters().total.walk_refs!;
    expect(walkRefs).toBeGreaterThan(0);
    expect(vm.cycles('server-2020s').cycles).toBe(
      6 * 1360 + 680 /* pf_guest */ + 3780 /* the guest's fault */ + walkRefs * COST_PROFILES['server-2020s']!.walkReference.cycles,
    );
  });

  it('with a policy that programs PFEC_MASK = PFEC_MATCH = P, the not-present fault bypasses the hypervisor', async () => {
    faults = [];
    const { sources: src } = sources();
    const vm = await createVm({ backend: 'vmx', memory: '4M', policies: [{ use: 'test-bypass' }] }, { sources: src });
    const v = bootGuest(vm);
    v.write(VA, 4, 1);
    // The P=0 fault: (2 & 1) != 1, so EB[14]=1 is reversed: no exit, delivered to the guest directly.
    expect(vm.counters().total).toMatchObject({ exits: 4, 'guest.page_faults': 1 });
    expect(vm.counters().total['exits.EXCEPTION_NMI']).toBeUndefined();
    expect(faults).toEqual([[ACC_WRITE, VA]]);
  });

  it('exits to user space on MMIO and completes the read with all ones', async () => {
    faults = [];
    const { sources: src } = sources();
    const vm = await createVm({ backend: 'svm', memory: '4M' }, { sources: src });
    const v = bootGuest(vm);
    v.memory.write32(PT + 8, 0xfee0_0000 | PT_PRESENT | PT_WRITABLE); // VA + 4 KiB -> the local APIC page, no RAM
    expect(v.read(VA + 0x1000, 4)).toBe(0xffffffff);
    // SVM under shadow paging: EFER (VMEXIT_MSR), CR4, CR3, CR0 writes, then the MMIO access as a #PF with P|RSVD.
    expect(vm.counters().total).toMatchObject({ exits: 5, 'exits.VMEXIT_MSR': 1, 'exits.VMEXIT_CR3_WRITE': 1, 'exits.VMEXIT_EXCP14': 1, mmio_exits: 1 });
  });

  it('refuses a policy whose capability the backend lacks, naming the policy, the capability and the backend', async () => {
    const { sources: src } = sources();
    const p = createVm({ backend: 'svm', policies: [{ use: 'test-bypass' }] }, { sources: src });
    await expect(p).rejects.toBeInstanceOf(VariantError);
    await expect(p).rejects.toThrow(
      "policies.0.use: policy 'test-bypass' needs PageFaultFilter (error-code filtering of #PF exits (VMX PFEC_MASK/PFEC_MATCH)), which backend 'svm' does not provide",
    );
  });

  it('reports every problem of an invalid variant with its path', async () => {
    const { sources: src } = sources();
    // A caller without types (JavaScript, a config file): createVm(VariantInput) rejects this at compile time too.
    // @ts-expect-error backend 'arm', vcpus 'two' and colour are not a VariantInput
    const err = await createVm({ backend: 'arm', vcpus: 'two', colour: 'red', policies: [{ use: 'nope-policy-xyz' }] }, { sources: src }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(VariantError);
    const paths = (err as VariantError).problems.map((p) => p.path);
    expect(paths).toEqual(expect.arrayContaining(['backend', 'vcpus', 'colour']));
  });

  it('says clearly that the tdp MMU is not available', async () => {
    const { sources: src } = sources();
    await expect(createVm({ backend: 'vmx', mmu: 'tdp' }, { sources: src })).rejects.toThrow("mmu: no module for mmu 'tdp'");
  });
});
