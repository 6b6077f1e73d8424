import { Machine, type MmuDecisionOf, type MmuEvent, type MmuHost, type StatCell } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { decideFlood, decidePteWrite, detectWriteMisaligned, writtenSptes } from '../src/decisions.js';
import { VcpuShadowState } from '../src/state.js';

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
