import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createVm, PF_VECTOR, tuneV8, walk, WalkResult, type Vcpu, type Vm } from '@vmexit/core';
import { GcWatch } from '@vmexit/core/testing';
import { runWorkload } from '@vmexit/guest';
import { parseVariantSpec } from '@vmexit/lab';

/*
 * "Hot paths allocate nothing" for the emulated page-table write, pinned without timing anything (as core's TLB
 * hit-path test pins the TLB hit): a VMX shadow-paging VM runs pt-recycle until a store to a write-protected guest
 * page table, and that store is then made again and again, each one a whole exit: the TLB miss, the hardware walk of
 * the shadow tables, the backend, the RxJS pipeline, the MMU's fault handler and its guest walk, the emulator and the
 * write hook. Two stores are taken: one to a page table that an upper-level shadow page write-tracks (the fault
 * handler emulates it at once) and one to a level-1 table only (the fetch path, then emulated), whose new pte has
 * XD set: a high half at or above 2^31, no small integer to V8.
 *
 * The VM runs with the V8 flags the CLI runs with (core's tuneV8: with V8's default inlining budget a link of the
 * chain stays a call, and what it passes or returns is boxed). Exits that allocated one 16-byte heap number each
 * would fill V8's young generation (16 MiB per half once grown) about once per million exits: each test repeats its
 * store 5 M times, after 200 k to warm up (V8 optimizes the path: code that is not optimized yet boxes freely) and a
 * full collection, so that such an exit shows four collections or more. Collections are counted by core's GcWatch (a
 * PerformanceObserver on 'gc' entries); a control loop that allocates shows the detector sees them. A tolerance
 * of one covers a collection that the run before made due. The file runs in a process of its own
 * (vitest.config.ts): after other variants in the same process, call sites the exit path shares with them may be
 * compiled for several targets.
 */
tuneV8();

const WARM = 200_000;
const STORES = 5_000_000;
/** The emulated write to start looking from (past the boot and the first rounds). */
const FROM = 20_000;

interface Found {
  gcs: number;
  exits: number;
  xd: boolean;
}

let gcs: GcWatch;
beforeAll(() => (gcs = new GcWatch()));
afterAll(() => gcs.stop());

/**
 * Runs pt-recycle on a VMX shadow VM until an emulated write (a present write #PF, P|W) to a write-protected gfn that
 * `tracked` says is (or is not) write-tracked by an upper-level page, then repeats that store (WARM, then STORES
 * times) from inside the exit, as the vCPU made it; the rest of the run goes on. Returns the window of the measured
 * stores and the exits they made.
 */
async function repeatEmulatedWrite(tracked: boolean): Promise<{ from: number; to: number; exits: number; xd: boolean }> {
  const variant = await parseVariantSpec('vmx shadow', {});
  const vm: Vm = await createVm({ ...variant, guest: { ...variant.guest, mode: 'long4', personality: 'linux' } }, { seed: 1 });
  const mmu = vm.mmu as unknown as { upperTrack: Set<number>; isWriteProtected(gfn: number): boolean };
  const hooks = vm.hooks[0]!;
  const exception = hooks.exception.bind(hooks);
  let seen = 0;
  let result: { from: number; to: number; exits: number; xd: boolean } | null = null;
  hooks.exception = (vcpu: Vcpu, vector: number, errorCode: number, va: number, access: number) => {
    if (result === null && vector === PF_VECTOR && (errorCode & 3) === 3 && ++seen >= FROM) {
      const r = new WalkResult();
      walk(vcpu.ctx, vcpu.memory, va, access, 0, r);
      const gfn = Math.floor(r.pa / 4096);
      if (mmu.isWriteProtected(gfn) && mmu.upperTrack.has(gfn) === tracked && (tracked || vcpu.pendingHi >>> 31 === 1)) {
        const { pendingSize: size, pendingLo: lo, pendingHi: hi } = vcpu;
        hooks.exception = exception; // the repeated stores exit through the hook itself
        for (let i = 0; i < WARM; i++) vcpu.write(va, size, lo, hi);
        gcs.collectNow();
        const before = vm.counters().total.exits ?? 0;
        const from = performance.now();
        for (let i = 0; i < STORES; i++) vcpu.write(va, size, lo, hi);
        const to = performance.now();
        result = { from, to, exits: (vm.counters().total.exits ?? 0) - before, xd: hi >>> 31 === 1 };
      }
    }
    return exception(vcpu, vector, errorCode, va, access);
  };
  runWorkload({ workload: 'pt-recycle:dirs=16,rounds=1', mode: 'long4', seed: 1, machine: vm.machine });
  if (result === null) throw new Error(`no ${tracked ? 'write-tracked emulated write' : 'fetch-path emulated write with XD'} found in pt-recycle`);
  return result;
}

describe('the emulated page-table write allocates nothing', () => {
  it.for([
    ['to a write-tracked page table (emulated from the fault handler)', true],
    ['to a level-1 page table, a pte with XD (the fetch path, then emulated)', false],
  ] as const)('%s', { timeout: 120_000 }, async ([, tracked]) => {
    const r = await repeatEmulatedWrite(tracked);
    const found: Found = { gcs: await gcs.between(r.from, r.to), exits: r.exits, xd: r.xd };
    // Every store was an exit (the write-protected spte stays read-only: each is emulated), and none made V8 collect.
    expect(found.exits).toBe(STORES);
    expect(found.gcs).toBeLessThanOrEqual(1);
    if (!tracked) expect(found.xd).toBe(true);
  });

  it('the detector sees a loop that allocates a small array per iteration', async () => {
    const keep: number[][] = [];
    const from = performance.now();
    for (let i = 0; i < STORES; i++) {
      const a = [i]; // one small array per iteration, dropped at once (every 4096th kept, so none is optimized away)
      if ((i & 4095) === 0) keep.push(a);
    }
    const to = performance.now();
    expect(keep.length).toBe(Math.ceil(STORES / 4096));
    expect(await gcs.between(from, to)).toBeGreaterThan(1);
  });
});
