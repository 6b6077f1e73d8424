import { describe, expect, it } from 'vitest';
import { describeVxt } from '../../src/trace/describe.js';
import type { VxtProcess, VxtTrace } from '../../src/trace/types.js';

/** A trace of processes without access records (the tree is all that `describeVxt` draws from them). */
function processesOnly(processes: VxtProcess[]): VxtTrace {
  return {
    collapse: 'class',
    source: { tool: 'test', command: 'x' },
    accesses: { length: 0, kind: new Uint8Array(0), page: new Float64Array(0), count: new Uint32Array(0) },
    processes,
  };
}

/** pid 1 forks pid 2, which forks pid 3, ... down to pid n: a chain n deep. */
function chain(n: number): VxtTrace {
  const ps: VxtProcess[] = [];
  for (let pid = 1; pid <= n; pid++) {
    const events: VxtProcess['events'][number][] = [];
    if (pid < n) events.push({ type: 'fork', at: 0, parent: pid, child: pid + 1 });
    events.push({ type: 'exit', at: 0, pid, status: 0, signal: null });
    ps.push({ pid, parent: pid === 1 ? 0 : pid - 1, recordStart: 0, recordEnd: 0, events });
  }
  return processesOnly(ps);
}

describe('describeVxt', () => {
  describe('.tree', () => {
    it('draws parents before their children, each child under its parent in list order', () => {
      // 1 forks 2 and 3; 2 forks 4; pid 9's parent 8 is not in the trace, so 9 is drawn as a root.
      const t = processesOnly([
        { pid: 1, parent: 0, recordStart: 0, recordEnd: 0, events: [] },
        { pid: 2, parent: 1, recordStart: 0, recordEnd: 0, events: [] },
        { pid: 3, parent: 1, recordStart: 0, recordEnd: 0, events: [] },
        { pid: 4, parent: 2, recordStart: 0, recordEnd: 0, events: [] },
        { pid: 9, parent: 8, recordStart: 0, recordEnd: 0, events: [] },
      ]);
      expect(describeVxt(t).tree).toEqual([
        '1 (fork, no exec): 0 accesses, 0 records',
        '  2 (fork, no exec): 0 accesses, 0 records',
        '    4 (fork, no exec): 0 accesses, 0 records',
        '  3 (fork, no exec): 0 accesses, 0 records',
        '9 (fork, no exec): 0 accesses, 0 records',
      ]);
    });

    it('counts vforks among the forks and marks a vforked child in the tree', () => {
      // 1 vforks 2 (which execs /bin/cc1) and forks 3
      const t = processesOnly([
        {
          pid: 1,
          parent: 0,
          recordStart: 0,
          recordEnd: 0,
          events: [
            { type: 'fork', at: 0, parent: 1, child: 2, vfork: true },
            { type: 'fork', at: 0, parent: 1, child: 3 },
          ],
        },
        { pid: 2, parent: 1, recordStart: 0, recordEnd: 0, events: [{ type: 'exec', at: 0, pid: 2, path: '/bin/cc1', mappings: [] }] },
        { pid: 3, parent: 1, recordStart: 0, recordEnd: 0, events: [] },
      ]);
      const d = describeVxt(t);
      expect(d.events).toMatchObject({ fork: 2, vfork: 1, exec: 1 });
      expect(d.tree).toEqual([
        '1 (fork, no exec): 0 accesses, 0 records',
        '  2 (vfork) /bin/cc1: 0 accesses, 0 records',
        '  3 (fork, no exec): 0 accesses, 0 records',
      ]);
    });

    it('draws a process chain 100000 deep (it recursed once per level and overflowed the stack at about 8000)', () => {
      // `vmexit trace info` on such a trace (decodeVxt accepts it: each process forked by its parent) ended
      // in "internal error: RangeError: Maximum call stack size exceeded" and a stack trace. Indented in
      // full, its lines would take 2 * (0 + 1 + ... + 99999) = 10^10 characters ("Invalid string length"):
      // below TREE_INDENT_LEVELS (32) a line is indented 32 levels and says its depth.
      const tree = describeVxt(chain(100000)).tree;
      expect(tree.length).toBe(100000);
      expect(tree[0]).toBe('1 (fork, no exec): 0 accesses, 0 records');
      expect(tree[32]).toBe(`${'  '.repeat(32)}33 (fork, no exec): 0 accesses, 0 records`);
      expect(tree[33]).toBe(`${'  '.repeat(32)}(depth 33) 34 (fork, no exec): 0 accesses, 0 records`);
      expect(tree[99999]).toBe(`${'  '.repeat(32)}(depth 99999) 100000 (fork, no exec): 0 accesses, 0 records`);
    });

    it('draws 100000 sibling roots in linear time (it scanned every process per process: minutes)', () => {
      const ps: VxtProcess[] = [];
      for (let pid = 1; pid <= 100000; pid++) ps.push({ pid, parent: 0, recordStart: 0, recordEnd: 0, events: [] });
      const tree = describeVxt(processesOnly(ps)).tree;
      expect(tree.length).toBe(100000);
      expect(tree[99999]).toBe('100000 (fork, no exec): 0 accesses, 0 records');
    }, 10_000);
  });
});
