import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { JsonLinesTracer } from '@vmexit/core';
import { countingLoader, encodeVxt, storeTrace } from './helpers/store-trace.js';
import { compareVariants, deterministicPart, InputError, parseVariantSpec, provenance, runVariant, traceStats, type ComparisonResult } from '../src/index.js';

const WL = 'fork-cow:pages=16,forks=1';
// 4 MiB of guest RAM: the workload needs far less, and a run's cost (boot, the memory digest) grows with the RAM.
const SMALL = { memory: '4M' };

describe('runVariant', () => {
  it('gives the same counters, cycles and digest for a spec and for the composed variant, run twice', async () => {
    const a = await runVariant('vmx shadow pte-update', WL, { seed: 2, overrides: SMALL });
    const b = await runVariant(await parseVariantSpec('vmx shadow pte-update', SMALL), WL, { seed: 2 });
    expect(deterministicPart(b)).toEqual(deterministicPart(a));
    expect(a.counters.total.exits).toBeGreaterThan(0);
    expect(a.cycles.cycles).toBeGreaterThan(0);
    expect(a.memoryDigest).toMatch(/^[0-9a-f]+$/);
    expect(a.variant).toMatchObject({ backend: 'vmx', mmu: 'shadow', policies: ['pte-update'], mode: 'long4' });
  });

  it('records the packages that ran, Node, the host and the start time', async () => {
    const r = await runVariant('svm shadow unsync', WL, { overrides: SMALL });
    expect(Object.keys(r.provenance.packages)).toEqual([
      '@vmexit/backend-svm',
      '@vmexit/core',
      '@vmexit/guest',
      '@vmexit/lab',
      '@vmexit/mmu-shadow',
      '@vmexit/policies',
    ]);
    expect(r.provenance.packages['@vmexit/lab']).toMatch(/^\d+\.\d+\.\d+/);
    expect(r.provenance.node).toBe(process.version);
    expect(r.provenance.host.cpus).toBeGreaterThan(0);
    expect(Date.parse(r.provenance.startedAt)).not.toBeNaN();
    // A native run loads no backend, MMU or policy package.
    expect(Object.keys(provenance(await parseVariantSpec('native')).packages)).toEqual(['@vmexit/core', '@vmexit/guest', '@vmexit/lab']);
  });

  it('refuses a bad spec with an InputError naming it', async () => {
    await expect(runVariant('shadow', WL)).rejects.toThrow(new InputError('--variant "shadow": name a backend (vmx, svm, or native)'));
    await expect(runVariant('vmx shadow no-such-policy', WL)).rejects.toThrow(/--variant "vmx shadow no-such-policy": invalid variant:\n {2}policies\.0\.use/);
  });
});

describe('compareVariants', () => {
  it('runs each variant as runVariant does, and tabulates them against the first', async () => {
    const doc = await compareVariants({
      workload: WL,
      variants: ['vmx shadow', 'vmx shadow pte-update'],
      mode: 'long4',
      seed: 1,
      overrides: SMALL,
      exitReasons: true,
    });
    const single = await runVariant('vmx shadow pte-update', WL, { overrides: SMALL });
    // The same result, with the exit reasons' costs that the next test checks.
    const { exitReasons, ...rest } = deterministicPart(doc.results[1]!);
    expect(rest).toEqual({ ...deterministicPart(single), label: 'vmx shadow pte-update', spec: 'vmx shadow pte-update' });
    expect(exitReasons!.length).toBeGreaterThan(0);
    const exits = doc.table.find((r) => r.metric === 'vmexits')!;
    expect(exits.values).toEqual(doc.results.map((r) => r.counters.total.exits));
    expect(exits.ratios[0]).toBe(1);
  });

  it('decodes a trace workload once for all its variants (the loader it is given, or one of its own), with the results of separate runs', async () => {
    const n = 48;
    const trace = storeTrace(n, 3, 2);
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-lab-trace-')), 'w.vxt');
    fs.writeFileSync(file, encodeVxt(trace));
    const { load: loadTrace, decoded } = countingLoader();
    const variants = ['vmx shadow', 'svm shadow', 'vmx tdp'];
    const doc = await compareVariants({ workload: file, variants, mode: 'long4', seed: 1, overrides: SMALL, loadTrace, check: true });
    // --check runs natively too: 6 runs, one decode.
    expect(decoded()).toBe(1);
    for (const [i, spec] of variants.entries()) {
      const own = await runVariant(spec, file, { overrides: SMALL });
      expect(deterministicPart(doc.results[i]!)).toMatchObject(deterministicPart(own));
      expect(doc.results[i]!.check?.ok).toBe(true);
    }
    expect(doc.results[0]!.guest.accesses).toBe(n * 2);
    fs.rmSync(path.dirname(file), { recursive: true });
  });

  it('under TDP, gives walk references per walk (at most 24 for 4 + 4 levels), not per missed access', async () => {
    const doc = await compareVariants({ workload: WL, variants: ['vmx tdp', 'svm tdp host-pages=2m'], mode: 'long4', seed: 1, overrides: SMALL });
    const row = (m: string) => doc.table.find((r) => r.metric === m)!.values as number[];
    expect(doc.table.map((r) => r.metric)).not.toContain('walk references per TLB miss');
    for (const [i, r] of doc.results.entries()) {
      const c = r.counters.total;
      expect(row('walk references per walk')[i]).toBe(c.walk_refs! / c.walks!);
      expect(row('walk references per walk')[i]).toBeLessThanOrEqual(24);
      // Not vacuous: the guest's #PFs make accesses walk twice, so per missed access it is more than per walk.
      expect(c.walks!).toBeGreaterThan(c.tlb_misses!);
    }
    expect(doc.results.map((r) => r.label)).toEqual(['vmx tdp', 'svm tdp host-pages=2m']);
    expect(doc.results[1]!.variant).toMatchObject({ mmu: 'tdp', hostPages: '2m' });
    expect(doc.results[0]!.variant).not.toHaveProperty('hostPages');
  });

  it("gives each exit reason's count and cycles in the window as `vmexit trace stats` counts and prices them", async () => {
    const doc = await compareVariants({ workload: WL, variants: ['vmx shadow pte-update'], mode: 'long4', seed: 1, overrides: SMALL, exitReasons: true });
    const r = doc.results[0]!;
    const exitReasons = r.exitReasons!;
    // The tally counts the window's exits, as the counters do: reason by reason, and in all.
    for (const x of exitReasons) expect(x.count, x.reason).toBe(r.counters.total[`exits.${x.reason}`]);
    expect(exitReasons.reduce((n, x) => n + x.count, 0)).toBe(r.counters.total.exits);
    const lines: string[] = [];
    await runVariant('vmx shadow pte-update', WL, { overrides: SMALL, tracer: new JsonLinesTracer((l) => lines.push(l)) });
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-lab-run-')), 'trace.jsonl');
    fs.writeFileSync(file, lines.join(''));
    const stats = await traceStats(file);
    expect(exitReasons.map((x) => [x.reason, x.count, x.cycles])).toEqual(stats.reasons.map((x) => [x.reason, x.count, x.cycles.total]));
    const share = doc.table.find((row) => row.metric === 'vmx EXCEPTION_NMI share')!;
    expect(share.values[0]).toBeCloseTo(r.counters.total['exits.EXCEPTION_NMI']! / r.counters.total.exits!, 12);
    expect(share.ratios[0]).toBeNull();
    fs.rmSync(path.dirname(file), { recursive: true });
  });

  it('prices a PML-full exit without the pf_fixed handler, and a dirty ring-full trip to user space with the exit that filled the ring', async () => {
    // vmx tdp with pml: 2 PML_FULL exits (reason 62, nested-fault kind), which fix no fault (pf_fixed 0): 2 x 1,360 =
    // 2,720, no handler (before: + 2 x 680 for a "fixed" fault, 4,080, above the run's own 2,720).
    const pml = (
      await compareVariants({
        workload: 'dirty-log-test:pages=2048,iterations=2,writes=1024,harvest=pml',
        variants: ['vmx tdp pml'],
        mode: 'long4',
        seed: 1,
        overrides: { memory: '16M' },
        exitReasons: true,
      })
    ).results[0]!;
    expect([pml.counters.total['exits.PML_FULL'], pml.counters.total.pf_fixed ?? 0]).toEqual([2, 0]);
    expect(pml.exitReasons).toEqual([{ reason: 'PML_FULL', kind: 'nested-fault', count: 2, cycles: 2720 }]);
    // A 256-entry dirty ring on 2 vCPUs: 3 KVM_EXIT_DIRTY_RING_FULL trips, each priced (userspaceExit) with the exit
    // whose handling filled the ring, so that the reasons add up to the run's exit cycles here too.
    const ring = (
      await compareVariants({
        workload: 'dirty-log-test:pages=512,iterations=8,writes=64,harvest=ring,ring=256',
        variants: ['vmx shadow fast-page-fault'],
        mode: 'long4',
        seed: 1,
        overrides: { memory: '16M', vcpus: '2' },
        exitReasons: true,
      })
    ).results[0]!;
    expect(ring.counters.total.dirty_ring_full_exits).toBe(3);
    expectReasonsAddUp(pml, ring);
  });

  it("prices each exit reason's cycles as the run's modelled cycles price its counters: a spurious fault and a fixed EPT violation with pf_fixed's handler", async () => {
    // server-2020s: an exception or EPT-violation round trip 1,360 cycles, pf_fixed 680, pf_guest 680, insn_emulation 1,360.
    // exec-storm:execs=8 on vmx shadow, 4 MiB: 72,441 #PF exits = 207 fixed + 125 injected + 72,100 emulated + 9 spurious
    // (125 injected: a page-cache miss reads around (Linux's do_sync_mmap_readahead) and the file read faults fault
    // around (do_fault_around), so fewer faults reach the guest)
    // (the MMU found the spte already installed: pf_spurious, not pf_fixed, but the same handler ran, so it is priced
    // at pf_fixed's figure as the run's modelled cycles price it).
    const shadow = (
      await compareVariants({ workload: 'exec-storm:execs=8', variants: ['vmx shadow'], mode: 'long4', seed: 1, overrides: SMALL, exitReasons: true })
    ).results[0]!;
    const t = shadow.counters.total;
    expect([t['exits.EXCEPTION_NMI'], t.pf_fixed, t.pf_guest, t.pf_emulate, t.pf_spurious]).toEqual([72441, 207, 125, 72100, 9]);
    // 72,441 x 1,360 + (207 + 9) x 680 + 125 x 680 + 72,100 x 1,360 = 98,519,760 + 146,880 + 85,000 + 98,056,000 = 196,807,640
    // (without the spurious faults' handler, 196,801,520: 9 x 680 = 6,120 less).
    expect(shadow.exitReasons!.find((x) => x.reason === 'EXCEPTION_NMI')!.cycles).toBe(196_807_640);
    // dirty-log-test on vmx tdp, 4 MiB: 87 EPT violations, each fixed by the TDP MMU (pf_fixed 87, as the model prices).
    // 87 x 1,360 + 87 x 680 = 118,320 + 59,160 = 177,480 (before: 118,320, the handler left out).
    const lines: string[] = [];
    const workload = 'dirty-log-test:pages=64,iterations=4,writes=16,harvest=bitmap';
    const tdp = (await compareVariants({ workload, variants: ['vmx tdp'], mode: 'long4', seed: 1, overrides: SMALL, exitReasons: true })).results[0]!;
    expect([tdp.counters.total['exits.EPT_VIOLATION'], tdp.counters.total.pf_fixed, tdp.counters.total.pf_spurious ?? 0]).toEqual([87, 87, 0]);
    expect(tdp.exitReasons).toEqual([{ reason: 'EPT_VIOLATION', kind: 'nested-fault', count: 87, cycles: 177_480 }]);
    // Every run's reasons add up to its modelled cycles less what no exit pays (the guest's own faults, walk references).
    expectReasonsAddUp(shadow, tdp);
    // `vmexit trace stats` prices the EPT violations the same.
    await runVariant('vmx tdp', workload, { overrides: SMALL, tracer: new JsonLinesTracer((l) => lines.push(l)) });
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-lab-run-')), 'trace.jsonl');
    fs.writeFileSync(file, lines.join(''));
    expect((await traceStats(file)).reasons.map((x) => [x.reason, x.count, x.cycles.total])).toEqual([['EPT_VIOLATION', 87, 177_480]]);
    fs.rmSync(path.dirname(file), { recursive: true });
  });
});

/** The exit reasons' cycles of each comparison result add up to its modelled cycles less what no exit pays (guest faults, walk references, spins). */
function expectReasonsAddUp(...results: ComparisonResult[]): void {
  for (const r of results) {
    const b = r.cycles.breakdown;
    const exitCycles = r.cycles.cycles - (b['guest.page_faults'] ?? 0) - (b.walk_refs ?? 0) - (b['mmu_lock.spin_cycles'] ?? 0);
    expect(
      r.exitReasons!.reduce((n, x) => n + x.cycles, 0),
      r.label,
    ).toBe(exitCycles);
  }
}
