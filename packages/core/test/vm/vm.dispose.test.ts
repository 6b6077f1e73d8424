import { describe, expect, it } from 'vitest';
import { count, finalize, lastValueFrom, take, tap, toArray } from 'rxjs';
import {
  CR0_PE,
  CR0_PG,
  CR0_WP,
  CR4_PAE,
  decideMmuEvents,
  EFER_LME,
  NoopRecorder,
  NoopTracer,
  PT_DIRTY,
  Vm,
  type ExitResolution,
  type FaultPolicy,
  type MmuEventKind,
  type Mmu,
  type MmuHost,
  type PrefetchEvent,
  type Vcpu,
  type VmExit,
} from '../../src/index.js';
import { variantSchema } from '../../src/vm/variant.js';
import { FakeBackend } from './fake-backend.js';
import { TestTables } from '../machine/tables.js';

/**
 * A shadow MMU in miniature: the hardware walks `shadowRoot`, which maps the guest's one data page read-only,
 * so every store faults and exits; each fault is answered "emulate" after one `prefetch` MMU decision, asked as
 * mmu-shadow asks it (VcpuShadowState.decidedByDefault: `decidesByDefault` once per kind at its first event,
 * then either the event through `decide` or the count alone).
 */
class EmulatingMmu implements Mmu {
  readonly name = 'shadow' as const;
  shadowRoot = 0;
  private host: MmuHost | null = null;
  private byDefault: boolean | null = null;
  private seq = 0;
  init(host: MmuHost): void {
    this.host = host;
  }
  attachVcpu(vcpu: Vcpu): void {
    this.point(vcpu);
  }
  private point(vcpu: Vcpu): void {
    vcpu.activeCtx = { ...vcpu.ctx, cr3: this.shadowRoot };
  }
  handlePageFault(v: Vcpu, address: number): ExitResolution {
    const host = this.host!;
    const kind: MmuEventKind = 'prefetch';
    this.byDefault ??= host.decidesByDefault!(v.id, kind);
    if (this.byDefault) host.counter!(v.id, `mmu_events.${kind}`).n++;
    else {
      const ev: PrefetchEvent = { kind, vcpu: v.id, seq: ++this.seq, decidedBy: null, address, gfn: 0x300, direct: false, decision: null };
      host.decide(ev, false);
    }
    return { kind: 'emulate' };
  }
  trackWrite(): void {}
  crWritten(vcpu: Vcpu): void {
    this.point(vcpu);
  }
  invlpg(): void {}
  emulationFailed(): boolean {
    return false;
  }
}

const DATA_VA = 0x400000;

/** A one-vCPU VM whose guest maps DATA_VA writable while the shadow tables map it read-only (see EmulatingMmu). */
function emulatingVm(policies: FaultPolicy<unknown>[] = []) {
  const backend = new FakeBackend();
  const mmu = new EmulatingMmu();
  const variant = variantSchema.parse({ backend: 'vmx', mmu: 'shadow', memory: '4M', vcpus: 1 });
  const vm = new Vm(
    variant,
    backend,
    mmu,
    policies.map((policy) => ({ policy, options: {} })),
    () => null,
    new NoopTracer(),
    new NoopRecorder(),
    1,
  );
  const v = vm.vcpus[0]!;
  const guest = new TestTables(vm.machine.memory, 'long4', 0x1000);
  guest.map(DATA_VA, 0x300000, 0x3 | PT_DIRTY);
  const shadow = new TestTables(vm.machine.memory, 'long4', 0x80000);
  shadow.map(DATA_VA, 0x300000, 0x1);
  mmu.shadowRoot = shadow.root;
  v.writeEfer(EFER_LME);
  v.movToCr4(CR4_PAE);
  v.movToCr3(guest.root);
  v.movToCr0(CR0_PG | CR0_WP | CR0_PE);
  backend.interceptPf = true; // from here on each store is one exit; no CR write exits (none intercepted)
  /** `n` stores to the data page: exactly `n` exits, each with one prefetch decision (see EmulatingMmu). */
  const stores = (n: number): void => {
    for (let i = 0; i < n; i++) v.write(DATA_VA + 8 * i, 4, i + 1);
  };
  return { vm, v, stores };
}

/** The policy that throws on the `n`th exit it sees. */
function throwsOnExit(n: number): FaultPolicy<unknown> {
  let seen = 0;
  return {
    name: 'throws',
    description: `throws on exit #${n}`,
    needs: [],
    exits: () =>
      tap(() => {
        if (++seen === n) throw new Error('policy bug');
      }),
  };
}

describe('Vm', () => {
  describe('.dispose', () => {
    it('completes exits$, so that lastValueFrom(exits$.pipe(count())) resolves with the number of exits of the run', async () => {
      const r = emulatingVm();
      const exits = lastValueFrom(r.vm.exits$.pipe(count()));
      // 3 stores, 3 exits: each store to the read-only shadow mapping is a #PF (P|W) that exits (EB[14] set),
      // the MMU answers "emulate", and nothing writable enters the TLB, so the next store faults again. The set-up's
      // CR writes do not exit (the fake backend intercepts none).
      r.stores(3);
      r.vm.dispose();
      expect(await exits).toBe(3);
      expect(r.vm.counters().total['exits']).toBe(3);
      expect(r.vm.machine.memory.read32(0x300000 + 16)).toBe(3); // the emulated stores landed
    });

    it('completes mmuEvents$ with every MMU decision of the run when subscribed before it', async () => {
      const r = emulatingVm();
      const events = lastValueFrom(r.vm.mmuEvents$.pipe(toArray()));
      // 3 exits, one prefetch decision each. No policy decides prefetch and no tracer or recorder is bound, but
      // the stream is observed when the MMU asks (first event), so every event is built and goes through.
      r.stores(3);
      r.vm.dispose();
      expect((await events).map((e) => `${e.kind} #${e.seq} ${e.decidedBy} ${String(e.decision)}`)).toEqual([
        'prefetch #1 mmu false',
        'prefetch #2 mmu false',
        'prefetch #3 mmu false',
      ]);
      expect(r.vm.counters().total['mmu_events.prefetch']).toBe(3);
    });

    it('counts the same MMU decisions when nothing observes them (no event built), and mmuEvents$ completes empty', async () => {
      const r = emulatingVm();
      r.stores(3);
      r.vm.dispose();
      expect(await lastValueFrom(r.vm.mmuEvents$.pipe(count()))).toBe(0);
      expect(r.vm.counters().total['mmu_events.prefetch']).toBe(3);
    });

    it('misses, on a mmuEvents$ subscribed after the first event, the kinds no policy decides (counted only)', async () => {
      const r = emulatingVm();
      r.stores(1); // the MMU asks at this first prefetch decision: nothing observes, so it only counts from now on
      const events = lastValueFrom(r.vm.mmuEvents$.pipe(count()));
      r.stores(2);
      r.vm.dispose();
      expect(await events).toBe(0);
      expect(r.vm.counters().total['mmu_events.prefetch']).toBe(3);
    });

    it('passes the events of a kind a policy decides through mmuEvents$, decided by it', async () => {
      const prefetchAll: FaultPolicy<unknown> = {
        name: 'prefetch-all',
        description: 'prefetches on every fault',
        needs: [],
        mmuEvents: () => decideMmuEvents('prefetch-all', () => true, ['prefetch']),
      };
      const r = emulatingVm([prefetchAll]);
      const events = lastValueFrom(r.vm.mmuEvents$.pipe(toArray()));
      r.stores(2); // 2 exits, 2 prefetch decisions
      r.vm.dispose();
      expect((await events).map((e) => `${e.decidedBy} ${String(e.decision)}`)).toEqual(['prefetch-all true', 'prefetch-all true']);
    });

    it('completes a subscription made after it at once, on both streams', async () => {
      const r = emulatingVm();
      r.stores(2);
      r.vm.dispose();
      const done: string[] = [];
      r.vm.exits$.subscribe({ next: () => done.push('exit'), complete: () => done.push('exits$ complete') });
      r.vm.mmuEvents$.subscribe({ next: () => done.push('event'), complete: () => done.push('mmuEvents$ complete') });
      expect(done).toEqual(['exits$ complete', 'mmuEvents$ complete']); // synchronously, nothing replayed
      await expect(lastValueFrom(r.vm.exits$.pipe(toArray()))).resolves.toEqual([]);
    });

    it('keeps a failure of the exit pipeline an error for subscribers, before and after it', async () => {
      const r = emulatingVm([throwsOnExit(2)]);
      const exits = lastValueFrom(r.vm.exits$.pipe(count()));
      r.stores(1);
      expect(() => r.stores(1)).toThrow(expect.objectContaining({ code: 'E_POLICY_FAILED' }));
      r.vm.dispose();
      await expect(exits).rejects.toMatchObject({ code: 'E_POLICY_FAILED', message: expect.stringContaining("policy 'throws' failed") });
      await expect(lastValueFrom(r.vm.exits$)).rejects.toMatchObject({ code: 'E_POLICY_FAILED' }); // a late subscriber too
    });

    it('keeps a failure of the MMU-event pipeline an error for mmuEvents$ subscribers', async () => {
      const broken: FaultPolicy<unknown> = {
        name: 'broken',
        description: 'throws on every prefetch decision',
        needs: [],
        mmuEvents: () =>
          decideMmuEvents(
            'broken',
            () => {
              throw new Error('decider bug');
            },
            ['prefetch'],
          ),
      };
      const r = emulatingVm([broken]);
      const events = lastValueFrom(r.vm.mmuEvents$.pipe(count()));
      expect(() => r.stores(1)).toThrow(expect.objectContaining({ code: 'E_POLICY_FAILED' }));
      r.vm.dispose();
      await expect(events).rejects.toMatchObject({ code: 'E_POLICY_FAILED', message: expect.stringContaining("policy 'broken' failed on MMU event prefetch") });
      await expect(lastValueFrom(r.vm.mmuEvents$)).rejects.toMatchObject({ code: 'E_POLICY_FAILED' });
    });

    it('refuses an exit after it (E_PIPELINE_CLOSED, naming the disposal), and is idempotent', () => {
      const r = emulatingVm();
      r.stores(1);
      r.vm.dispose();
      r.vm.dispose();
      expect(r.vm.disposed).toBe(true);
      expect(() => r.stores(1)).toThrow(expect.objectContaining({ code: 'E_PIPELINE_CLOSED', message: expect.stringContaining('the VM was disposed') }));
      expect(r.vm.counters().total['exits']).toBe(1); // the refused exit was not counted
    });

    it('keeps, for an exit after it, the first reason of a pipeline an operator had ended before (not the disposal)', () => {
      const once: FaultPolicy<unknown> = { name: 'once', description: 'passes one exit, then ends the stream', needs: [], exits: () => take<VmExit>(1) };
      const r = emulatingVm([once]);
      r.stores(1); // exit #1 passes; take(1) completes the pipeline
      const ended = 'the exit pipeline completed after an earlier exit (an operator in it ended the stream)';
      expect(() => r.stores(1)).toThrow(expect.objectContaining({ code: 'E_PIPELINE_CLOSED', message: expect.stringContaining(ended) }));
      r.vm.dispose();
      // Exit #3 is refused for the same reason as #2: dispose() did not close an open pipeline here.
      expect(() => r.stores(1)).toThrow(expect.objectContaining({ code: 'E_PIPELINE_CLOSED', message: expect.stringContaining(ended) }));
    });

    it("unsubscribes the policies' operators (their finalizers run once per vCPU)", () => {
      const log: string[] = [];
      const watch: FaultPolicy<unknown> = {
        name: 'watch',
        description: 'logs its teardown',
        needs: [],
        exits: (ctx) => finalize<VmExit>(() => log.push(`exits of vCPU ${ctx.vcpu.id} torn down`)),
      };
      const r = emulatingVm([watch]);
      r.stores(1);
      expect(log).toEqual([]);
      r.vm.dispose();
      r.vm.dispose();
      expect(log).toEqual(['exits of vCPU 0 torn down']);
    });

    it('completes the streams of a native VM (backend none) at dispose, not before', async () => {
      const variant = variantSchema.parse({ backend: 'none', memory: '4M' });
      const vm = new Vm(variant, null, null, [], () => null, new NoopTracer(), new NoopRecorder(), 1);
      const done: string[] = [];
      vm.exits$.subscribe({ complete: () => done.push('exits$') });
      vm.mmuEvents$.subscribe({ complete: () => done.push('mmuEvents$') });
      expect(done).toEqual([]);
      vm.dispose();
      expect(done).toEqual(['exits$', 'mmuEvents$']);
    });
  });
});
