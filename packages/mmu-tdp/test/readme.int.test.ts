import { createVm, DirtyLog } from '@vmexit/core';
import vmx from '@vmexit/backend-vmx';
import svm from '@vmexit/backend-svm';
import { runWorkload, WorkloadError } from '@vmexit/guest';
import { describe, expect, it } from 'vitest';
import { tdpMmuModule, type TdpMmu } from '../src/index.js';

/*
 * The README's two examples, as written there: fork-cow on a VM with 2 MiB host pages, then dirty-log-test with
 * the fast page fault on a second, new VM. runWorkload boots the guest kernel on the machine it is given, so a VM
 * runs one workload: on the first VM again, the second boot would write its page tables over the first kernel's
 * memory while the TLB and the TDP MMU still map it (the guest kernel panicked on the direct map, at
 * 0xffff888000001800); runWorkload refuses it instead, naming the problem.
 */
const memory = 16 * 1024 * 1024;
const sources = { backends: { vmx, svm }, mmus: { tdp: tdpMmuModule({ hostPages: '2m' }) }, policies: [] };

describe('README examples', () => {
  it('fork-cow: 8 EPT violations, one per 2 MiB leaf of the 16 MiB guest; a second workload on the same VM is refused', async () => {
    const vm = await createVm({ backend: 'vmx', mmu: 'tdp', memory }, { sources });
    vm.exits$.subscribe(() => vm.mmu!.audit!());
    runWorkload({ workload: 'fork-cow:pages=200,forks=3', memory, machine: vm.machine });
    const c = vm.counters().total;
    expect([c['exits.EPT_VIOLATION'], c.pages_2m]).toEqual([8, 8]);
    const log = new DirtyLog(vm.machine.memory);
    (vm.mmu as TdpMmu).attachDirtyLog(log);
    const again = (): unknown =>
      runWorkload({ workload: 'dirty-log-test:pages=256,iterations=4,harvest=bitmap', memory, machine: vm.machine, dirtyLog: () => log });
    expect(again).toThrow(WorkloadError);
    expect(again).toThrow(/vCPU 0 already has paging on \(CR0\.PG=1\).*one workload per machine/);
  });

  it('dirty-log-test with the fast page fault, on a new VM: 5 harvests, none lost, 253 write faults fixed by the fast path', async () => {
    // Logging is on from the start (every 4 KiB leaf write-protected, MMU-writable kept), 4 iterations of 64 random
    // stores into the 256-page area, a harvest (KVM_GET_DIRTY_LOG, re-protecting what it returns) after each and a
    // final one: 5 harvests, each page that changed since the previous one reported (lost 0). Every store to a page
    // whose leaf is write-protected only for logging is fixed by the fast path (pf_fast): the README's figures.
    const vm = await createVm({ backend: 'vmx', mmu: 'tdp', memory }, { sources });
    const log = new DirtyLog(vm.machine.memory);
    (vm.mmu as TdpMmu).attachDirtyLog(log);
    (vm.mmu as TdpMmu).setFastPageFault(true);
    const out = runWorkload({ workload: 'dirty-log-test:pages=256,iterations=4,harvest=bitmap', memory, machine: vm.machine, dirtyLog: () => log });
    expect(out.result.dirtyLog).toEqual({ mode: 'bitmap', harvests: 5, checked: 601, lost: 0, falseDirty: 0 });
    expect(vm.counters().total.pf_fast).toBe(253);
  });
});
