import { describe, expect, it } from 'vitest';
import { decideMmuEvents, type FloodEvent, type MmuEvent, type PteWriteEvent } from '../../src/exits/mmu-events.js';
import { ArrayRecorder, NoopRecorder, NoopTracer, type ExitRecorder } from '../../src/exits/observers.js';
import type { FaultPolicy } from '../../src/vm/policy.js';
import type { Backend } from '../../src/vm/backend.js';
import type { Mmu, MmuHost } from '../../src/vm/mmu.js';
import { VariantError, variantSchema } from '../../src/vm/variant.js';
import { Vm } from '../../src/vm/vm.js';

/** An MMU that only keeps its host (the Vm under test). */
function fakeMmu(): Mmu & { host: MmuHost | null } {
  return {
    name: 'shadow',
    host: null,
    init(host) {
      this.host = host;
    },
    attachVcpu() {},
    handlePageFault: () => ({ kind: 'resume' }),
    trackWrite() {},
    crWritten() {},
    invlpg() {},
    emulationFailed: () => false,
  };
}
const backend = { name: 'vmx', createState: () => ({}) } as unknown as Backend;
const variant = variantSchema.parse({ backend: 'vmx', mmu: 'shadow', memory: '4M', vcpus: 2 });
const flood = (vcpu: number, seq: number): FloodEvent => ({
  kind: 'flood',
  vcpu,
  seq,
  decidedBy: null,
  gfn: 5,
  level: 2,
  writeCount: 3,
  vcpuWriteCount: 3,
  decision: null,
});

function vm(policies: { policy: FaultPolicy<unknown>; options: unknown }[], recorder: ExitRecorder = new NoopRecorder()): Vm {
  return new Vm(variant, backend, fakeMmu(), policies, () => null, new NoopTracer(), recorder, 1);
}

describe('Vm', () => {
  describe('.decideByDefault', () => {
    it('counts the event under mmu_events.<kind> and returns true when no policy, tracer or recorder would see it', () => {
      const v = vm([]);
      expect(v.decideByDefault(1, 'flood')).toBe(true);
      expect(v.decideByDefault(1, 'flood')).toBe(true);
      expect(v.decideByDefault(1, 'pte-write')).toBe(true);
      // Counted as decide() counts: on the event's vCPU only.
      expect(v.counters().perVcpu[1]).toMatchObject({ 'mmu_events.flood': 2, 'mmu_events.pte-write': 1 });
      expect(v.counters().perVcpu[0]).not.toHaveProperty('mmu_events.flood');
      // decide() on the same VM agrees: the fallback stands, counted once more.
      expect(v.decide(flood(1, 3), false)).toBe(false);
      expect(v.counters().total['mmu_events.flood']).toBe(3);
    });

    it('returns false with a recorder, so the MMU builds the event and decide() records it', () => {
      const rec = new ArrayRecorder();
      const v = vm([], rec);
      expect(v.decideByDefault(0, 'flood')).toBe(false);
      const ev = flood(0, 1);
      expect(v.decide(ev, false)).toBe(false);
      expect(rec.mmuEvents).toEqual([{ ...ev, decision: false, decidedBy: 'mmu' }]);
      expect(v.counters().total['mmu_events.flood']).toBe(1);
    });

    it('routes only the kinds its policies name through the stream when every policy names them', () => {
      const offered: string[] = [];
      const floodOnly: FaultPolicy<unknown> = {
        name: 'flood-only',
        description: 'floods every page; decides nothing else',
        needs: [],
        mmuEvents: () => decideMmuEvents('flood-only', (e: MmuEvent) => (offered.push(e.kind), e.kind === 'flood' ? true : null), ['flood']),
      };
      const v = vm([{ policy: floodOnly, options: {} }]);
      expect(v.decideByDefault(0, 'flood')).toBe(false);
      expect(v.decideByDefault(0, 'pte-write')).toBe(true);
      expect(v.decide(flood(0, 1), false)).toBe(true);
      const pw: PteWriteEvent = {
        kind: 'pte-write',
        vcpu: 0,
        seq: 2,
        decidedBy: null,
        gpa: 0x5008,
        size: 8,
        oldLo: 0,
        oldHi: 0,
        newLo: 0x7067,
        newHi: 0,
        level: 1,
        misaligned: false,
        decision: null,
      };
      expect(v.decide(pw, 'zap-spte')).toBe('zap-spte');
      expect(pw).toMatchObject({ decision: 'zap-spte', decidedBy: 'mmu' });
      // The policy was offered the flood event only; both events were counted (the pte-write one twice: once
      // by decideByDefault, once by decide).
      expect(offered).toEqual(['flood']);
      expect(v.counters().total).toMatchObject({ 'mmu_events.flood': 1, 'mmu_events.pte-write': 2 });
      // With a second policy that names no kinds, every kind goes through the stream again.
      const any: FaultPolicy<unknown> = { name: 'any', description: 'decides nothing', needs: [], mmuEvents: () => decideMmuEvents('any', () => null) };
      const w = vm([
        { policy: floodOnly, options: {} },
        { policy: any, options: {} },
      ]);
      expect(w.decideByDefault(0, 'pte-write')).toBe(false);
    });

    it('returns false when a policy takes MMU events, and the policy decides', () => {
      const always: FaultPolicy<unknown> = {
        name: 'flood-always',
        description: 'floods every page',
        needs: [],
        mmuEvents: () => decideMmuEvents('flood-always', (e: MmuEvent) => (e.kind === 'flood' ? true : null)),
      };
      const v = vm([{ policy: always, options: {} }]);
      expect(v.decideByDefault(0, 'flood')).toBe(false);
      expect(v.decide(flood(0, 1), false)).toBe(true);
      expect(v.counters().total['mmu_events.flood']).toBe(1);
    });
  });
});

describe('Vm.reusesEvents', () => {
  it('is true only while nothing outside the pipeline can keep an event: no tracer or recorder, no mmuEvents$ subscriber', () => {
    const v = vm([]);
    expect(v.reusesEvents(0)).toBe(true);
    expect(v.reusesEvents(1)).toBe(true);
    // A subscriber keeps what it sees: no refilled events while it is there (asked per event), again once it left.
    const kept: MmuEvent[] = [];
    const sub = v.mmuEvents$.subscribe((e) => kept.push(e));
    expect(v.reusesEvents(0)).toBe(false);
    sub.unsubscribe();
    expect(v.reusesEvents(0)).toBe(true);
    // A recorder keeps them too, for the VM's life.
    expect(vm([], new ArrayRecorder()).reusesEvents(0)).toBe(false);
    // No such vCPU: nothing to refill for.
    expect(v.reusesEvents(2)).toBe(false);
  });
});

describe('Vm (a policy that refuses the VM)', () => {
  const refuser = (step: 'setup' | 'exits' | 'mmuEvents'): FaultPolicy<unknown> => ({
    name: 'refuser',
    description: 'throws while the VM is built',
    needs: [],
    [step]: () => {
      throw new Error('needs 4 vCPUs');
    },
  });

  it('turns what setup, exits or mmuEvents throws into a VariantError on the policy, naming it', () => {
    for (const step of ['setup', 'exits', 'mmuEvents'] as const) {
      let e: unknown = null;
      try {
        vm([
          { policy: { name: 'fine', description: 'x', needs: [] }, options: {} },
          { policy: refuser(step), options: {} },
        ]);
      } catch (x) {
        e = x;
      }
      expect(e, step).toBeInstanceOf(VariantError);
      expect((e as VariantError).problems).toEqual([{ path: 'policies.1', message: `policy 'refuser' refused the VM in ${step}(): needs 4 vCPUs` }]);
    }
  });
});
