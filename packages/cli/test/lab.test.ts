import { describe, expect, it } from 'vitest';
import { deterministicPart, runVariant } from '@vmexit/lab';
import { captureStdio } from './helpers/stdio.js';
import { main } from '../src/program.js';

const { out } = captureStdio();

// `vmexit run --json` is a shell over @vmexit/lab's runVariant: the same variant, workload, mode and seed give
// the same document (windowed counters, cycles, digest), less what differs from run to run (wall time,
// accesses/s, the start time in provenance).
describe('vmexit run --json and runVariant', () => {
  it.each([
    ['vmx shadow pte-update', ['--backend', 'vmx', '--mmu', 'shadow', '--policy', 'pte-update']],
    ['svm shadow', ['--backend', 'svm', '--mmu', 'shadow']],
    ['native', ['--backend', 'none']],
  ])('%s: the same RunResult', async (spec, flags) => {
    const workload = 'fork-cow:pages=16,forks=1';
    const code = await main(['run', '--workload', workload, '--seed', '3', '--json', ...flags]);
    expect(code).toBe(0);
    const cli = JSON.parse(out.join('')) as Record<string, unknown> & { provenance: { startedAt: string } };
    const lab = await runVariant(spec, workload, { seed: 3 });
    expect(deterministicPart(lab)).toEqual(deterministicPart(cli));
    expect({ ...lab.provenance, startedAt: '' }).toEqual({ ...cli.provenance, startedAt: '' });
    // The windowed counters exclude boot: fewer exits than the VM's counters since creation would show.
    expect(lab.counters.total.exits ?? 0).toBe((cli.counters as { total: Record<string, number> }).total.exits ?? 0);
    expect(Object.keys(lab.provenance.packages)).toContain('@vmexit/core');
  });
});
