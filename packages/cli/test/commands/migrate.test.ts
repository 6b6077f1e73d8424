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
    expect(d.rounds.map((r) => r.dirtyPages)).toEqual([4096, 505, 186, 113, 62, 5]);
    expect(d.digestMatch).toBe(true);
    expect(d.destination.memoryDigest).toBe(d.source.memoryDigest);
  }, 60_000);

  it('--dirty-log ring --dirty-ring-size 256: the same rounds, KVM_EXIT_DIRTY_RING_FULL exits in the table, matching digests', async () => {
    expect(
      await main([
        'migrate',
        '--workload',
        WL,
        '--memory',
        '16M',
        '--copy-rate',
        '1000',
        '--stop-pages',
        '0',
        '--dirty-log',
        'ring',
        '--dirty-ring-size',
        '256',
      ]),
    ).toBe(0);
    expect(out).toContain('dirty log: ring');
    expect(out).toContain('dirty ring: 256 entries per vCPU (soft limit 192); 3555 entries harvested; 15 KVM_EXIT_DIRTY_RING_FULL exits');
    expect(out).toMatch(/^destination .* match$/m);
  }, 60_000);

  it('--dirty-log pml on vmx tdp: the pml policy composed, no page lost, the rounds without write-protect exits', async () => {
    expect(await main(['migrate', '--workload', WL, '--backend', 'vmx', '--mmu', 'tdp', '--dirty-log', 'pml', '--json'])).toBe(0);
    const d = JSON.parse(out) as {
      variant: { policies: string[] };
      digestMatch: boolean;
      dirtyLog: string;
      rounds: { dirtyPages: number; counters: Record<string, number> }[];
    };
    expect(d).toMatchObject({ variant: { policies: ['pml'] }, digestMatch: true, dirtyLog: 'pml' });
    // The processor logs 514 pages while round 0's full copy is sent (round 1 harvests them); none of the writes
    // exits, and only the 513th entry finds vCPU 0's 512-entry log full: 1 PML_FULL exit. Round 1 dirties nothing
    // (the end). With write protection (--dirty-log bitmap) round 0 takes 515 EPT violations and round 1 harvests
    // 515 pages, one more than PML logs: the guest kernel's PML4 (gfn 1). The processor sets its EPT dirty flag (and
    // PML logs it) only when a walk reads it (SDM Vol. 3C §29.3.5, §29.3.6). When the task exits, the guest switches
    // to the kernel's tables (CR3 = gfn 1), and the kernel's direct-map reads hit global TLB entries, which a MOV to
    // CR3 keeps (Vol. 3A §4.10.4.1): no walk reads gfn 1. Under write protection those entries are gone: each EPT
    // violation on a direct-map store dropped the combined mappings of its address (Vol. 3C §29.4.3.1), every piece
    // of the guest's huge direct-map page, so the reads walk gfn 1 and fault on it (mmu-tdp test/pml.int.test.ts).
    const per = d.rounds.map((r) => [r.dirtyPages, r.counters['exits.EPT_VIOLATION'] ?? 0, r.counters['exits.PML_FULL'] ?? 0]);
    expect(per).toEqual([
      [65536, 0, 1],
      [514, 0, 0],
    ]);
  }, 60_000);

  it('refuses a dirty-log mode it does not have, a bad ring size, and a bad round count, with exit 2', async () => {
    expect(await main(['migrate', '--workload', WL, '--dirty-log', 'nope'])).toBe(2);
    expect(err).toContain("--dirty-log: unknown mode 'nope' (expected bitmap, clear, ring, pml)");
    expect(await main(['migrate', '--workload', WL, '--backend', 'svm', '--mmu', 'tdp', '--dirty-log', 'pml'])).toBe(2);
    expect(err).toContain("policy 'pml' needs PageModificationLogging");
    expect(err).toContain('SVM has no PML');
    expect(await main(['migrate', '--workload', WL, '--dirty-log', 'ring', '--dirty-ring-size', '128'])).toBe(2);
    expect(err).toContain('--dirty-ring-size: dirty ring: 128 entries (2048 bytes) is smaller than the 64 reserved entries or one 4 KiB page');
    expect(await main(['migrate', '--workload', WL, '--max-rounds', 'x'])).toBe(2);
    expect(err).toContain("--max-rounds: expected an integer from 0 to 10000, got 'x'");
    // A ring size without rings would be ignored; a rate in another notation is named as such.
    expect(await main(['migrate', '--workload', WL, '--dirty-ring-size', '512'])).toBe(2);
    expect(err).toContain('--dirty-ring-size: sizes the rings of --dirty-log ring; this migration harvests with --dirty-log bitmap');
    expect(await main(['migrate', '--workload', WL, '--copy-rate', '1e9'])).toBe(2);
    expect(err).toContain("--copy-rate: expected a positive decimal number (digits and an optional fraction, as 4 or 0.5), got '1e9'");
    // dirty-log-test harvests the log itself, which is the migration's to harvest: refused, with nothing printed.
    const before = out.length;
    expect(await main(['migrate', '--workload', 'dirty-log-test:pages=64,harvest=bitmap', '--backend', 'vmx'])).toBe(2);
    expect(err).toContain(
      "workload 'dirty-log-test:pages=64,harvest=bitmap' harvests the dirty log itself, and migrate harvests it for the migration: migrate another workload, or run this one with vmexit run",
    );
    expect(out.length).toBe(before);
  });
});

describe('vmexit run --workload dirty-log-test:...,harvest=ring', () => {
  const RING = 'dirty-log-test:pages=512,iterations=8,writes=64,harvest=ring,ring=256';
  it('--json reports dirtyLog with no page lost; the table has a dirty log row', async () => {
    expect(await main(['run', '--workload', RING, '--memory', '16M', '--vcpus', '2', '--seed', '1', '--json'])).toBe(0);
    const d = JSON.parse(out) as { dirtyLog: { mode: string; lost: number; falseDirty: number; harvests: number } };
    expect(d.dirtyLog).toMatchObject({ mode: 'ring', harvests: 9, lost: 0, falseDirty: 43 });
    out = '';
    expect(await main(['run', '--workload', RING, '--memory', '16M', '--vcpus', '2', '--seed', '1'])).toBe(0);
    expect(out).toMatch(/dirty log +ring: 9 harvests, 2,?863 page checks, 0 lost, 43 false dirty; rings of 256, 1,?779 entries harvested, 1 full exits/);
  }, 60_000);

  it('natively (no dirty log) and with an unknown mode: exit 2 naming the parameter', async () => {
    expect(await main(['run', '--workload', RING, '--backend', 'none', '--memory', '16M'])).toBe(2);
    expect(err).toContain('harvest=ring needs a VM whose MMU logs dirty pages');
    expect(await main(['run', '--workload', 'dirty-log-test:harvest=sometimes', '--memory', '16M'])).toBe(2);
    expect(err).toContain('parameter harvest=sometimes is not one of none, bitmap, clear, ring, pml');
  });
});

describe('vmexit explore', () => {
  it('--list names every scenario', async () => {
    expect(await main(['explore', '--list'])).toBe(0);
    for (const s of ['fast-pf-vs-get-dirty-log', 'fast-pf-same-spte', 'fast-pf-vs-zap', 'fault-vs-pte-write', 'fast-pf-vs-ring-reset'])
      expect(out).toContain(`${s}\n`);
  });

  it('--json prints vmexit.explore/1: every interleaving of fast-pf-vs-zap with one preemption, no violation', async () => {
    expect(await main(['explore', '--scenario', 'fast-pf-vs-zap', '--preemptions', '1', '--json'])).toBe(0);
    const d = JSON.parse(out) as { schema: string; scenario: string; interleavings: number; violations: number; complete: boolean };
    expect(d).toMatchObject({ schema: 'vmexit.explore/1', scenario: 'fast-pf-vs-zap', violations: 0, complete: true });
    expect(d.interleavings).toBeGreaterThan(1);
  });

  it('--mmu tdp --backend svm runs the TDP MMU scenarios (mmu_lock a reader-writer lock) on NPT', async () => {
    expect(await main(['explore', '--mmu', 'tdp', '--list'])).toBe(0);
    for (const s of ['fast-pf-vs-get-dirty-log', 'fast-pf-same-spte', 'fast-pf-vs-zap', 'fast-pf-vs-ring-reset']) expect(out).toContain(`${s}\n`);
    expect(out).not.toContain('fault-vs-pte-write');
    out = '';
    expect(await main(['explore', '--mmu', 'tdp', '--backend', 'svm', '--scenario', 'fast-pf-same-spte', '--preemptions', '1', '--json'])).toBe(0);
    const d = JSON.parse(out) as Record<string, unknown>;
    expect(d).toMatchObject({ schema: 'vmexit.explore/1', scenario: 'fast-pf-same-spte', mmu: 'tdp', backend: 'svm', violations: 0, complete: true });
    expect(await main(['explore', '--mmu', 'tdp', '--scenario', 'fault-vs-pte-write'])).toBe(2);
    expect(err).toContain("unknown scenario 'fault-vs-pte-write' of the tdp MMU");
  });

  it('refuses an unknown scenario and a bad bound with exit 2', async () => {
    expect(await main(['explore', '--scenario', 'nope'])).toBe(2);
    expect(err).toContain("unknown scenario 'nope'");
    expect(await main(['explore', '--scenario', 'fast-pf-vs-zap', '--preemptions', '9'])).toBe(2);
    expect(await main(['explore'])).toBe(2);
    // The shadow MMU's scenarios have no backend: a --backend would be ignored.
    expect(await main(['explore', '--scenario', 'fast-pf-vs-zap', '--backend', 'svm'])).toBe(2);
    expect(err).toContain('--backend svm: only the tdp scenarios have a backend (EPT or NPT); give --mmu tdp, or leave --backend out');
  });
});
