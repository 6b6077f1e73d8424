import { Machine, type MmuDecisionOf, type MmuEvent, type MmuHost, type StatCell } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import {
  decideFloodEvent,
  decidePteWriteEvent,
  DEFAULT_FLOOD_DECISION,
  DEFAULT_PTE_WRITE_DECISION,
  detectWriteMisaligned,
  writtenSptes,
} from '../src/decisions.js';
import { VcpuShadowState } from '../src/state.js';

/** The flood decision as the write hook (pte-write.ts) asks it: by default unless something may see the event. */
function decideFlood(h: MmuHost, st: VcpuShadowState, seq: number, gfn: number, level: number, writeCount: number, vcpuWriteCount: number): boolean {
  return st.decidedByDefault(h, 1, 'flood') ? DEFAULT_FLOOD_DECISION : decideFloodEvent(h, st, seq, gfn, level, writeCount, vcpuWriteCount);
}

/** The pte-write decision as the write hook asks it. */
function decidePteWrite(
  h: MmuHost,
  st: VcpuShadowState,
  seq: number,
  gpa: number,
  size: number,
  ...rest: [number, number, number, number, number, boolean]
): string {
  return st.decidedByDefault(h, 0, 'pte-write') ? DEFAULT_PTE_WRITE_DECISION : decidePteWriteEvent(h, st, seq, gpa, size, ...rest);
}

/** The shadow state of vCPU `id` of a fresh two-vCPU machine. */
function stateOf(id: number): VcpuShadowState {
  return new VcpuShadowState(new Machine({ memoryBytes: 1 << 20, vcpus: 2 }).vcpus[id]!);
}

describe('writtenSptes', () => {
  it('maps a 32-bit guest PTE 700 write to spte 188 of quadrant 1 only', () => {
    const gpa = 0x5000 + 700 * 4;
    expect(writtenSptes(gpa, true, 1, 1)).toBe(188 * 4 + 1);
    expect(writtenSptes(gpa, true, 1, 0)).toBe(-1);
  });

  it('maps a 32-bit guest PDE 300 write (any byte of it) to sptes 88 and 89 of quadrant 1', () => {
    for (const off of [1200, 1201, 1202, 1203]) expect(writtenSptes(0x7000 + off, true, 2, 1)).toBe(88 * 4 + 2);
    expect(writtenSptes(0x7000 + 1200, true, 2, 0)).toBe(-1);
  });

  it('maps an 8-byte gpte write to the spte of the same index, whatever the quadrant field', () => {
    expect(writtenSptes(0x9000 + 17 * 8, false, 1, 0)).toBe(17 * 4 + 1);
    expect(writtenSptes(0x9000 + 511 * 8, false, 3, 0)).toBe(511 * 4 + 1);
  });
});

describe('detectWriteMisaligned', () => {
  it('follows KVM: aligned 1-byte writes are fine, other short or straddling writes are misaligned', () => {
    expect(detectWriteMisaligned(0x1000, 1, 8)).toBe(false); // andb on byte 0
    expect(detectWriteMisaligned(0x1002, 1, 8)).toBe(true);
    expect(detectWriteMisaligned(0x1004, 4, 8)).toBe(false); // half of a gpte: widened by the caller
    expect(detectWriteMisaligned(0x1004, 8, 8)).toBe(true); // spans two gptes
    expect(detectWriteMisaligned(0x1002, 2, 4)).toBe(true);
  });
});

describe('decideFlood', () => {
  /** A host that records what it was asked; `quiet` is its answer to decideByDefault (undefined: it has none). */
  function host(quiet: boolean | undefined): MmuHost & { asked: string[] } {
    const asked: string[] = [];
    const h: MmuHost & { asked: string[] } = {
      asked,
      vcpus: [],
      count: () => {},
      decide: <E extends MmuEvent>(ev: E, fallback: MmuDecisionOf<E>): MmuDecisionOf<E> => {
        asked.push(`decide ${ev.kind} #${ev.seq}`);
        return (ev.kind === 'flood' ? true : fallback) as MmuDecisionOf<E>;
      },
    };
    if (quiet !== undefined) {
      h.decideByDefault = (vcpu, kind) => {
        asked.push(`default ${kind} on vCPU ${vcpu}`);
        return quiet;
      };
    }
    return h;
  }

  it('takes the MMU default without building an event when the host says nothing would see it', () => {
    const h = host(true);
    const st = stateOf(1);
    expect(decideFlood(h, st, 7, 0x55, 2, 3, 3)).toBe(false);
    expect(decidePteWrite(h, st, 8, 0x55000, 8, 0, 0, 1, 0, 1, false)).toBe('zap-spte');
    expect(h.asked).toEqual(['default flood on vCPU 1', 'default pte-write on vCPU 1']);
  });

  it('builds the event and asks decide() otherwise, or when the host has no fast path', () => {
    for (const quiet of [false, undefined]) {
      const h = host(quiet);
      expect(decideFlood(h, stateOf(0), 9, 0x55, 2, 3, 3)).toBe(true);
      expect(h.asked.at(-1)).toBe('decide flood #9');
    }
  });

  it('asks a host that decides by default for good once per kind, then counts the events in the cell it gave', () => {
    const h = host(true);
    const cells = new Map<string, StatCell>();
    h.decidesByDefault = (vcpu, kind) => {
      h.asked.push(`for good ${kind} on vCPU ${vcpu}`);
      return kind === 'flood';
    };
    h.counter = (vcpu, name) => {
      h.asked.push(`cell ${name} of vCPU ${vcpu}`);
      let c = cells.get(name);
      if (c === undefined) cells.set(name, (c = { n: 0 }));
      return c;
    };
    const st = stateOf(1);
    for (let i = 0; i < 3; i++) expect(decideFlood(h, st, i, 0x55, 2, 3, 3)).toBe(false);
    // pte-write is not decided by default for good: built and decided every time.
    for (let i = 0; i < 2; i++) expect(decidePteWrite(h, st, 10 + i, 0x55000, 8, 0, 0, 1, 0, 1, false)).toBe('zap-spte');
    expect(h.asked).toEqual([
      'for good flood on vCPU 1',
      'cell mmu_events.flood of vCPU 1',
      'for good pte-write on vCPU 1',
      'decide pte-write #10',
      'decide pte-write #11',
    ]);
    expect(cells.get('mmu_events.flood')?.n).toBe(3);
  });
});

describe('refilled events (MmuHost.reusesEvents)', () => {
  /**
   * A host whose policies decide every event (a flood: true; a pte-write: 'update-spte'), recording the object it
   * was handed and a copy of its fields at that moment; `reuse` is its answer to reusesEvents (undefined: none).
   * `nested` makes the first decision ask another one of the same kind while it is in flight.
   */
  function host(reuse: boolean | undefined, nested: ((st: VcpuShadowState) => void) | null = null) {
    const seen: { ev: MmuEvent; copy: MmuEvent }[] = [];
    let depth = 0;
    let st: VcpuShadowState | null = null;
    const h: MmuHost = {
      vcpus: [],
      count: () => {},
      decideByDefault: () => false,
      decide: <E extends MmuEvent>(ev: E, fallback: MmuDecisionOf<E>): MmuDecisionOf<E> => {
        seen.push({ ev, copy: { ...ev } });
        if (nested !== null && depth++ === 0) nested(st!);
        return (ev.kind === 'flood' ? true : ev.kind === 'pte-write' ? 'update-spte' : fallback) as MmuDecisionOf<E>;
      },
      ...(reuse === undefined ? {} : { reusesEvents: () => reuse }),
    };
    return { h, seen, bind: (s: VcpuShadowState) => (st = s) };
  }

  it('hands the policies one object per kind, refilled with each decision, while nothing outside the pipeline can keep it', () => {
    const { h, seen } = host(true);
    const st = stateOf(1);
    expect(decideFlood(h, st, 7, 0x10, 2, 3, 1)).toBe(true);
    expect(decideFlood(h, st, 8, 0x11, 1, 4, 2)).toBe(true);
    expect(decidePteWrite(h, st, 9, 0x11008, 8, 1, 2, 3, 4, 1, false)).toBe('update-spte');
    expect(decidePteWrite(h, st, 10, 0x12010, 4, 5, 0, 6, 0, 2, true)).toBe('update-spte');
    // The same flood object twice, and the same pte-write object twice; each decision saw its own fields.
    expect(seen[1]!.ev).toBe(seen[0]!.ev);
    expect(seen[3]!.ev).toBe(seen[2]!.ev);
    expect(seen[2]!.ev).not.toBe(seen[0]!.ev);
    expect(seen.map((s) => s.copy)).toEqual([
      { kind: 'flood', vcpu: 1, seq: 7, decidedBy: null, gfn: 0x10, level: 2, writeCount: 3, vcpuWriteCount: 1, decision: null },
      { kind: 'flood', vcpu: 1, seq: 8, decidedBy: null, gfn: 0x11, level: 1, writeCount: 4, vcpuWriteCount: 2, decision: null },
      {
        kind: 'pte-write',
        vcpu: 1,
        seq: 9,
        decidedBy: null,
        gpa: 0x11008,
        size: 8,
        oldLo: 1,
        oldHi: 2,
        newLo: 3,
        newHi: 4,
        level: 1,
        misaligned: false,
        decision: null,
      },
      {
        kind: 'pte-write',
        vcpu: 1,
        seq: 10,
        decidedBy: null,
        gpa: 0x12010,
        size: 4,
        oldLo: 5,
        oldHi: 0,
        newLo: 6,
        newHi: 0,
        level: 2,
        misaligned: true,
        decision: null,
      },
    ]);
    // decision and decidedBy start at null for every decision, whatever the previous one left in them (a host
    // that sets them, as the VM's pipeline does).
    (seen[0]!.ev as { decision: unknown }).decision = true;
    decideFlood(h, st, 11, 0x12, 2, 5, 3);
    expect(seen[4]!.copy).toMatchObject({ seq: 11, decision: null, decidedBy: null });
  });

  it('builds a new object for each decision when the host may let something keep it, or does not say', () => {
    for (const reuse of [false, undefined]) {
      const { h, seen } = host(reuse);
      const st = stateOf(0);
      decideFlood(h, st, 1, 0x10, 2, 3, 1);
      decideFlood(h, st, 2, 0x10, 2, 4, 1);
      expect(seen[1]!.ev).not.toBe(seen[0]!.ev);
      expect(seen[0]!.ev).toMatchObject({ seq: 1, writeCount: 3 }); // the first is left as it was handed
    }
  });

  it('builds a new object for a decision asked while the refilled one is in the pipeline', () => {
    const t = host(true, (st) => decideFlood(t.h, st, 2, 0x20, 3, 1, 1));
    const st = stateOf(0);
    t.bind(st);
    decideFlood(t.h, st, 1, 0x10, 2, 3, 1);
    // seen[0] the outer event (in flight), seen[1] the nested one: another object, and the outer one untouched.
    expect(t.seen[1]!.ev).not.toBe(t.seen[0]!.ev);
    expect(t.seen[0]!.ev).toMatchObject({ seq: 1, gfn: 0x10 });
    // Once the outer decision is over, the refilled object serves again.
    decideFlood(t.h, st, 3, 0x30, 2, 3, 1);
    expect(t.seen[2]!.ev).toBe(t.seen[0]!.ev);
  });
});
