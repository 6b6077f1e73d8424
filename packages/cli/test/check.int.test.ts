import { PFERR_WRITE, type ModuleSources } from '@vmexit/core';
import { ShadowMmu } from '@vmexit/mmu-shadow';
import { describe, expect, it } from 'vitest';
import { parseVariantSpec } from '../src/commands/compare.js';
import { checkFailure, runChecked } from '@vmexit/lab';
import { DropsWriteProtectMmu, WrongErrorCodeMmu, sourcesWith } from './helpers/broken-mmu.js';

const FORK_COW = 'fork-cow:pages=24,forks=2,write=0.25';

async function check(backend: 'vmx' | 'svm', workload: string, sources?: ModuleSources) {
  const variant = await parseVariantSpec(`${backend} shadow`, { vcpus: '1', memory: String(16 * 1024 * 1024) });
  return runChecked({ workload, mode: 'long4', seed: 5, personalities: [], variant, sources });
}

describe('runChecked (--check)', () => {
  // The workloads of the broken-MMU cases below, run under the real MMU: what they catch is the broken rule's.
  it.each(['mprotect-storm:pages=24,rounds=4,writes=6', FORK_COW])(
    'passes the real shadow MMU on %s, given as module sources, with no allowed difference',
    async (workload) => {
      const { check: c } = await check(
        'vmx',
        workload,
        sourcesWith(() => new ShadowMmu()),
      );
      expect(c).toMatchObject({ ok: true, divergence: null, first: null, allowed: [] });
      expect(c.compared.faults).toBeGreaterThan(0);
    },
  );

  it.each(['vmx', 'svm'] as const)('fails on %s when the MMU drops a pte update, naming the first #PF the guest did not get', async (backend) => {
    // fork write-protects each writable pte of the parent with one store that clears W (mm/memory.c
    // copy_present_pte -> ptep_set_wrprotect: an emulated write the broken hook ignores, so the parent's
    // sptes stay writable) and flushes the parent's TLB. The child writes a quarter of the pages (COW copies:
    // its own sptes are built from its read-only ptes) and exits; then the parent writes every page: natively
    // its first write faults (P|W|U = 7, a write-protect fault reused in place), under the broken MMU it goes
    // through the stale writable spte: the guest's sequences part at that event.
    // (Not mprotect: change_pte_range stores each pte twice, 0 then the new value, and the second store, which
    // does not take W away, brings the spte in line: the dropped store is masked.)
    const { check: c } = await check(
      backend,
      FORK_COW,
      sourcesWith(() => new DropsWriteProtectMmu()),
    );
    expect(c.ok).toBe(false);
    expect(c.first).toMatchObject({ what: 'event', native: { errorCode: 7 } });
    if (c.first?.what !== 'event') throw new Error('expected an event difference');
    expect(c.divergence).toMatch(
      new RegExp(
        `^guest event #${c.first.nativeIndex}(?: \\(#${c.first.variantIndex} under the variant\\))?: natively .*#PF at 0x[0-9a-f]+ error code 7 on vCPU 0 `,
      ),
    );
    const failure = checkFailure(c);
    expect(failure.exitCode).toBe(1); // a run that completed and found a divergence (errors.ts)
    expect(failure.message).toContain(`--check: the guest can tell it runs virtualized: guest event #${c.first.nativeIndex}`);
  });

  it('fails when the MMU injects a wrong error code: the first read fault differs', async () => {
    const { check: c } = await check(
      'svm',
      'random-ws:pages=64,accesses=400',
      sourcesWith(() => new WrongErrorCodeMmu()),
    );
    expect(c.ok).toBe(false);
    if (c.first?.what !== 'event') throw new Error('expected an event difference');
    // Under shadow paging on SVM every guest #PF is injected by the MMU: the write faults before the first
    // read fault are right, the first read fault arrives as a write's (the guest then maps a writable page
    // where natively it maps the zero page).
    expect(c.first.nativeIndex).toBe(c.first.variantIndex);
    expect(c.first.native!.errorCode & PFERR_WRITE).toBe(0);
    expect(c.first.variant!.errorCode).toBe(c.first.native!.errorCode | PFERR_WRITE);
    expect(c.first.variant!.address).toBe(c.first.native!.address);
    expect(c.divergence).toMatch(
      /^guest event #\d+: natively #PF at 0x[0-9a-f]+ error code \d+ on vCPU 0 \(pid \d+, [a-z-]+\), under the variant #PF at 0x[0-9a-f]+ error code \d+ on vCPU 0/,
    );
  });
});
