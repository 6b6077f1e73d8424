import { describe, expect, it } from 'vitest';
import { runWorkload } from '../src/run.js';
import { WorkloadError } from '../src/workloads/params.js';

const MEM = 16 * 1024 * 1024;

describe('runWorkload', () => {
  it('gives the same memory digest and fault sequence for the same seed', () => {
    const a = runWorkload({ workload: 'random-ws:pages=256,accesses=20000', vcpus: 2, seed: 5, memory: MEM });
    const b = runWorkload({ workload: 'random-ws:pages=256,accesses=20000', vcpus: 2, seed: 5, memory: MEM });
    const c = runWorkload({ workload: 'random-ws:pages=256,accesses=20000', vcpus: 2, seed: 6, memory: MEM });
    expect(a.result.memoryDigest).toBe(b.result.memoryDigest);
    expect([...a.events]).toEqual([...b.events]);
    expect(c.result.memoryDigest).not.toBe(a.result.memoryDigest);
  });

  it('replays kbuild deterministically (seed 7 twice: one digest)', () => {
    const a = runWorkload({ workload: 'kbuild', seed: 7 });
    const b = runWorkload({ workload: 'kbuild', seed: 7 });
    expect(a.result.memoryDigest).toBe(b.result.memoryDigest);
    expect(a.result.guest.trace!.represented).toBe(a.result.guest.accesses);
    expect(a.result.guest.sigsegv).toBe(0);
    expect(a.result.guest.processes).toBeGreaterThan(1);
  });

  it('reports bad input as WorkloadError naming it', () => {
    const bad = (workload: string, extra: object = {}): string => {
      try {
        runWorkload({ workload, memory: MEM, ...extra });
      } catch (e) {
        expect(e).toBeInstanceOf(WorkloadError);
        return (e as Error).message;
      }
      throw new Error('no error');
    };
    expect(bad('nope')).toMatch(/'nope'.*no workload 'nope'/);
    expect(bad('scan:pgs=3')).toMatch(/scan has no parameter 'pgs'/);
    expect(bad('scan:pages=x')).toMatch(/pages=x is not a number/);
    expect(bad('demand-fault:pages=100000')).toMatch(/needs at least .* free pages/);
    expect(bad('scan', { mode: 'legacy32', memory: 4 * 1024 ** 3 })).toMatch(/32-bit paging without PSE-36 cannot address/);
  });
});
