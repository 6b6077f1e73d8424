import { bufferCount, connect, filter, from, map, merge, mergeMap, of, take, tap, type MonoTypeOperatorFunction } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { ACC_WRITE, PF_VECTOR } from '../../src/arch/constants.js';
import { ExitError } from '../../src/exits/errors.js';
import { decideMmuEvents, mmuEventKindsOf, type FloodEvent, type MmuEvent, type PteWriteEvent } from '../../src/exits/mmu-events.js';
import { countExits } from '../../src/exits/observers.js';
import { ExitChannel, exitPipeline, MmuEventChannel, mmuEventPipeline } from '../../src/exits/pipeline.js';
import { namedPolicy, resolveExits } from '../../src/exits/policy.js';
import { Stats } from '../../src/exits/stats.js';
import { RESUME, type ExitResolution, type VmExit } from '../../src/exits/vm-exit.js';
import { Machine } from '../../src/machine/machine.js';
import type { Backend } from '../../src/vm/backend.js';
import type { Mmu } from '../../src/vm/mmu.js';
import { VmHooks } from '../../src/vm/vm-hooks.js';
import type { FaultPolicy } from '../../src/vm/policy.js';
import { variantSchema } from '../../src/vm/variant.js';
import { Vm } from '../../src/vm/vm.js';
import { ArrayRecorder, NoopTracer } from '../../src/exits/observers.js';
import { mergeStats } from '../../src/exits/stats.js';

let seq = 0;
function pf(vcpu: number): VmExit {
  return {
    kind: 'exception',
    vcpu,
    seq: ++seq,
    hw: { backend: 'vmx', code: 0, name: 'EXCEPTION_NMI', fields: {} },
    vector: 14,
    errorCode: 2,
    address: 0x1000,
    access: 2,
    resolution: null,
    resolvedBy: null,
  };
}
const resume = (): ExitResolution => RESUME;

/** An MMU's own error, as mmu-shadow's ShadowMmuError is: a class of its layer with a stable code. */
class FakeMmuError extends Error {
  readonly code = 'E_MMU_NOSPC';
  constructor(message: string) {
    super(message);
    this.name = 'FakeMmuError';
  }
}

describe('ExitChannel', () => {
  describe('.push', () => {
    it('fails with E_EXIT_DUPLICATED when an exit comes out of the pipeline twice, instead of counting it twice', () => {
      // A split built as splitPolicy builds one (connect + merge of two filtered branches) whose predicate is not
      // pure (here it alternates): it may be true in the first branch's filter and false in the second's, so the
      // exit goes down both branches, and every link after them (the handler's, the counters) sees it twice.
      let calls = 0;
      const pred = (): boolean => calls++ % 3 === 0;
      const split: MonoTypeOperatorFunction<VmExit> = connect((shared) =>
        merge(
          shared.pipe(
            filter(() => pred()),
            resolveExits('t', resume),
          ),
          shared.pipe(filter(() => !pred())),
        ),
      );
      const stats = new Stats();
      const ch = new ExitChannel(exitPipeline([split], resume, [countExits(stats)]));
      const a = pf(0);
      // calls 0 and 1: true in the first branch, false in the second (so !pred is true): both branches pass it.
      expect(() => ch.push(a)).toThrow(
        new ExitError(
          'E_EXIT_DUPLICATED',
          `vCPU 0 exit #${a.seq} EXCEPTION_NMI (vmx 0x0): exception 14, error code 0x2, address 0x1000 came out of the exit pipeline 2 times (an operator emitted it more than once)`,
        ),
      );
      // A pipeline that miscounted once stays closed: no later exit can be counted as if nothing had happened.
      expect(() => ch.push(pf(0))).toThrow(expect.objectContaining({ code: 'E_PIPELINE_CLOSED' }));
    });

    it('fails with E_EXIT_DUPLICATED for an operator that emits the exit it got twice', () => {
      const twice: MonoTypeOperatorFunction<VmExit> = mergeMap((e) => of(e, e));
      const ch = new ExitChannel(exitPipeline([twice], resume));
      expect(() => ch.push(pf(0))).toThrow(expect.objectContaining({ code: 'E_EXIT_DUPLICATED' }));
    });

    it('stays closed after an exit was dropped, so that an operator holding it back cannot let it out during a later push', () => {
      // bufferCount(2) holds exit a back (its push fails: E_EXIT_DROPPED), then lets a and b out together during
      // b's push: a would reach the handler and the counters after its push failed, out of its order, and b's push
      // would succeed as if nothing had happened.
      const stats = new Stats();
      const hold: MonoTypeOperatorFunction<VmExit> = (src) =>
        src.pipe(
          bufferCount(2),
          mergeMap((xs) => from(xs)),
        );
      const ch = new ExitChannel(exitPipeline([hold], resume, [countExits(stats)]));
      const a = pf(0);
      expect(() => ch.push(a)).toThrow(expect.objectContaining({ code: 'E_EXIT_DROPPED' }));
      const b = pf(0);
      expect(() => ch.push(b)).toThrow(
        new ExitError(
          'E_PIPELINE_CLOSED',
          `vCPU 0 exit #${b.seq} EXCEPTION_NMI (vmx 0x0): exception 14, error code 0x2, address 0x1000: the exit pipeline failed earlier (vCPU 0 exit #${a.seq} EXCEPTION_NMI (vmx 0x0): exception 14, error code 0x2, address 0x1000 did not come out of the exit pipeline (an operator dropped it))`,
        ),
      );
      expect(stats.get('exits')).toBe(0);
    });

    it("rethrows the MMU handler's own error as it is, not as a policy's failure, and stays closed", () => {
      // No policy is in this pipeline: an out-of-pages error of the MMU's handler is the MMU layer's (its class and
      // code), as it is when the MMU is called outside the pipeline (a CR3 write that does not exit).
      const boom = new FakeMmuError('needs 4 free pages for the new roots, but only 0 are free');
      const ch = new ExitChannel(
        exitPipeline([], () => {
          throw boom;
        }),
      );
      let err: unknown;
      try {
        ch.push(pf(0));
      } catch (e) {
        err = e;
      }
      expect(err).toBe(boom);
      const next = pf(0);
      expect(() => ch.push(next)).toThrow(
        new ExitError(
          'E_PIPELINE_CLOSED',
          `vCPU 0 exit #${next.seq} EXCEPTION_NMI (vmx 0x0): exception 14, error code 0x2, address 0x1000: the exit pipeline failed earlier (needs 4 free pages for the new roots, but only 0 are free)`,
        ),
      );
    });

    it("rethrows an observer's own error as it is", () => {
      const full = new Error('ENOSPC: no space left on device, write');
      const ch = new ExitChannel(
        exitPipeline([], resume, [
          tap(() => {
            throw full;
          }),
        ]),
      );
      expect(() => ch.push(pf(0))).toThrow(full);
    });

    it('names a policy that is a plain operator (not resolveExits) when it throws', () => {
      const raw = namedPolicy(
        'raw-map',
        map((e: VmExit): VmExit => {
          if (e.kind === 'exception') throw new Error('out of shadow pages');
          return e;
        }),
      );
      const ch = new ExitChannel(exitPipeline([resolveExits('first', () => null), raw], resume));
      const a = pf(0);
      expect(() => ch.push(a)).toThrow(
        new ExitError(
          'E_POLICY_FAILED',
          `policy 'raw-map' failed on vCPU 0 exit #${a.seq} EXCEPTION_NMI (vmx 0x0): exception 14, error code 0x2, address 0x1000: out of shadow pages`,
        ),
      );
    });

    it('names a plain operator that no one named by its place in the pipeline', () => {
      const raw = map((e: VmExit): VmExit => {
        throw new Error(`cannot look at exit #${e.seq}`);
      });
      const ch = new ExitChannel(exitPipeline([resolveExits('first', () => null), raw], resume));
      const a = pf(0);
      expect(() => ch.push(a)).toThrow(
        new ExitError(
          'E_POLICY_FAILED',
          `policy #2 of the exit pipeline failed on vCPU 0 exit #${a.seq} EXCEPTION_NMI (vmx 0x0): exception 14, error code 0x2, address 0x1000: cannot look at exit #${a.seq}`,
        ),
      );
    });

    it('is closed, with E_PIPELINE_CLOSED, once an operator completed the stream, and completes its output', () => {
      const ch = new ExitChannel(exitPipeline([take(1)], resume));
      const events: string[] = [];
      ch.output.subscribe({ next: (e) => events.push(`exit ${e.seq}`), complete: () => events.push('complete') });
      const a = pf(0);
      expect(ch.push(a)).toEqual(RESUME);
      const b = pf(0);
      expect(() => ch.push(b)).toThrow(
        new ExitError(
          'E_PIPELINE_CLOSED',
          `vCPU 0 exit #${b.seq} EXCEPTION_NMI (vmx 0x0): exception 14, error code 0x2, address 0x1000: the exit pipeline completed after an earlier exit (an operator in it ended the stream)`,
        ),
      );
      expect(events).toEqual([`exit ${a.seq}`, 'complete']);
    });
  });
});

describe('MmuEventChannel', () => {
  describe('.decide', () => {
    const flood = (): FloodEvent => ({
      kind: 'flood',
      vcpu: 0,
      seq: ++seq,
      decidedBy: null,
      gfn: 5,
      level: 1,
      writeCount: 3,
      vcpuWriteCount: 3,
      decision: null,
    });

    it("names a plain operator's policy when it throws, and rethrows an observer's own error as it is", () => {
      let ch: MmuEventChannel | null = null;
      const raw = namedPolicy(
        'raw-flood',
        map((ev: MmuEvent): MmuEvent => {
          throw new Error(`no flood decision for gfn ${ev.kind === 'flood' ? ev.gfn : -1}`);
        }),
      );
      ch = new MmuEventChannel(mmuEventPipeline(() => ch!, [raw]));
      const ev = flood();
      expect(() => ch!.decide(ev, false)).toThrow(
        new ExitError('E_POLICY_FAILED', `policy 'raw-flood' failed on MMU event flood #${ev.seq} of vCPU 0: no flood decision for gfn 5`),
      );
      const full = new Error('recorder full');
      let ch2: MmuEventChannel | null = null;
      ch2 = new MmuEventChannel(
        mmuEventPipeline(
          () => ch2!,
          [],
          [
            tap(() => {
              throw full;
            }),
          ],
        ),
      );
      expect(() => ch2!.decide(flood(), false)).toThrow(full);
    });

    it('gives each event its own default when a policy asks another decision while it decides one (a nested decide)', () => {
      // The policy, on a flood event, asks a pte-write decision first (default 'zap-spte'), then passes the flood on:
      // the flood must still get its own default (false), not the nested event's.
      let ch: MmuEventChannel | null = null;
      const pteWrite = (): PteWriteEvent => ({
        kind: 'pte-write',
        vcpu: 0,
        seq: ++seq,
        decidedBy: null,
        gpa: 0x5000,
        size: 8,
        oldLo: 0,
        oldHi: 0,
        newLo: 0,
        newHi: 0,
        level: 1,
        misaligned: false,
        decision: null,
      });
      const nested: string[] = [];
      const asks = decideMmuEvents(
        'asks',
        () => {
          nested.push(ch!.decide(pteWrite(), 'zap-spte'));
          return null;
        },
        ['flood'],
      );
      ch = new MmuEventChannel(mmuEventPipeline(() => ch!, [asks]));
      const ev = flood();
      expect(ch.decide(ev, false)).toBe(false);
      expect([ev.decision, ev.decidedBy, nested]).toEqual([false, 'mmu', ['zap-spte']]);
    });
  });
});

describe('namedPolicy', () => {
  it('returns an operator that names itself (resolveExits, decideMmuEvents) as it is, and keeps what an operator says of its kinds', () => {
    const self = resolveExits('self', () => null);
    expect(namedPolicy('other', self)).toBe(self);
    const decides = decideMmuEvents('flood-only', () => true, ['flood']);
    expect(namedPolicy('flood-only', decides)).toBe(decides);
    // A wrapped plain operator still says which MMU-event kinds it decides (the VM routes only those through it).
    const plain = map((ev: MmuEvent) => ev) as MonoTypeOperatorFunction<MmuEvent> & { mmuEventKinds?: readonly string[] };
    Object.defineProperty(plain, 'mmuEventKinds', { value: ['prefetch'], enumerable: true });
    expect(mmuEventKindsOf([namedPolicy('plain', plain)])).toEqual(new Set(['prefetch']));
  });
});

describe('VmHooks', () => {
  describe('.exception', () => {
    it("lets the MMU handler's own error stop the run as itself", () => {
      const m = new Machine({ memoryBytes: 1 << 20 });
      const v = m.vcpus[0]!;
      const backend = {
        name: 'vmx',
        exceptionExits: () => true,
        exceptionExit: () => ({ backend: 'vmx', code: 0, name: 'EXCEPTION_NMI', fields: {} }),
      } as unknown as Backend;
      const boom = new FakeMmuError('no free shadow page');
      const mmu = {
        name: 'shadow',
        handlePageFault: () => {
          throw boom;
        },
      } as unknown as Mmu;
      const hooks = new VmHooks(v, backend, {}, mmu, new Stats(), [], []);
      expect(() => hooks.exception(v, PF_VECTOR, 2, 0x1000, ACC_WRITE)).toThrow(boom);
    });
  });
});

describe('Vm', () => {
  describe('.exits$', () => {
    it("delivers the vCPUs' exits in the order they were taken, each vCPU's policies seeing its own in order; the totals are the vCPUs' sum", () => {
      const backend = {
        name: 'vmx',
        createState: () => ({}),
        exceptionExits: () => true,
        exceptionExit: () => ({ backend: 'vmx', code: 0, name: 'EXCEPTION_NMI', fields: {} }),
      } as unknown as Backend;
      const mmu = { name: 'shadow', init() {}, attachVcpu() {}, handlePageFault: () => RESUME } as unknown as Mmu;
      const seenBy: string[][] = [[], []];
      const watch: FaultPolicy<unknown> = {
        name: 'watch',
        description: 'records what each vCPU pipeline sees',
        needs: [],
        exits: (ctx) => resolveExits('watch', (e) => (seenBy[ctx.vcpu.id]!.push(`${e.vcpu}#${e.seq}`), null)),
      };
      const rec = new ArrayRecorder();
      const variant = variantSchema.parse({ backend: 'vmx', mmu: 'shadow', memory: '4M', vcpus: 2 });
      const vm = new Vm(variant, backend, mmu, [{ policy: watch, options: {} }], () => null, new NoopTracer(), rec, 1);
      const out: string[] = [];
      vm.exits$.subscribe((e) => out.push(`${e.vcpu}#${e.seq}`));
      // The scheduler's order: vCPU 0, 1, 1, 0, 1 (each a #PF the MMU fixes).
      for (const id of [0, 1, 1, 0, 1]) vm.hooks[id]!.exception(vm.vcpus[id]!, PF_VECTOR, 2, 0x1000 * (id + 1), ACC_WRITE);
      const order = ['0#1', '1#1', '1#2', '0#2', '1#3'];
      expect(out).toEqual(order);
      expect(rec.exits.map((e) => `${e.vcpu}#${e.seq}`)).toEqual(order);
      expect(seenBy).toEqual([
        ['0#1', '0#2'],
        ['1#1', '1#2', '1#3'],
      ]);
      const c = vm.counters();
      expect([c.perVcpu[0]!.exits, c.perVcpu[1]!.exits, c.total.exits]).toEqual([2, 3, 5]);
      expect(c.total).toEqual(mergeStats(c.perVcpu));
    });
  });
});
