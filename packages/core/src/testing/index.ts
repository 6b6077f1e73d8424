/**
 * `@vmexit/core/testing`: helpers for testing a fault policy without casts. A typed per-vCPU context for a
 * policy's operators (`policyVcpuContext`), exits as the backends report them (`pageFaultExit`), a vCPU
 * with real page tables (`pagedVcpu`), a real VM that runs a small workload of the guest OS model with
 * the policy in it (`runPolicyVm`), and a count of V8's garbage collections for a test that pins "allocates
 * nothing" without timing anything (`GcWatch`).
 *
 * @example
 * import { policyVcpuContext, pageFaultExit, pagedVcpu } from '@vmexit/core/testing';
 * const ctx = policyVcpuContext({ from: 0, to: 0x4000 }, { vcpu: pagedVcpu([{ va: 0x1000, gpa: 0x20000 }]) });
 * const out = await lastValueFrom(of(pageFaultExit({ address: 0x2800 })).pipe(myPolicy.exits!(ctx)));
 *
 * @module
 */
import type { ContainerModule } from 'inversify';
import { pathToFileURL } from 'node:url';
// Through the package's public entry only: what a policy author's test sees is what these helpers use.
import {
  CR0_PE,
  hexU64,
  CR0_PG,
  CR4_PAE,
  createVm,
  DEFAULT_MODULE_SOURCES,
  EFER_LME,
  Machine,
  PFERR_USER,
  PFERR_WRITE,
  PT_PRESENT,
  PT_USER,
  PT_WRITABLE,
  type Backend,
  type ExceptionExit,
  type HardwareExit,
  type ModuleSources,
  type Mmu,
  type PolicyVcpuContext,
  type VariantInput,
  type Vcpu,
  type Vm,
} from '../index.js';
// Internal: how createVm itself resolves a package name from a directory.
import { resolveSpecifier } from '../vm/modules.js';

/** A `PolicyVcpuContext` for a test, with what the policy counted. */
export interface TestPolicyContext<O> extends PolicyVcpuContext<O> {
  /** The counters the policy added to through `count`, by name. */
  readonly counts: Record<string, number>;
}

/** What a test gives `policyVcpuContext` beyond the options; anything left out throws when the policy uses it. */
export interface TestPolicyContextParts {
  /** The vCPU (default: vCPU 0 of a 1 MiB machine with paging off; see `pagedVcpu`). */
  readonly vcpu?: Vcpu;
  readonly backend?: Backend;
  readonly mmu?: Mmu;
  readonly backendState?: unknown;
  /** The capability objects the policy may ask for, by capability name. */
  readonly capabilities?: Readonly<Record<string, unknown>>;
}

/** An object of which every property read throws: a part of a test context that the test did not give. */
function missing<T extends object>(what: string): T {
  return new Proxy({} as T, {
    get(_t, key) {
      if (key === 'then') return undefined; // not a thenable
      throw new Error(`the test context has no ${what} (read of '${String(key)}'): pass one to policyVcpuContext`);
    },
  });
}

/**
 * A typed per-vCPU context for calling a policy's `exits` or `mmuEvents` operator directly, as the VM would.
 * `count` adds to `counts`. Parts not given (backend, MMU, capabilities) throw a clear error when used.
 *
 * @example
 * const ctx = policyVcpuContext({ threshold: 3 });
 * of(exit).pipe(policy.exits!(ctx));
 * expect(ctx.counts).toEqual({ 'my_policy.taken': 1 });
 */
export function policyVcpuContext<O>(options: O, parts: TestPolicyContextParts = {}): TestPolicyContext<O> {
  const vcpu = parts.vcpu ?? new Machine({ memoryBytes: 1 << 20 }).vcpus[0]!;
  const counts: Record<string, number> = {};
  const backendState = parts.backendState ?? null;
  return {
    options,
    vcpu,
    backend: parts.backend ?? missing<Backend>('backend'),
    mmu: parts.mmu ?? missing<Mmu>('MMU'),
    vcpus: [vcpu],
    backendStates: [backendState],
    backendState,
    counts,
    count(name: string, n = 1): void {
      counts[name] = (counts[name] ?? 0) + n;
    },
    capability<T>(name: string): T {
      const c = parts.capabilities?.[name];
      if (c === undefined) throw new Error(`the test context has no capability '${name}': pass it in policyVcpuContext's capabilities`);
      return c as T;
    },
  };
}

/**
 * A #PF exception exit as a backend reports it before any policy saw it (unresolved). The error code and
 * the access default to a user-mode write to a not-present page (PFERR_USER | PFERR_WRITE).
 */
export function pageFaultExit(e: {
  address: number;
  errorCode?: number;
  access?: number;
  vcpu?: number;
  seq?: number;
  backend?: 'vmx' | 'svm';
}): ExceptionExit {
  const errorCode = e.errorCode ?? PFERR_USER | PFERR_WRITE;
  const backend = e.backend ?? 'vmx';
  // VMX: exit reason 0 EXCEPTION_NMI (SDM Vol. 3C Appendix C); SVM: EXITCODE 0x4e VMEXIT_EXCP14 (APM Vol. 2 Appendix C).
  const hw: HardwareExit =
    backend === 'vmx'
      ? { backend, code: 0, name: 'EXCEPTION_NMI', fields: { exitQualification: e.address } }
      : { backend, code: 0x4e, name: 'VMEXIT_EXCP14', fields: { exitInfo1: errorCode, exitInfo2: e.address } };
  return {
    kind: 'exception',
    vcpu: e.vcpu ?? 0,
    seq: e.seq ?? 1,
    hw,
    vector: 14,
    errorCode,
    address: e.address,
    access: e.access ?? errorCode,
    resolution: null,
    resolvedBy: null,
  };
}

/** One 4 KiB mapping of `pagedVcpu`: linear `va` to guest-physical `gpa`, user and writable unless said otherwise. */
export interface TestMapping {
  readonly va: number;
  readonly gpa: number;
  readonly user?: boolean;
  readonly writable?: boolean;
}

/**
 * vCPU 0 of a fresh machine (`memoryBytes`, default 1 MiB... at least 1 MiB) in 4-level paging (CR0.PG, CR4.PAE,
 * EFER.LME: SDM Vol. 3A §4.1.1) whose page tables, real bytes at gpa 0x10000-0x13fff, map exactly `mappings`
 * (each `va` below 2 MiB and 4 KiB aligned); every other address is not present. No hypervisor runs below it.
 */
export function pagedVcpu(mappings: readonly TestMapping[], memoryBytes = 1 << 20): Vcpu {
  const m = new Machine({ memoryBytes: Math.max(memoryBytes, 1 << 20) });
  const v = m.vcpus[0]!;
  const entry = (to: number, user = true, writable = true) => (to | PT_PRESENT | (writable ? PT_WRITABLE : 0) | (user ? PT_USER : 0)) >>> 0;
  m.memory.write32(0x10000, entry(0x11000)); // PML4[0] -> PDPT
  m.memory.write32(0x11000, entry(0x12000)); // PDPT[0] -> PD
  m.memory.write32(0x12000, entry(0x13000)); // PD[0] -> PT (the first 2 MiB)
  for (const map of mappings) {
    if (map.va % 4096 !== 0 || map.va < 0 || map.va >= 1 << 21) throw new RangeError(`pagedVcpu: va ${hexU64(map.va)} is not a 4 KiB page below 2 MiB`);
    if (map.gpa % 4096 !== 0 || map.gpa < 0 || map.gpa >= m.memory.size)
      throw new RangeError(`pagedVcpu: gpa ${hexU64(map.gpa)} is not a page of guest memory`);
    m.memory.write32(0x13000 + (map.va >>> 12) * 8, entry(map.gpa, map.user, map.writable));
  }
  v.writeEfer(EFER_LME);
  v.movToCr4(CR4_PAE);
  v.movToCr3(0x10000);
  v.movToCr0((CR0_PG | CR0_PE) >>> 0);
  return v;
}

/** What `runPolicyVm` runs. */
export interface PolicyVmOptions {
  /** The variant (default backend vmx, mmu shadow); its `policies` name the policies under test. */
  readonly variant: VariantInput;
  /** ContainerModules that bind the policies under test (a policy package's default export), besides the built-in ones. */
  readonly modules?: readonly ContainerModule[];
  /** A workload of the guest OS model (`NAME[:k=v,...]`; `vmexit workloads` lists them). Default `demand-fault:pages=16`. */
  readonly workload?: string;
  readonly seed?: number;
  /** Where `@vmexit/guest`, the backend and the MMU packages are resolved from (default: the working directory). */
  readonly from?: string;
}

/** The outcome of `runPolicyVm`: the VM, its counters over the workload, and what the guest saw. */
export interface PolicyVmRun {
  readonly vm: Vm;
  /** The VM's counters (merged over the vCPUs) from the end of boot to the end of the workload. */
  readonly counters: Readonly<Record<string, number>>;
  /** The digest of the guest's memory at the end (equal for runs the guest cannot tell apart). */
  readonly memoryDigest: string;
  /** The #PFs the guest's handler received, in order, as JSON (equal for runs the guest cannot tell apart). */
  readonly guestEvents: string;
}

/** The part of `@vmexit/guest` that `runPolicyVm` uses (core does not import the guest package statically). */
interface GuestRunner {
  runWorkload(o: {
    workload: string;
    memory: number;
    seed: number;
    vcpus: number;
    machine: Vm['machine'];
    counters: () => { total: Record<string, number>; vcpus: Record<string, number>[] };
  }): { result: { memoryDigest: string; counters: { total: Record<string, number> } }; events: unknown };
}

/**
 * Runs a workload of the guest OS model (`@vmexit/guest`, which the policy package has as a dev
 * dependency) on a VM composed by `createVm` with the policies of `variant` (bound by `modules`), and
 * returns the counters. The backend and MMU packages the variant names (default `@vmexit/backend-vmx`,
 * `@vmexit/mmu-shadow`) must be installed too.
 *
 * @example
 * const { counters } = await runPolicyVm({ variant: { policies: [{ use: 'reflect-range', options: { to: 2 ** 47 } }] }, modules: [myModule] });
 * expect(counters['reflect_range.injected']).toBe(16);
 */
export async function runPolicyVm(o: PolicyVmOptions): Promise<PolicyVmRun> {
  const from = o.from ?? process.cwd();
  const sources: ModuleSources = { ...DEFAULT_MODULE_SOURCES, policies: [...DEFAULT_MODULE_SOURCES.policies, ...(o.modules ?? [])] };
  let file: string;
  try {
    file = resolveSpecifier('@vmexit/guest', from);
  } catch (e) {
    throw new Error(`runPolicyVm needs @vmexit/guest (install it as a dev dependency): ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  const guest = (await import(pathToFileURL(file).href)) as GuestRunner;
  const seed = o.seed ?? 1;
  const vm = await createVm({ resolveFrom: from, ...o.variant }, { sources, seed });
  const out = guest.runWorkload({
    workload: o.workload ?? 'demand-fault:pages=16',
    memory: vm.variant.memory,
    vcpus: vm.variant.vcpus,
    seed,
    machine: vm.machine,
    counters: () => {
      const c = vm.counters();
      return { total: c.total, vcpus: c.perVcpu.map((x) => ({ ...x })) };
    },
  });
  return { vm, counters: out.result.counters.total, memoryDigest: out.result.memoryDigest, guestEvents: JSON.stringify(out.events) };
}

export { GcWatch } from './gc-watch.js';
