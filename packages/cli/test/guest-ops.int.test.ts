import { ACC_FETCH, Machine, createVm, pagingModeId, type ModuleSources, type PagingModeName } from '@vmexit/core';
import {
  FAULT_SIGSEGV,
  Kernel,
  PROT_EXEC,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  TaskRunner,
  VMA_ANON,
  VMA_FILE_PRIVATE,
  VMA_FILE_SHARED,
  type Personality,
  type Program,
  type Task,
} from '@vmexit/guest';
import type { ShadowMmu } from '@vmexit/mmu-shadow';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compareGuestViews, type GuestView } from '@vmexit/lab';
import { DropsWriteProtectMmu, sourcesWith } from './helpers/broken-mmu.js';

/**
 * Random guest operation sequences, run by the guest OS model natively and on a real VM (createVm: VMX or
 * SVM, the shadow MMU, the audit after every exit), and compared as `--check` compares them: the guest must
 * see the same #PFs (address, error code, vCPU, process, how its handler resolved them), the same SIGSEGVs
 * and the same final memory. The operations are the system calls and accesses of a user program: mmap
 * (anonymous, private or shared file), munmap, mprotect, brk, loads, stores and instruction fetches (one, or
 * a sweep over an area), fork
 * (the child runs some of the operations, then exits; the parent may wait), and yields, which make the
 * scheduler switch address spaces (CR3 writes). Large pages: the kernel's direct map, through which it
 * fills page-cache pages and copies COW pages; personalities add byte-wise pte writes, sparse PDPTEs
 * (PAE) and aliased PDEs (one guest PT under two PDEs with different rights); the variant takes a random set
 * of the built-in policies (pte updates, write-flood and misaligned-write detection, prefetch, unsync pages,
 * bypassed not-present faults on VMX).
 */

type Op =
  | { readonly op: 'mmap'; readonly pages: number; readonly prot: number; readonly backing: 'anon' | 'private' | 'shared' }
  | { readonly op: 'munmap'; readonly area: number; readonly page: number; readonly pages: number }
  | { readonly op: 'mprotect'; readonly area: number; readonly page: number; readonly pages: number; readonly prot: number }
  | { readonly op: 'brk'; readonly pages: number }
  | { readonly op: 'read' | 'write' | 'fetch'; readonly area: number; readonly page: number }
  | { readonly op: 'sweep'; readonly area: number; readonly write: boolean }
  | { readonly op: 'fork'; readonly ops: number; readonly wait: boolean }
  | { readonly op: 'yield' };

const prot = fc.constantFrom(PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE, PROT_READ | PROT_EXEC, PROT_READ | PROT_WRITE | PROT_EXEC);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('mmap' as const),
      pages: fc.integer({ min: 1, max: 12 }),
      prot,
      backing: fc.constantFrom('anon' as const, 'private' as const, 'shared' as const),
    }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('munmap' as const), area: fc.nat(7), page: fc.nat(11), pages: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('mprotect' as const), area: fc.nat(7), page: fc.nat(11), pages: fc.integer({ min: 1, max: 6 }), prot }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('brk' as const), pages: fc.integer({ min: -3, max: 6 }) }) },
  { weight: 8, arbitrary: fc.record({ op: fc.constantFrom('read' as const, 'write' as const, 'fetch' as const), area: fc.nat(7), page: fc.nat(11) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('sweep' as const), area: fc.nat(7), write: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('fork' as const), ops: fc.integer({ min: 0, max: 10 }), wait: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('yield' as const) }) },
);

interface Scenario {
  readonly mode: PagingModeName;
  readonly vcpus: number;
  readonly personalities: Personality[];
  readonly seed: number;
  /** Built-in policies of the variant (bypass-guest-pf is VMX-only: it needs PFEC_MASK/MATCH). */
  readonly policies: string[];
  /** One program per process (one process per vCPU at least). */
  readonly programs: Op[][];
}

const scenarioArb: fc.Arbitrary<Scenario> = fc
  .record({
    mode: fc.constantFrom<PagingModeName>('legacy32', 'pae', 'long4'),
    vcpus: fc.constantFrom(1, 2),
    personalities: fc.subarray<Personality>(['byte-pte-writes', 'sparse-pdptes', 'aliased-pdes']),
    seed: fc.integer({ min: 1, max: 1000 }),
    policies: fc.subarray(['pte-update', 'write-flood', 'misaligned-write', 'prefetch', 'unsync', 'bypass-guest-pf']),
    programs: fc.array(fc.array(opArb, { minLength: 1, maxLength: 40 }), { minLength: 1, maxLength: 3 }),
  })
  .map((s) => ({ ...s, personalities: s.personalities.filter((p) => p !== 'sparse-pdptes' || s.mode === 'pae') })); // only PAE has PDPTEs

const MEMORY = 16 * 1024 * 1024;
const PAGE = 4096;

/** The program of one process: the operations in order, over the areas it mapped (areas by index, modulo). */
function* program(t: Task, ops: readonly Op[], name: string): Program {
  const k = t.kernel;
  const areas: { start: number; pages: number }[] = [];
  const area = (i: number) => (areas.length === 0 ? null : areas[i % areas.length]!);
  for (let n = 0; n < ops.length; n++) {
    const o = ops[n]!;
    switch (o.op) {
      case 'mmap': {
        const backing = o.backing === 'anon' ? VMA_ANON : o.backing === 'private' ? VMA_FILE_PRIVATE : VMA_FILE_SHARED;
        const file = o.backing === 'anon' ? null : k.file(`/data/${name}.${n % 3}`);
        areas.push({ start: k.mmap(t.vcpu, t.proc, null, o.pages * PAGE, o.prot, backing, file), pages: o.pages });
        break;
      }
      case 'munmap': {
        const a = area(o.area);
        if (a !== null) k.munmap(t.vcpu, t.proc, a.start + (o.page % a.pages) * PAGE, o.pages * PAGE);
        break;
      }
      case 'mprotect': {
        const a = area(o.area);
        if (a !== null) {
          const first = o.page % a.pages;
          k.mprotect(t.vcpu, t.proc, a.start + first * PAGE, Math.min(o.pages, a.pages - first) * PAGE, o.prot);
        }
        break;
      }
      case 'brk': {
        const end = t.proc.brkEnd + o.pages * PAGE;
        if (end >= t.proc.brkBase && t.proc.brkBase > 0) k.brk(t.vcpu, t.proc, end);
        break;
      }
      case 'read':
      case 'write':
      case 'fetch': {
        const a = area(o.area);
        if (a === null) break;
        const va = a.start + (o.page % a.pages) * PAGE + (((n * 68) % PAGE) & ~3);
        // An access to an unmapped or forbidden page is the guest's SIGSEGV (the task method returns false).
        if (o.op === 'read') t.read(va);
        else if (o.op === 'write') t.write(va, (Math.imul(n + 1, 0x9e3779b1) ^ va) | 0);
        else t.touch(va, ACC_FETCH);
        break;
      }
      case 'sweep': {
        // Every page of an area, in order (a loop over an array).
        const a = area(o.area);
        if (a === null) break;
        for (let p = 0; p < a.pages; p++) {
          if (o.write) t.write(a.start + p * PAGE, p);
          else t.read(a.start + p * PAGE);
        }
        break;
      }
      case 'fork': {
        const rest = ops.slice(n + 1, n + 1 + o.ops);
        const child = t.fork((c) => program(c, rest, `${name}.${n}`));
        if (o.wait) yield* t.wait(child);
        break;
      }
      case 'yield':
        yield;
        break;
    }
    if (t.tick(40)) yield;
  }
}

/** Runs the scenario on `machine` (native, or a VM's) and returns what the guest saw. */
function runOn(machine: Machine, s: Scenario): GuestView {
  const kernel = new Kernel(machine, pagingModeId(s.mode), { personalities: s.personalities });
  const runner = new TaskRunner(machine, kernel, { quantumMin: 50, quantumMax: 400 });
  s.programs.forEach((ops, i) => {
    const v = machine.vcpus[i % machine.vcpus.length]!;
    runner.start(kernel.createProcess(v, `p${i}`), (t) => program(t, ops, `p${i}`), v);
  });
  runner.run();
  return { events: kernel.events, sigsegv: kernel.stats.faults[FAULT_SIGSEGV]!, memory: machine.memory, memoryDigest: machine.memory.digest() };
}

async function runScenario(
  backend: 'vmx' | 'svm',
  s: Scenario,
  o: { sources?: ModuleSources; audit?: boolean } = {},
): Promise<{ native: GuestView; virt: GuestView; exits: number }> {
  const native = runOn(new Machine({ memoryBytes: MEMORY, vcpus: s.vcpus, seed: s.seed }), s);
  const vm = await createVm(
    {
      backend,
      mmu: 'shadow',
      policies: s.policies.filter((p) => p !== 'bypass-guest-pf' || backend === 'vmx').map((use) => ({ use })),
      vcpus: s.vcpus,
      memory: MEMORY,
      guest: { mode: s.mode, personality: s.personalities.length > 0 ? s.personalities.join(',') : 'linux' },
    },
    { seed: s.seed, sources: o.sources },
  );
  const mmu = vm.mmu as ShadowMmu;
  const audit = o.audit ?? true;
  if (audit) for (const h of vm.hooks) h.afterExit = () => mmu.audit();
  const virt = runOn(vm.machine, s);
  if (audit) mmu.audit();
  return { native, virt, exits: vm.counters().total.exits ?? 0 };
}

describe('random guest operation sequences, natively and under shadow paging', () => {
  describe.each(['vmx', 'svm'] as const)('%s', (backend) => {
    it('show the guest what native shows it, with the audit silent after every exit', async () => {
      let faults = 0;
      let sigsegv = 0;
      const kinds = new Set<string>();
      await fc.assert(
        fc.asyncProperty(scenarioArb, async (s) => {
          const { native, virt, exits } = await runScenario(backend, s);
          const check = compareGuestViews(native, virt);
          expect(check.divergence).toBeNull();
          expect(check.allowed).toEqual([]);
          expect(exits).toBeGreaterThan(0);
          faults += native.events.length;
          for (let i = 0; i < native.events.length; i++) kinds.add(native.events.at(i).kind);
          sigsegv += native.sigsegv;
        }),
        { seed: backend === 'vmx' ? 0x5eed5 : 0x5eed6, numRuns: 30 },
      );
      // The sequences exercise the fault paths (demand, COW, file, SIGSEGV), not only the happy path.
      expect(faults).toBeGreaterThan(60);
      expect(sigsegv).toBeGreaterThan(5);
      expect([...kinds].sort()).toEqual(expect.arrayContaining(['cow', 'demand-zero', 'file', 'sigsegv', 'zero-page']));
    });
  });

  it('find a counterexample when the MMU drops the pte writes that take W away: --check sees it, and so does the audit', async () => {
    const sources = sourcesWith(() => new DropsWriteProtectMmu());
    // Random sequences rarely store to a page after a single store took W away from its pte (60 runs find none), so
    // each program starts with that: map 4 pages, write them, fork (copy_present_pte write-protects the parent's
    // ptes with one store each, ptep_set_wrprotect) and wait for the child, then write them again (a COW fault
    // natively). mprotect would not do: Linux stores each pte twice (0, then the new value), and the second store,
    // which takes nothing away, repairs what the broken MMU dropped.
    const prefix: Op[] = [
      { op: 'mmap', pages: 4, prot: PROT_READ | PROT_WRITE, backing: 'anon' },
      { op: 'sweep', area: 0, write: true },
      { op: 'fork', ops: 0, wait: true },
      { op: 'sweep', area: 0, write: true },
    ];
    const plain = scenarioArb.map((s) => ({ ...s, policies: [], programs: s.programs.map((ops) => [...prefix, ...ops]) }));
    const r = await fc.check(
      fc.asyncProperty(plain, async (s) => {
        const { native, virt } = await runScenario('vmx', s, { sources, audit: false });
        return compareGuestViews(native, virt).ok;
      }),
      { seed: 0x5eed7, numRuns: 60, endOnFailure: true },
    );
    expect(r.failed).toBe(true);
    expect(String(r.errorInstance)).toMatch(/returning false/); // a divergence, not an exception
    const { native, virt } = await runScenario('vmx', r.counterexample![0], { sources, audit: false });
    expect(compareGuestViews(native, virt).first).toMatchObject({ what: 'event' });
    // With the audit after every exit, the stale writable spte is reported before the guest can see it.
    await expect(runScenario('vmx', r.counterexample![0], { sources })).rejects.toThrow(
      /shadow MMU audit: .*writable in the shadow but not writable and dirty in the guest/,
    );
  });
});
