import { describe, expect, it } from 'vitest';
// @ts-expect-error: a plain ES module of the benchmarks, without types
import { countByFunction, instructionCosts, perfMap } from '../bench/callgrind.mjs';

// A callgrind file as `--dump-instr=yes` writes it (positions: instr line): absolute, relative (+N, -N) and repeated
// (*) addresses, and a call whose inclusive cost line must not count as the caller's own.
const CALLGRIND = `# callgrind format
version: 1
positions: instr line
events: Ir
summary: 1234

ob=(1) /usr/bin/node
fl=(1) ???
fn=(1) 0x1000
0x1000 0 3
+4 0 5
cfn=(2) 0x2000
calls=2 0x2000 0
* 0 1000
+2 0 7
-6 0 1

fn=(2) 0x2000
0x2000 0 11
+1 0 13
fn=(3) 0x9000
0x9000 0 17
`;

// The code map V8 writes with --perf-basic-prof: START SIZE NAME in hex, names with V8's tier marks.
const MAP = `1000 10 JS:*walk4 file:///x/walker.js:1:1
2000 8 JS:^walk4 file:///x/walker.js:1:1
3000 4 Builtin:LoadIC
`;

describe('callgrind reading (bench/instructions.mjs)', () => {
  it('takes each instruction its own cost and leaves out a call line’s inclusive cost', () => {
    const cost = instructionCosts(CALLGRIND);
    // 0x1000: 3 + 1 (the -6 from 0x1006 comes back to it); 0x1004: 5; the call's line at 0x1004 (1000) is the
    // callee's inclusive cost, skipped; 0x1006: 7.
    expect([...cost].sort((a, b) => a[0] - b[0])).toEqual([
      [0x1000, 4],
      [0x1004, 5],
      [0x1006, 7],
      [0x2000, 11],
      [0x2001, 13],
      [0x9000, 17],
    ]);
  });

  it('adds a function’s tiers together and counts what no map entry covers apart', () => {
    const { byFunction, mapped, unmapped } = countByFunction(instructionCosts(CALLGRIND), perfMap(MAP));
    expect(Object.fromEntries(byFunction)).toEqual({ 'JS:walk4 file:///x/walker.js:1:1': 4 + 5 + 7 + 11 + 13 });
    expect(mapped).toBe(40);
    expect(unmapped).toBe(17); // 0x9000 is past every entry
  });

  it('reads the code map sorted by address, whatever the order of its lines', () => {
    const entries = perfMap('3000 4 Builtin:LoadIC\n1000 10 JS:*f x\n\n');
    expect(entries).toEqual([
      { start: 0x1000, size: 0x10, name: 'JS:*f x' },
      { start: 0x3000, size: 4, name: 'Builtin:LoadIC' },
    ]);
  });
});
