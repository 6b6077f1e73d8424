import { runWorkload, type GuestEventLog } from '@vmexit/guest';
import { describe, expect, it } from 'vitest';
import { runOn } from './vm.js';

// `--check --audit` for policy combinations: every bundled synthetic workload (small parameters) in every
// paging mode, on VMX and SVM, with the MMU audited every 500 exits and at the end, and the guest-visible
// outcome (the faults the guest saw, its final memory digest) equal to a native run's (ARCHITECTURE.md:
// "a guest must not be able to tell that it runs virtualized").

const WORKLOADS = [
  'demand-fault:pages=300',
  'fork-cow:pages=96,forks=2',
  'exec-storm:execs=4',
  'mprotect-storm:pages=8,rounds=6',
  'pt-recycle:dirs=2',
  'scan:pages=256,passes=2',
  'random-ws:pages=256,accesses=6000',
  'zipf:pages=256,accesses=6000',
];
const MODES = ['long4', 'pae', 'legacy32'] as const;
const ALL = ['pte-update', 'bypass-guest-pf', 'unsync', 'write-flood', 'misaligned-write', 'prefetch', 'user-write-hint'];
// Every policy together (VMX; SVM without bypass-guest-pf, which it refuses), and the groups whose
// interplay is subtle. Each policy alone is covered by the scenario tests and mmu-shadow's own tests.
const COMBOS: { backend: 'vmx' | 'svm'; policies: string[] }[] = [
  { backend: 'vmx', policies: ALL },
  { backend: 'svm', policies: ALL.filter((p) => p !== 'bypass-guest-pf') },
  { backend: 'vmx', policies: ['pte-update', 'bypass-guest-pf', 'misaligned-write'] },
  { backend: 'vmx', policies: ['unsync', 'user-write-hint'] },
];
const MEMORY = 16 * 1024 * 1024;

function faults(events: GuestEventLog): unknown {
  return JSON.stringify(events);
}

describe('policies (--check --audit)', () => {
  for (const guestMode of MODES) {
    for (const wl of WORKLOADS) {
      it(`${wl} in ${guestMode}: every combination audits clean and matches the native run`, async () => {
        const native = runWorkload({ workload: wl, mode: guestMode, memory: MEMORY });
        for (const c of COMBOS) {
          const run = await runOn({ backend: c.backend, mmu: 'shadow', guest: { mode: guestMode, personality: 'linux' }, policies: c.policies.map((use) => ({ use })) }, wl, { auditEvery: 500, memory: MEMORY });
          const what = `${c.backend} [${c.policies.join(',')}]`;
          expect(run.out.result.memoryDigest, what).toBe(native.result.memoryDigest);
          expect(run.out.result.guest.faults, what).toEqual(native.result.guest.faults);
          expect(faults(run.out.events), what).toBe(faults(native.events));
        }
      });
    }
  }
  for (const guestMode of ['long4', 'pae'] as const) {
    it(`2 vCPUs in ${guestMode}: every policy together audits clean and matches the native run`, async () => {
      for (const wl of ['random-ws:pages=256,accesses=6000', 'fork-cow:pages=96,forks=2', 'pt-recycle:dirs=2']) {
        const native = runWorkload({ workload: wl, mode: guestMode, memory: MEMORY, vcpus: 2 });
        const run = await runOn({ backend: 'vmx', mmu: 'shadow', vcpus: 2, guest: { mode: guestMode, personality: 'linux' }, policies: ALL.map((use) => ({ use })) }, wl, { auditEvery: 500, memory: MEMORY });
        expect(run.out.result.memoryDigest, wl).toBe(native.result.memoryDigest);
        expect(faults(run.out.events), wl).toBe(faults(native.events));
      }
    });
  }
});
