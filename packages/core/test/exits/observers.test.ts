import { describe, expect, it } from 'vitest';
import type { PteWriteEvent } from '../../src/exits/mmu-events.js';
import { JsonLinesTracer } from '../../src/exits/observers.js';

describe('JsonLinesTracer', () => {
  describe('.traceWindow', () => {
    it('writes one window line per end of the measured window', () => {
      const lines: string[] = [];
      const t = new JsonLinesTracer((l) => lines.push(l));
      t.traceWindow('start');
      t.traceWindow('end');
      expect(lines).toEqual(['{"type":"window","phase":"start"}\n', '{"type":"window","phase":"end"}\n']);
    });
  });

  describe('.traceMmuEvent', () => {
    it('writes the old and new pte of a pte write exactly, as unsigned hex', () => {
      const lines: string[] = [];
      const ev: PteWriteEvent = {
        kind: 'pte-write',
        vcpu: 0,
        seq: 3,
        gpa: 0x5008,
        size: 8,
        oldLo: 0xfffff001,
        oldHi: 0xffffffff,
        newLo: 0x7067,
        newHi: 0x80000000,
        level: 1,
        misaligned: false,
        decision: 'update-spte',
        decidedBy: 'pte-update',
      };
      new JsonLinesTracer((l) => lines.push(l)).traceMmuEvent(ev);
      expect(JSON.parse(lines[0]!)).toEqual({
        type: 'mmu',
        vcpu: 0,
        seq: 3,
        kind: 'pte-write',
        gpa: '0x5008',
        size: 8,
        level: 1,
        misaligned: false,
        old: '0xfffffffffffff001',
        new: '0x8000000000007067',
        decision: 'update-spte',
        decidedBy: 'pte-update',
      });
    });
  });
});
