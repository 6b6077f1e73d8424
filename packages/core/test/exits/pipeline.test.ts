import { filter, map, merge, Subject, take, tap, type MonoTypeOperatorFunction } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { ExitError } from '../../src/exits/errors.js';
import { decideMmuEvents, mmuEventKindsOf, type FloodEvent, type MmuEvent, type PteWriteEvent } from '../../src/exits/mmu-events.js';
import {
  ArrayRecorder,
  countAndObserveExits,
  countExits,
  isNoopObservers,
  JsonLinesTracer,
  NoopRecorder,
  NoopTracer,
  observeExits,
} from '../../src/exits/observers.js';
import { ExitChannel, exitPipeline, MmuEventChannel, mmuEventPipeline } from '../../src/exits/pipeline.js';
import { resolveExits } from '../../src/exits/policy.js';
import { mergeStats, Stats } from '../../src/exits/stats.js';
import { RESUME, type ExitResolution, type VmExit } from '../../src/exits/vm-exit.js';

let seq = 0;
function pf(vcpu: number, errorCode: number, address = 0x1000): VmExit {
  return {
    kind: 'exception',
    vcpu,
    seq: ++seq,
    hw: { backend: 'vmx', code: 0, name: 'EXCEPTION_NMI', fields: { exitQualification: address } },
    vector: 14,
    errorCode,
    address,
    access: errorCode & 0x16,
    resolution: null,
    resolvedBy: null,
  };
}
function invlpg(vcpu: number, va: number): VmExit {
  return {
    kind: 'invlpg',
    vcpu,
    seq: ++seq,
    hw: { backend: 'vmx', code: 14, name: 'INVLPG', fields: { exitQualification: va } },
    va,
    resolution: null,
    resolvedBy: null,
  };
}
const resolved = (e: VmExit, resolution: ExitResolution, by: string): VmExit => ({ ...e, resolution, resolvedBy: by });

/** A policy that injects every not-present #PF (P=0) back into the guest. */
const reflectNotPresent = resolveExits('reflect-np', (e) =>
  e.kind === 'exception' && (e.errorCode & 1) === 0 ? { kind: 'inject', vector: 14, errorCode: e.errorCode } : null,
);
/** A policy that resumes every #PF: would take everything reflect-np takes, if it came first. */
const resumeAllPf = resolveExits('resume-pf', (e) => (e.kind === 'exception' ? RESUME : null));
const mmuHandler = (): ExitResolution => ({ kind: 'emulate' });

function scheduler(): TestScheduler {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

describe('exitPipeline', () => {
  it('resolves in order: the first policy that answers wins, later ones pass it on', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const a = pf(0, 0x2); // P=0 write: reflect-np takes it
      const b = pf(0, 0x3); // P=1 write: resume-pf takes it
      const src = cold('-a-b-|', { a, b });
      expectObservable(src.pipe(exitPipeline([reflectNotPresent, resumeAllPf], mmuHandler))).toBe('-a-b-|', {
        a: resolved(a, { kind: 'inject', vector: 14, errorCode: 2 }, 'reflect-np'),
        b: resolved(b, RESUME, 'resume-pf'),
      });
    });
  });

  it('lets the order of policies decide: resume-pf first takes both', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const a = pf(0, 0x2);
      const b = pf(0, 0x3);
      expectObservable(cold('-a-b-|', { a, b }).pipe(exitPipeline([resumeAllPf, reflectNotPresent], mmuHandler))).toBe('-a-b-|', {
        a: resolved(a, RESUME, 'resume-pf'),
        b: resolved(b, RESUME, 'resume-pf'),
      });
    });
  });

  it('passes through what no policy takes to the MMU handler', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const a = invlpg(0, 0x5000); // neither policy looks at INVLPG
      const b = pf(0, 0x3);
      expectObservable(cold('a-b|', { a, b }).pipe(exitPipeline([reflectNotPresent], mmuHandler))).toBe('a-b|', {
        a: resolved(a, { kind: 'emulate' }, 'mmu'),
        b: resolved(b, { kind: 'emulate' }, 'mmu'),
      });
    });
  });

  it('fails with E_EXIT_UNRESOLVED, naming the exit, when nothing resolves it', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const a = pf(0, 0x2);
      const b = pf(0, 0x3, 0xdead000);
      const out = cold('-a-b-|', { a, b }).pipe(exitPipeline([reflectNotPresent], null));
      const err = new ExitError(
        'E_EXIT_UNRESOLVED',
        `no policy or handler resolved vCPU 0 exit #${b.seq} EXCEPTION_NMI (vmx 0x0): exception 14, error code 0x3, address 0xdead000`,
      );
      expectObservable(out).toBe('-a-#', { a: resolved(a, { kind: 'inject', vector: 14, errorCode: 2 }, 'reflect-np') }, err);
    });
  });

  it('fails with E_POLICY_FAILED, naming the policy, when a policy throws', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const a = pf(0, 0x2);
      const boom = resolveExits('boom', () => {
        throw new Error('out of shadow pages');
      });
      const out = cold('a|', { a }).pipe(exitPipeline([boom], mmuHandler));
      expectObservable(out).toBe(
        '#',
        undefined,
        new ExitError(
          'E_POLICY_FAILED',
          `policy 'boom' failed on vCPU 0 exit #${a.seq} EXCEPTION_NMI (vmx 0x0): exception 14, error code 0x2, address 0x1000: out of shadow pages`,
        ),
      );
    });
  });

  it('counts per vCPU, and the merged stream counts their sum', () => {
    scheduler().run(({ cold, expectObservable, flush }) => {
      const s0 = new Stats();
      const s1 = new Stats();
      const total = new Stats();
      const v0 = cold('a-b-c|', { a: pf(0, 2), b: invlpg(0, 0x1000), c: pf(0, 3) }).pipe(exitPipeline([reflectNotPresent], mmuHandler, [countExits(s0)]));
      const v1 = cold('-x--|', { x: pf(1, 2) }).pipe(exitPipeline([reflectNotPresent], mmuHandler, [countExits(s1)]));
      const merged = merge(v0, v1).pipe(countExits(total));
      expectObservable(merged.pipe(countExits(new Stats()))).toBe('axb-c|', {
        a: expect.objectContaining({ vcpu: 0, resolvedBy: 'reflect-np' }),
        x: expect.objectContaining({ vcpu: 1, resolvedBy: 'reflect-np' }),
        b: expect.objectContaining({ kind: 'invlpg', resolvedBy: 'mmu' }),
        c: expect.objectContaining({ vcpu: 0, resolvedBy: 'mmu' }),
      });
      flush();
      expect(s0.snapshot()).toEqual({ exits: 3, 'exits.EXCEPTION_NMI': 2, 'exits.INVLPG': 1, 'exits.kind.exception': 2, 'exits.kind.invlpg': 1 });
      expect(s1.snapshot()).toEqual({ exits: 1, 'exits.EXCEPTION_NMI': 1, 'exits.kind.exception': 1 });
      expect(total.snapshot()).toEqual(mergeStats([s0.snapshot(), s1.snapshot()]));
      expect(total.get('exits')).toBe(4);
    });
  });
});

describe('ExitChannel', () => {
  describe('.push', () => {
    it('runs the pipeline synchronously and returns the resolution; observers see the resolved exit', () => {
      const rec = new ArrayRecorder();
      const lines: string[] = [];
      const ch = new ExitChannel(exitPipeline([reflectNotPresent], mmuHandler, [observeExits(new JsonLinesTracer((l) => lines.push(l)), rec)]));
      const e = pf(2, 0x6, -0x7780_0000_0000);
      expect(ch.push(e)).toEqual({ kind: 'inject', vector: 14, errorCode: 6 });
      expect(rec.exits).toEqual([e]);
      expect(lines).toHaveLength(1);
      expect(JSON.parse(lines[0]!)).toMatchObject({
        type: 'exit',
        vcpu: 2,
        kind: 'exception',
        reason: 'EXCEPTION_NMI',
        address: '0xffff888000000000',
        resolution: { kind: 'inject', vector: 14, errorCode: 6 },
        resolvedBy: 'reflect-np',
      });
    });

    it('throws E_EXIT_UNRESOLVED and stays closed afterwards', () => {
      const ch = new ExitChannel(exitPipeline([], null));
      expect(() => ch.push(pf(0, 2))).toThrow(expect.objectContaining({ code: 'E_EXIT_UNRESOLVED' }));
      expect(() => ch.push(pf(0, 2))).toThrow(expect.objectContaining({ code: 'E_PIPELINE_CLOSED' }));
    });

    it('feeds every subscription of an operator that subscribes to its source more than once, as a Subject would', () => {
      // Not-present #PFs through one branch, the rest through the other: each exit reaches both branches once.
      const seen: string[] = [];
      const split: MonoTypeOperatorFunction<VmExit> = (src) =>
        merge(
          src.pipe(
            filter((e) => {
              seen.push(`np ${e.seq}`);
              return e.kind === 'exception' && (e.errorCode & 1) === 0;
            }),
            reflectNotPresent,
          ),
          src.pipe(
            filter((e) => {
              seen.push(`p ${e.seq}`);
              return !(e.kind === 'exception' && (e.errorCode & 1) === 0);
            }),
          ),
        );
      const ch = new ExitChannel(exitPipeline([split], mmuHandler));
      const a = pf(0, 2);
      const b = pf(0, 3);
      expect(ch.push(a)).toEqual({ kind: 'inject', vector: 14, errorCode: 2 });
      expect(ch.push(b)).toEqual({ kind: 'emulate' });
      expect(seen).toEqual([`np ${a.seq}`, `p ${a.seq}`, `np ${b.seq}`, `p ${b.seq}`]);
    });

    it('throws E_EXIT_DROPPED when an operator swallows the exit', () => {
      const drop: MonoTypeOperatorFunction<VmExit> = (src) => new Subject<VmExit>().asObservable() ?? src;
      const ch = new ExitChannel(exitPipeline([drop], mmuHandler));
      expect(() => ch.push(pf(0, 2))).toThrow(expect.objectContaining({ code: 'E_EXIT_DROPPED' }));
    });
  });
});

describe('MmuEventChannel', () => {
  describe('.decide', () => {
    const ev = (misaligned: boolean): PteWriteEvent => ({
      kind: 'pte-write',
      vcpu: 0,
      seq: ++seq,
      gpa: 0x3008,
      size: 8,
      oldLo: 0,
      oldHi: 0,
      newLo: 0x5067,
      newHi: 0,
      level: 1,
      misaligned,
      decision: null,
      decidedBy: null,
    });

    it('lets a policy take the decision, and falls back to the MMU default otherwise', () => {
      const updateOnWrite = decideMmuEvents('update-on-write', (e) => (e.kind === 'pte-write' && !e.misaligned ? 'update-spte' : null));
      const rec = new ArrayRecorder();
      let ch: MmuEventChannel | null = null;
      ch = new MmuEventChannel(mmuEventPipeline(() => ch!, [updateOnWrite], [(s) => s.pipe(observeMmu(rec))]));
      expect(ch.decide(ev(false), 'zap-spte')).toBe('update-spte');
      expect(ch.decide(ev(true), 'zap-page')).toBe('zap-page');
      expect(rec.mmuEvents.map((e) => [e.decision, e.decidedBy])).toEqual([
        ['update-spte', 'update-on-write'],
        ['zap-page', 'mmu'],
      ]);
    });

    it('offers a policy that names its kinds only events of those kinds, and says which they are', () => {
      const offered: string[] = [];
      const op = decideMmuEvents('pw-only', (e) => (offered.push(e.kind), 'update-spte'), ['pte-write']);
      expect(op.mmuEventKinds).toEqual(['pte-write']);
      expect(mmuEventKindsOf([op])).toEqual(new Set(['pte-write']));
      expect(mmuEventKindsOf([op, decideMmuEvents('any', () => null)])).toBeNull();
      let ch: MmuEventChannel | null = null;
      ch = new MmuEventChannel(mmuEventPipeline(() => ch!, [op]));
      const fl: FloodEvent = { kind: 'flood', vcpu: 0, seq: ++seq, decidedBy: null, gfn: 3, level: 2, writeCount: 9, vcpuWriteCount: 9, decision: null };
      expect(ch.decide(fl, false)).toBe(false);
      expect(ch.decide(ev(false), 'zap-spte')).toBe('update-spte');
      expect(offered).toEqual(['pte-write']);
    });

    it('rejects a decision of the wrong type', () => {
      // @ts-expect-error: `true` is no answer to a pte-write event; the run-time check is what this test pins.
      const bad = decideMmuEvents('bad', () => true);
      let ch: MmuEventChannel | null = null;
      ch = new MmuEventChannel(mmuEventPipeline(() => ch!, [bad]));
      expect(() => ch!.decide(ev(false), 'zap-spte')).toThrow(/policy 'bad' answered true to a pte-write event/);
      // A string that is no pte-write decision, and values a message cannot JSON.stringify (a BigInt, a cycle).
      const cyclic: { self?: unknown } = {};
      cyclic.self = cyclic;
      for (const [answer, shown] of [
        ['zap-everything', '"zap-everything"'],
        [1n, '1'],
        [cyclic, '[object Object]'],
      ] as const) {
        // @ts-expect-error: none of these answers a pte-write event
        const odd = decideMmuEvents('odd', () => answer);
        let c: MmuEventChannel | null = null;
        c = new MmuEventChannel(mmuEventPipeline(() => c!, [odd]));
        expect(() => c!.decide(ev(false), 'zap-spte')).toThrow(
          new ExitError('E_BAD_RESOLUTION', `policy 'odd' answered ${shown} to a pte-write event (expected zap-spte, update-spte or zap-page)`),
        );
      }
    });

    it('rejects a decision of the wrong kind that an operator of its own set, naming who set it', () => {
      // A raw operator (not decideMmuEvents) that answers a flood event with 1, and a pte-write event with a string
      // the MMU does not know: the MMU would read the first as "not true" and the second as zap-spte.
      const raw: MonoTypeOperatorFunction<MmuEvent> = map((e) => {
        (e as { decision: unknown }).decision = e.kind === 'flood' ? 1 : 'zap-everything';
        e.decidedBy = 'raw';
        return e;
      });
      let ch: MmuEventChannel | null = null;
      ch = new MmuEventChannel(mmuEventPipeline(() => ch!, [raw]));
      const fl: FloodEvent = { kind: 'flood', vcpu: 0, seq: 1, decidedBy: null, gfn: 3, level: 2, writeCount: 9, vcpuWriteCount: 9, decision: null };
      expect(() => ch!.decide(fl, false)).toThrow(
        new ExitError('E_BAD_RESOLUTION', "MMU event flood #1 of vCPU 0 was decided 1 by 'raw' (expected true or false)"),
      );
      let ch2: MmuEventChannel | null = null;
      ch2 = new MmuEventChannel(mmuEventPipeline(() => ch2!, [raw]));
      expect(() => ch2!.decide(ev(false), 'zap-spte')).toThrow(/was decided "zap-everything" by 'raw' \(expected zap-spte, update-spte or zap-page\)/);
      // A BigInt that the channel's own check must still describe (JSON.stringify would throw).
      const bigint: MonoTypeOperatorFunction<MmuEvent> = map((e) => {
        (e as { decision: unknown }).decision = 1n;
        return e;
      });
      let ch3: MmuEventChannel | null = null;
      ch3 = new MmuEventChannel(mmuEventPipeline(() => ch3!, [bigint]));
      expect(() => ch3!.decide<FloodEvent>({ ...fl, seq: 2, decidedBy: null, decision: null }, false)).toThrow(
        new ExitError('E_BAD_RESOLUTION', 'MMU event flood #2 of vCPU 0 was decided 1 by a policy (expected true or false)'),
      );
    });
  });
});

function observeMmu(rec: ArrayRecorder) {
  return (src: import('rxjs').Observable<import('../../src/exits/mmu-events.js').MmuEvent>) => {
    src.subscribe((e) => rec.recordMmuEvent(e));
    return src;
  };
}

describe('ExitChannel', () => {
  describe('.output', () => {
    it('delivers each exit after the pipeline to every subscriber, in push order, and fails them with the pipeline', () => {
      const ch = new ExitChannel(exitPipeline([reflectNotPresent], null));
      const a: VmExit[] = [];
      const b: VmExit[] = [];
      const errors: unknown[] = [];
      ch.output.subscribe({ next: (e) => a.push(e), error: (e: unknown) => errors.push(e) });
      const e1 = pf(0, 2);
      ch.push(e1); // nobody but the first subscriber yet
      ch.output.subscribe({ next: (e) => b.push(e), error: (e: unknown) => errors.push(e) });
      const e2 = pf(0, 4);
      ch.push(e2);
      expect(a).toEqual([e1, e2]);
      expect(b).toEqual([e2]);
      expect(e2.resolvedBy).toBe('reflect-np');
      // A present-page #PF: no policy resolves it and there is no handler, so the pipeline fails.
      expect(() => ch.push(pf(0, 3))).toThrow(expect.objectContaining({ code: 'E_EXIT_UNRESOLVED' }));
      expect(errors).toHaveLength(2);
      expect(errors[0]).toBe(errors[1]);
    });

    it('is observed while a subscription is open: unsubscribed, completed or failed, it no longer counts', () => {
      const ch = new ExitChannel(exitPipeline([reflectNotPresent], null));
      expect(ch.observed).toBe(false);
      const s1 = ch.output.subscribe(() => {});
      const s2 = ch.output.subscribe(() => {});
      expect(ch.observed).toBe(true);
      s1.unsubscribe();
      s1.unsubscribe(); // a second unsubscribe counts nothing
      expect(ch.observed).toBe(true);
      s2.unsubscribe();
      expect(ch.observed).toBe(false);
      // A subscriber that ends itself on its first exit (take(1)): counted until then.
      const firsts: VmExit[] = [];
      ch.output.pipe(take(1)).subscribe((e) => firsts.push(e));
      expect(ch.observed).toBe(true);
      ch.push(pf(0, 2));
      expect(firsts).toHaveLength(1);
      expect(ch.observed).toBe(false);
      // The pipeline fails: its subscribers' subscriptions end (not observed from when they are told, as a Subject
      // says), and a late one ends at once (with the error).
      const whenTold: boolean[] = [];
      ch.output.subscribe({ error: () => whenTold.push(ch.observed) });
      expect(ch.observed).toBe(true);
      expect(() => ch.push(pf(0, 3))).toThrow(expect.objectContaining({ code: 'E_EXIT_UNRESOLVED' }));
      expect(ch.observed).toBe(false);
      ch.output.subscribe({ error: () => whenTold.push(ch.observed) });
      expect(whenTold).toEqual([false, false]);
      expect(ch.observed).toBe(false);
      // Closed by its owner: the same for completion.
      const closed = new ExitChannel(exitPipeline([reflectNotPresent], null));
      const onComplete: boolean[] = [];
      closed.output.subscribe({ complete: () => onComplete.push(closed.observed) });
      closed.output.subscribe({ complete: () => onComplete.push(closed.observed) });
      closed.close('disposed');
      expect(closed.observed).toBe(false);
      closed.output.subscribe({ complete: () => onComplete.push(closed.observed) });
      expect(onComplete).toEqual([false, false, false]);
    });
  });
});

describe('ExitChannel', () => {
  describe('.push of one refilled object', () => {
    it('counts each push once, and a push from inside the pipeline counts its own item, the outer one its own', () => {
      // The owner refills one exit for every push (VmHooks' scratch exception exit): each push must still come out
      // exactly once, and an inner push (a policy that pushes another exit while one is in flight) must not take
      // the outer one's arrival.
      const scratch = pf(0, 2);
      let ch: ExitChannel | null = null;
      let inner: VmExit | null = null;
      const seen: number[] = [];
      const nesting: MonoTypeOperatorFunction<VmExit> = map((e: VmExit) => {
        // A present fetch #PF pushes a not-present one through the same channel while it is in flight.
        if (e.kind === 'exception' && e.errorCode === 0x11 && ch !== null) ch.push((inner = pf(0, 2)));
        return e;
      });
      ch = new ExitChannel(exitPipeline([nesting, reflectNotPresent], mmuHandler, [tap((e: VmExit) => seen.push(e.seq))]));
      for (let i = 0; i < 3; i++) {
        scratch.resolution = null;
        scratch.resolvedBy = null;
        (scratch as { seq: number }).seq = 100 + i;
        expect(ch.push(scratch)).toEqual({ kind: 'inject', vector: 14, errorCode: 2 });
      }
      const outer = pf(0, 0x11);
      expect(ch.push(outer)).toEqual({ kind: 'emulate' });
      expect(inner).not.toBeNull();
      expect(seen).toEqual([100, 101, 102, inner!.seq, outer.seq]); // the inner exit came out inside the outer push
      // After those pushes, an operator that drops the scratch exit is still caught for that push.
      const dropping = new ExitChannel(exitPipeline([filter((e: VmExit) => e.seq !== 7)], mmuHandler));
      (scratch as { seq: number }).seq = 6;
      scratch.resolution = null;
      expect(dropping.push(scratch)).toEqual({ kind: 'emulate' });
      (scratch as { seq: number }).seq = 7;
      scratch.resolution = null;
      expect(() => dropping.push(scratch)).toThrow(expect.objectContaining({ code: 'E_EXIT_DROPPED', message: expect.stringContaining('#7') }));
    });
  });
});

describe('countAndObserveExits', () => {
  it('counts as countExits does and feeds the tracer and recorder as observeExits does', () => {
    const exits = [pf(0, 2), pf(0, 4), invlpg(0, 0x2000), pf(0, 6)];
    const a = new Stats();
    const b = new Stats();
    const recA = new ArrayRecorder();
    const recB = new ArrayRecorder();
    const linesA: string[] = [];
    const linesB: string[] = [];
    const chA = new ExitChannel(exitPipeline([], mmuHandler, [countExits(a), observeExits(new JsonLinesTracer((l) => linesA.push(l)), recA)]));
    const chB = new ExitChannel(exitPipeline([], mmuHandler, [countAndObserveExits(b, new JsonLinesTracer((l) => linesB.push(l)), recB)]));
    for (const e of exits) {
      chA.push({ ...e });
      chB.push({ ...e });
    }
    // 4 exits: 3 EXCEPTION_NMI (kind exception) and 1 INVLPG (kind invlpg).
    expect(b.snapshot()).toEqual({ exits: 4, 'exits.EXCEPTION_NMI': 3, 'exits.INVLPG': 1, 'exits.kind.exception': 3, 'exits.kind.invlpg': 1 });
    expect(b.snapshot()).toEqual(a.snapshot());
    expect(linesB).toEqual(linesA);
    expect(recB.exits).toEqual(recA.exits);
  });

  it('feeds a tracer or recorder whose methods are not all the no-op ones', () => {
    const tracer = new NoopTracer();
    const recorder = new NoopRecorder();
    expect(isNoopObservers(tracer, recorder)).toBe(true);
    expect(isNoopObservers(tracer, new ArrayRecorder())).toBe(false);
    let calls = 0;
    tracer.traceExit = () => void calls++; // a no-op tracer with one method replaced
    expect(isNoopObservers(tracer, recorder)).toBe(false);
    const s = new Stats();
    const ch = new ExitChannel(exitPipeline([], mmuHandler, [countAndObserveExits(s, tracer, recorder)]));
    ch.push(pf(0, 2));
    expect(calls).toBe(1);
    expect(s.get('exits')).toBe(1);
  });
});

describe('Stats', () => {
  describe('.cell', () => {
    it('returns the live cell of a counter: adds through it and through add() meet, and it appears in the snapshot', () => {
      const s = new Stats();
      s.add('a', 2);
      const a = s.cell('a');
      a.n++;
      s.add('a');
      expect(s.get('a')).toBe(4);
      expect(s.cell('a')).toBe(a);
      const b = s.cell('b');
      expect(s.snapshot()).toEqual({ a: 4, b: 0 });
      b.n += 5;
      expect(s.snapshot()).toEqual({ a: 4, b: 5 });
    });
  });
});
