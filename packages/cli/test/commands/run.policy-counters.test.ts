import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { captureStdio } from '../helpers/stdio.js';
import { main } from '../../src/program.js';

// A plugin policy declares the counters that show what it did (FaultPolicy.counters), as the built-in ones do,
// and `vmexit run` shows them in its `policies` row: the CLI knows no policy's counters.

const { out } = captureStdio();
let dir: string;

/** A policy file as a third-party author writes one: plain ESM, binding its policy to TYPES.FaultPolicy. */
const CENSUS = `import { TYPES } from '@vmexit/core';
import { ContainerModule } from 'inversify';
import { tap } from 'rxjs';

// pf-census: counts the #PF exits it sees (and passes them on), and declares that counter, and one it never adds to.
export const pfCensus = {
  name: 'pf-census',
  description: 'counts #PF exits',
  needs: [],
  counters: ['pf_census.pf', 'pf_census.never'],
  exits: (ctx) => tap((exit) => {
    if (exit.kind === 'exception' && exit.vector === 14) ctx.count('pf_census.pf');
  }),
};

export default new ContainerModule(({ bind }) => {
  bind(TYPES.FaultPolicy).toConstantValue(pfCensus);
});
`;

/** A plugin policy that declares no counters. */
const QUIET = `import { TYPES } from '@vmexit/core';
import { ContainerModule } from 'inversify';

export default new ContainerModule(({ bind }) => {
  bind(TYPES.FaultPolicy).toConstantValue({ name: 'quiet', description: 'does nothing', needs: [] });
});
`;

beforeEach(() => {
  // Beside the tests (not in the system's tmp), so that the files' imports resolve from the package's node_modules.
  dir = fs.mkdtempSync(path.join(import.meta.dirname, 'tmp-policy-counters-'));
  fs.writeFileSync(path.join(dir, 'census.mjs'), CENSUS);
  fs.writeFileSync(path.join(dir, 'quiet.mjs'), QUIET);
});

afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('run: the policies row with plugin policies', () => {
  it("shows a plugin policy's declared counters that are nonzero, and - for one that declares none", async () => {
    const census = path.join(dir, 'census.mjs');
    const quiet = path.join(dir, 'quiet.mjs');
    const args = ['run', '--workload', 'demand-fault:pages=50', '--backend', 'vmx', '--mmu', 'shadow', '--memory', '16M'];
    expect(await main([...args, '--policy', `${census},pte-update,${quiet}`, '--json'])).toBe(0);
    const r = JSON.parse(out.join(''));
    expect(r.policyCounters).toEqual([
      { policy: 'pf-census', counters: ['pf_census.pf', 'pf_census.never'] },
      { policy: 'pte-update', counters: ['mmu_pte_updated', 'mmu_events.pte-write'] },
      { policy: 'quiet', counters: [] },
    ]);
    // Every #PF exits on shadow paging without bypass-guest-pf (exception bitmap bit 14 set, PFEC_MASK =
    // PFEC_MATCH = 0: SDM Vol. 3C §25.6.3), and pf-census is first in the chain, so it sees each one: its counter
    // is the #PF exit count, 102 in the steady-state window = 50 injected (pf_guest: the guest's 50 demand
    // faults) + 50 emulated (pf_emulate: the handler's gpte writes to write-protected guest tables) + 2 fixed
    // (pf_fixed). Each emulated write is a pte-write event (mmu_events.pte-write 50 = mmu_pte_write 50); 49 are
    // level-1 gpte writes that pte-update installs (mmu_pte_updated 49), the other one an upper-level entry
    // (mmu_pde_zapped 1), which pte-update leaves to the MMU's default.
    expect(r.counters.total).toMatchObject({
      'exits.EXCEPTION_NMI': 102,
      'pf_census.pf': 102,
      pf_guest: 50,
      pf_emulate: 50,
      pf_fixed: 2,
      mmu_pte_write: 50,
      mmu_pte_updated: 49,
      mmu_pde_zapped: 1,
    });
    expect(r.counters.total['pf_census.never']).toBeUndefined();
    out.length = 0;
    expect(await main([...args, '--policy', `${census},pte-update,${quiet}`])).toBe(0);
    const label = (p: string): string => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    expect(out.join('')).toMatch(
      new RegExp(`^policies +${label(census)}: pf_census\\.pf 102; pte-update: mmu_pte_updated 49, mmu_events\\.pte-write 50; ${label(quiet)}: -$`, 'm'),
    );
  });
});
