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

const WL = 'dirty-log-test:pages=512,iterations=40,writes=64';

describe('vmexit migrate', () => {
  it('prints vmexit.migrate/1 with the rounds and matching digests', async () => {
    expect(
      await main(['migrate', '--workload', WL, '--memory', '16M', '--copy-rate', '1000', '--stop-pages', '0', '--policy', 'fast-page-fault', '--json']),
    ).toBe(0);
    const d = JSON.parse(out) as {
      schema: string;
      rounds: { dirtyPages: number }[];
      digestMatch: boolean;
      source: { memoryDigest: string };
      destination: { memoryDigest: string };
    };
    expect(d.schema).toBe('vmexit.migrate/1');
    expect(d.rounds.map((r) => r.dirtyPages)).toEqual([4096, 503, 186, 113, 62, 4]);
    expect(d.digestMatch).toBe(true);
    expect(d.destination.memoryDigest).toBe(d.source.memoryDigest);
  }, 60_000);

  it('refuses a dirty-log mode it does not have, and a bad round count, with exit 2', async () => {
    expect(await main(['migrate', '--workload', WL, '--dirty-log', 'ring'])).toBe(2);
    expect(err).toContain("--dirty-log: unknown mode 'ring' (expected bitmap, clear; ring and pml are not built yet)");
    expect(await main(['migrate', '--workload', WL, '--max-rounds', 'x'])).toBe(2);
    expect(err).toContain("--max-rounds: expected an integer from 0 to 10000, got 'x'");
  });
});

describe('vmexit explore', () => {
  it('--list names every scenario', async () => {
    expect(await main(['explore', '--list'])).toBe(0);
    for (const s of ['fast-pf-vs-get-dirty-log', 'fast-pf-same-spte', 'fast-pf-vs-zap', 'fault-vs-pte-write']) expect(out).toContain(`${s}\n`);
  });

  it('--json prints vmexit.explore/1: every interleaving of fast-pf-vs-zap with one preemption, no violation', async () => {
    expect(await main(['explore', '--scenario', 'fast-pf-vs-zap', '--preemptions', '1', '--json'])).toBe(0);
    const d = JSON.parse(out) as { schema: string; scenario: string; interleavings: number; violations: number; complete: boolean };
    expect(d).toMatchObject({ schema: 'vmexit.explore/1', scenario: 'fast-pf-vs-zap', violations: 0, complete: true });
    expect(d.interleavings).toBeGreaterThan(1);
  });

  it('refuses an unknown scenario and a bad bound with exit 2', async () => {
    expect(await main(['explore', '--scenario', 'nope'])).toBe(2);
    expect(err).toContain("unknown scenario 'nope'");
    expect(await main(['explore', '--scenario', 'fast-pf-vs-zap', '--preemptions', '9'])).toBe(2);
    expect(await main(['explore'])).toBe(2);
  });
});
