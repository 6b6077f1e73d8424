import { Machine } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { runWorkload } from '../src/run.js';
import { WorkloadError } from '../src/workloads/params.js';

const MEM = 16 * 1024 * 1024;

describe('runWorkload', () => {
  describe('.machine', () => {
    // runWorkload boots a guest kernel on the machine it is given: the boot loader writes the kernel's tables into
    // RAM with physical writes from frame 1 up, as on a machine just powered on. A second boot on a machine whose
    // vCPUs already run the first kernel (CR0.PG=1) would write them over the first kernel's tables and pages, under
    // TLBs (global direct-map entries survive the new CR3 load) and a hypervisor MMU that still hold what the first
    // kernel mapped: under a VM the new kernel panics, natively it silently runs on corrupted memory. There is no
    // reset of a machine (vCPU INIT, RAM, the MMU), so the second run is refused, naming the problem.
    it('refuses a machine that already ran a workload (its vCPUs have paging on), before anything runs', () => {
      const machine = new Machine({ memoryBytes: MEM, vcpus: 1, seed: 1 });
      const first = runWorkload({ workload: 'demand-fault:pages=16', memory: MEM, machine });
      const digest = first.result.memoryDigest;
      let error: unknown = null;
      try {
        runWorkload({ workload: 'demand-fault:pages=16', memory: MEM, machine });
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(WorkloadError);
      expect((error as WorkloadError).code).toBe('bad-config');
      expect((error as Error).message).toMatch(/vCPU 0 already has paging on \(CR0\.PG=1\): a guest kernel was booted on this machine/);
      expect((error as Error).message).toMatch(/one workload per machine: create a new machine \(or VM\)/);
      expect(machine.memory.digest()).toBe(digest); // refused before the boot wrote anything
      // The same workload on a fresh machine: the digest of the first run (what the second would have had to give).
      expect(
        runWorkload({ workload: 'demand-fault:pages=16', memory: MEM, machine: new Machine({ memoryBytes: MEM, vcpus: 1, seed: 1 }) }).result.memoryDigest,
      ).toBe(digest);
    });
  });
});
