import { PAGING_MODE_NAMES } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { runWorkload } from '../../src/run.js';
import { SYNTHETIC_WORKLOADS } from '../../src/workloads/synthetic.js';

const SMALL: Record<string, string> = {
  'demand-fault': 'pages=300',
  'fork-cow': 'pages=64,forks=2,write=0.25',
  'exec-storm': 'execs=4',
  'mprotect-storm': 'pages=8,rounds=4,writes=4',
  'pt-recycle': 'dirs=4',
  scan: 'pages=128,passes=2',
  'random-ws': 'pages=128,accesses=3000',
  zipf: 'pages=128,accesses=3000',
  'dirty-log-test': 'pages=64,iterations=4,writes=16',
};

describe('SYNTHETIC_WORKLOADS', () => {
  it('has a small configuration for every workload', () => {
    expect([...SYNTHETIC_WORKLOADS.keys()].sort()).toEqual(Object.keys(SMALL).sort());
  });

  for (const mode of PAGING_MODE_NAMES) {
    it(`runs every workload in ${mode}`, () => {
      for (const [name, params] of Object.entries(SMALL)) {
        const { result: r } = runWorkload({ workload: `${name}:${params}`, mode, memory: 16 * 1024 * 1024, vcpus: 2, seed: 3 });
        expect(r.guest.accesses, name).toBeGreaterThan(0);
        expect(r.guest.faults.total, name).toBeGreaterThan(0);
        if (name !== 'mprotect-storm') expect(r.guest.sigsegv, name).toBe(0);
        expect(r.guest.faults.spurious, name).toBe(0);
      }
    });
  }

  describe('.expectAccesses', () => {
    /** The run's accesses and the total the workload told the progress bar (the last one it reported). */
    const expected = (workload: string, vcpus: number): [number, number | null] => {
      let total: number | null = null;
      const { result: r } = runWorkload({ workload, vcpus, seed: 3, memory: 16 * 1024 * 1024, onProgress: (_n, t) => (total = t) });
      return [r.guest.accesses, total];
    };

    it('gives the progress bar the exact total of every workload but mprotect-storm', () => {
      for (const [name, params] of Object.entries(SMALL)) {
        if (name === 'mprotect-storm') continue;
        for (const vcpus of [1, 3]) {
          const [accesses, total] = expected(`${name}:${params}`, vcpus);
          expect(total, `${name} on ${vcpus} vCPUs`).toBe(accesses);
        }
      }
      // pt-recycle knows its total after the first round's children: later rounds are the same
      const [accesses, total] = expected('pt-recycle:dirs=3,rounds=3', 2);
      expect(total).toBe(accesses);
    });

    it("estimates mprotect-storm's total (its readers run until the writer is done) within 10 % at the defaults", () => {
      for (const vcpus of [1, 2, 4]) {
        const [accesses, total] = expected('mprotect-storm', vcpus);
        expect(Math.abs(total! / accesses - 1), `${vcpus} vCPUs: ${total} for ${accesses}`).toBeLessThan(0.1);
      }
    });
  });

  describe('demand-fault', () => {
    it('takes exactly one demand-zero fault per page', () => {
      const { result: r } = runWorkload({ workload: 'demand-fault:pages=1000', memory: 16 * 1024 * 1024 });
      expect(r.guest.faults).toMatchObject({ total: 1000, 'demand-zero': 1000 });
      // Steady state: the direct map was warmed at boot, so the workload's TLB misses are the user pages
      // and the kernel's page-zeroing of each new page, nothing from the boot.
      expect(r.counters.total.pf_delivered).toBe(1000);
    });
  });

  describe('fork-cow', () => {
    it('takes pages + forks x (written + pages) faults', () => {
      // 64 demand-zero; per child 16 COW copies (write=0.25); after each child exits the parent's 64 pages
      // are read-only with one reference: 64 wp-reuse. 64 + 2 x (16 + 64) = 224.
      const { result: r } = runWorkload({ workload: 'fork-cow:pages=64,forks=2,write=0.25', memory: 16 * 1024 * 1024 });
      expect(r.guest.faults).toMatchObject({ total: 224, 'demand-zero': 64, cow: 32, 'wp-reuse': 128 });
    });
  });

  describe('mprotect-storm', () => {
    it('turns the write after mprotect(PROT_READ) into a SIGSEGV, and the handler makes the page writable again', () => {
      // 8 demand-zero faults. Round 1 makes the 8-page area read-only: 8 ptes lose R/W, the area is
      // flushed page by page: 8 INVLPGs. The round's write takes a SIGSEGV; the handler's mprotect(RW) of
      // that page splits the area in up to 3 and makes its pte writable (an exclusive anonymous page:
      // Linux change_pte_range, can_change_pte_writable), flushed: 1 INVLPG; the write executed again needs
      // no fault. Rounds 2 and 3: mprotect works area by area (Linux `mprotect_fixup` per VMA), and only the
      // one-page area written since has a pte to change: 1 INVLPG, then 1 more for the handler's.
      // INVLPGs: 8 + 1 + 2 + 2 = 13. Faults: 8 + 3 SIGSEGVs = 11.
      const { result: r } = runWorkload({ workload: 'mprotect-storm:pages=8,rounds=3,writes=1', memory: 16 * 1024 * 1024 });
      expect(r.guest.sigsegv).toBe(3);
      expect(r.guest.faults).toMatchObject({ total: 11, 'demand-zero': 8, 'wp-reuse': 0, sigsegv: 3 });
      expect(r.guest.tlb.invlpg).toBe(13);
      expect(r.counters.total.invlpg).toBe(13);
    });
  });

  describe('pt-recycle', () => {
    it('gets the freed page directories back as data pages', () => {
      // The children own at least 6 page directories between them; when they exit, the survivor takes as
      // many data pages as they freed, and the LIFO allocator hands it those very frames: at least 6 data
      // pages were page directories before (more counts the PDs freed when a child's exec dropped its first,
      // empty address space).
      for (const mode of PAGING_MODE_NAMES) {
        const { result: r } = runWorkload({ workload: 'pt-recycle:dirs=6', mode, memory: 16 * 1024 * 1024 });
        expect(r.guest.pageTables.reusedAsData.pd, mode).toBeGreaterThanOrEqual(6);
      }
    });
  });
});
