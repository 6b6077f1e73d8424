import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROFILE_SERVER } from '@vmexit/core';
import { SYNTHETIC_WORKLOADS } from '@vmexit/guest';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/program.js';

let out = '';
let err = '';
beforeEach(() => {
  out = '';
  err = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => ((out += String(s)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((err += String(s)), true));
  process.exitCode = undefined;
});
afterEach(() => {
  vi.restoreAllMocks();
  process.exitCode = undefined;
});

describe('vmexit workloads', () => {
  it('lists every synthetic workload with each parameter, its range and default, and the traces', async () => {
    expect(await main(['workloads'])).toBe(0);
    expect(out).toContain('demand-fault:pages=N,write=N\n');
    expect(out).toContain('  pages        integer 1..4194304, default 16384: pages to touch\n');
    expect(out).toContain('  write        number 0..1, default 0.5: fraction of the pages each child writes\n');
    expect(out).toContain('kbuild\n');
  });

  it('prints JSON with --json: all of SYNTHETIC_WORKLOADS, then kbuild and .vxt files', async () => {
    expect(await main(['workloads', '--json'])).toBe(0);
    const j = JSON.parse(out) as { workloads: { name: string; params: { name: string; default: number; min: number; max: number }[] }[] };
    expect(j.workloads.map((w) => w.name)).toEqual([...SYNTHETIC_WORKLOADS.keys(), 'kbuild', 'FILE.vxt']);
    for (const w of SYNTHETIC_WORKLOADS.values()) {
      expect(j.workloads.find((x) => x.name === w.name)!.params.map((p) => p.name)).toEqual(Object.keys(w.params));
    }
  });
});

describe('vmexit run --cost-model FILE.json', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmexit-cost-'));
  // Every figure doubled: the modelled cycles of the same run double (modelCycles is linear in each figure).
  const doubled = JSON.parse(JSON.stringify(PROFILE_SERVER), (k, v: unknown) => (k === 'cycles' ? (v as number) * 2 : v)) as Record<string, unknown>;
  writeFileSync(join(dir, 'double.json'), JSON.stringify({ ...doubled, name: 'double' }));

  it('prices the run with the model from the file', async () => {
    expect(await main(['run', '--workload', 'demand-fault:pages=16', '--json'])).toBe(0);
    const base = JSON.parse(out) as { cycles: { profile: string; cycles: number } };
    out = '';
    expect(await main(['run', '--workload', 'demand-fault:pages=16', '--json', '--cost-model', join(dir, 'double.json')])).toBe(0);
    const mine = JSON.parse(out) as { cycles: { profile: string; cycles: number }; variant: { costModel: string } };
    expect(base.cycles.profile).toBe('server-2020s');
    expect(mine.cycles.profile).toBe('double');
    expect(mine.variant.costModel).toBe('double');
    expect(mine.cycles.cycles).toBe(2 * base.cycles.cycles);
  });

  it('exits 2 naming the file and the path of each bad field', async () => {
    const bad = { ...doubled, exitRoundTrip: { ...(doubled.exitRoundTrip as object), exception: { cycles: -1, basis: 'guess', source: 'x' } } };
    writeFileSync(join(dir, 'bad.json'), JSON.stringify(bad));
    expect(await main(['run', '--workload', 'demand-fault:pages=16', '--cost-model', join(dir, 'bad.json')])).toBe(2);
    expect(err).toContain(`--cost-model ${join(dir, 'bad.json')}: not a cost model:`);
    expect(err).toContain('  exitRoundTrip.exception.cycles: ');
    expect(err).toContain('  exitRoundTrip.exception.basis: ');
    expect(out).toBe('');
    err = '';
    expect(await main(['run', '--workload', 'demand-fault:pages=16', '--cost-model', join(dir, 'none.json')])).toBe(2);
    expect(err).toContain('none.json: no such file');
  });

  it('exits 2 with one line naming an unknown handler key, or a figure over 1e9 cycles (run, compare, policies)', async () => {
    const handler = doubled.handler as Record<string, unknown>;
    writeFileSync(join(dir, 'key.json'), JSON.stringify({ ...doubled, handler: { ...handler, bogus: handler.pf_fixed } }));
    writeFileSync(join(dir, 'huge.json'), JSON.stringify({ ...doubled, guestFault: { ...(doubled.guestFault as object), cycles: 1e308 } }));
    const key = `--cost-model ${join(dir, 'key.json')}: not a cost model: handler.bogus: unknown key (expected pf_fixed, pf_guest, insn_emulation)`;
    const huge = `--cost-model ${join(dir, 'huge.json')}: not a cost model: guestFault.cycles: 1e+308 cycles is over the limit of 1e9 cycles per event`;
    for (const [argv, msg] of [
      [['run', '--workload', 'demand-fault:pages=16', '--backend', 'vmx', '--cost-model', join(dir, 'key.json')], key],
      [['run', '--workload', 'demand-fault:pages=16', '--backend', 'vmx', '--json', '--cost-model', join(dir, 'huge.json')], huge],
      [['compare', '--workload', 'demand-fault:pages=16', '--variant', 'vmx', '--cost-model', join(dir, 'huge.json')], `--variant "vmx": ${huge}`],
      [['policies', '--cost-model', join(dir, 'key.json')], key],
    ] as const) {
      err = '';
      expect(await main([...argv])).toBe(2);
      expect(err).toBe(`vmexit: ${msg}\n`);
      expect(out).toBe('');
    }
  });

  it('exits 2 naming the value of a --cost-model that is neither a built-in name nor a .json file', async () => {
    for (const name of ['bogus', '', dir, '/etc/passwd', 'toString']) {
      err = '';
      expect(await main(['run', '--workload', 'demand-fault:pages=16', '--backend', 'vmx', '--cost-model', name])).toBe(2);
      expect(err).toBe(
        `vmexit: --cost-model: unknown cost model '${name}' (expected one of core2-2007, server-2020s, cloud-vm-measured, or a custom model's .json file)\n`,
      );
    }
    err = '';
    expect(await main(['policies', '--cost-model', 'bogus'])).toBe(2);
    expect(err).toBe(
      `vmexit: --cost-model: unknown cost model 'bogus' (expected one of core2-2007, server-2020s, cloud-vm-measured, or a custom model's .json file)\n`,
    );
    expect(out).toBe('');
  });
});
