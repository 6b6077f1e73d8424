import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { captureStdio } from '../helpers/stdio.js';
import { main } from '../../src/program.js';

// `vmexit run` on variants that come from outside the flags' defaults: a third-party policy package found by
// name in node_modules, --config files (.json and .mjs) with policies and options, and variants that cannot
// be composed (exit 2, one line per problem). Every run is on the real VMX or SVM backend and shadow MMU.

const FIXTURE = path.resolve(import.meta.dirname, '../fixtures/third-party-policy');

const { out, err } = captureStdio();
let dir: string;
const cwd = process.cwd();

beforeEach(() => {
  // A project directory that installed the fixture package (as `npm install vmexit-policy-fixture` would
  // link it): the CLI runs from there.
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-run-variants-'));
  fs.mkdirSync(path.join(dir, 'node_modules'));
  fs.symlinkSync(FIXTURE, path.join(dir, 'node_modules', 'vmexit-policy-fixture'));
  process.chdir(dir);
});

afterEach(() => {
  process.chdir(cwd);
  fs.rmSync(dir, { recursive: true, force: true });
});

type Totals = Record<string, number>;

async function runJson(
  args: string[],
): Promise<{ variant: Record<string, unknown>; counters: { total: Totals; vcpus: Totals[] }; memoryDigest: string; guest: { faults: { total: number } } }> {
  out.length = 0;
  const code = await main(['run', ...args, '--json']);
  expect(err.join('')).toBe('');
  expect(code).toBe(0);
  return JSON.parse(out.join('')) as never;
}

/** The `<prefix>.<REASON>` counters of `t`, as `<REASON>` -> n (zeros left out). */
function census(t: Totals, prefix: string): Totals {
  return Object.fromEntries(Object.entries(t).flatMap(([k, n]) => (k.startsWith(`${prefix}.`) && n > 0 ? [[k.slice(prefix.length + 1), n]] : [])));
}

/** The `exits.<REASON>` counters of `t` (not `exits.kind.*`), zeros left out. */
function exitsByReason(t: Totals): Totals {
  return Object.fromEntries(Object.entries(t).flatMap(([k, n]) => (k.startsWith('exits.') && !k.startsWith('exits.kind.') && n > 0 ? [[k.slice(6), n]] : [])));
}

describe('run', () => {
  describe('--policy <package name>', () => {
    it('loads a third-party policy package from node_modules, and it runs on real VMX shadow paging', async () => {
      const args = ['--workload', 'demand-fault:pages=20', '--memory', '16M'];
      const r = await runJson(['--policy', 'vmexit-policy-fixture', ...args]);
      expect(r.variant).toMatchObject({ backend: 'vmx', mmu: 'shadow', policies: ['vmexit-policy-fixture'] });
      // 3 exits per steady-state demand fault, and the first fault also builds the level-1 shadow page: 3N+1
      // (see run.test.ts). The fixture counted each exit by reason before passing it on.
      expect(r.counters.total.exits).toBe(3 * 20 + 1);
      expect(census(r.counters.total, 'census')).toEqual({ EXCEPTION_NMI: 61 });
      expect(census(r.counters.total, 'census')).toEqual(exitsByReason(r.counters.total));
      // Passing every exit on changes nothing the MMU does or the guest sees: same counters, same memory.
      const plain = await runJson(args);
      const withoutCensus = Object.fromEntries(Object.entries(r.counters.total).filter(([k]) => !k.startsWith('census.')));
      expect(withoutCensus).toEqual(plain.counters.total);
      expect(r.memoryDigest).toBe(plain.memoryDigest);
    });
  });

  describe('--config', () => {
    it('runs a vmexit.config.json variant with policies and options', async () => {
      fs.writeFileSync(
        'vmexit.config.json',
        JSON.stringify({
          backend: 'vmx',
          mmu: 'shadow',
          memory: '16M',
          policies: [{ use: 'pte-update' }, { use: 'vmexit-policy-fixture', options: { prefix: 'seen' } }],
        }),
      );
      const r = await runJson(['--config', 'vmexit.config.json', '--workload', 'demand-fault:pages=20']);
      expect(r.variant).toMatchObject({
        backend: 'vmx',
        mmu: 'shadow',
        memory: 16 * 2 ** 20,
        policies: ['pte-update', { use: 'vmexit-policy-fixture', options: { prefix: 'seen' } }],
      });
      // pte-update: the emulated store of the new gpte installs the spte, so the re-executed write hits: 2
      // exits per steady-state fault instead of 3 (scenarios.int.test.ts in policies walks through them). The
      // first fault's gpte store is not an update (mmu_pte_updated is 19 of 20 writes), so its retry exits
      // once more; with the +1 of the first shadow page: 2N + 2.
      expect(r.counters.total).toMatchObject({ exits: 2 * 20 + 2, mmu_pte_write: 20, mmu_pte_updated: 19 });
      // The option reached the fixture: its counters carry the prefix from the config.
      expect(census(r.counters.total, 'seen')).toEqual({ EXCEPTION_NMI: 42 });
      expect(census(r.counters.total, 'census')).toEqual({});
    });

    it('runs a vmexit.config.mjs variant (a function as the default export) on SVM with 2 vCPUs', async () => {
      fs.writeFileSync(
        'vmexit.config.mjs',
        "export default () => ({ backend: 'svm', mmu: 'shadow', vcpus: 2, memory: '16M', policies: [{ use: 'write-flood', options: { threshold: 1 } }, { use: 'vmexit-policy-fixture' }] });\n",
      );
      const r = await runJson(['--config', 'vmexit.config.mjs', '--workload', 'fork-cow:pages=16,forks=2']);
      expect(r.variant).toMatchObject({
        backend: 'svm',
        mmu: 'shadow',
        vcpus: 2,
        policies: [{ use: 'write-flood', options: { threshold: 1 } }, 'vmexit-policy-fixture'],
      });
      expect(r.counters.vcpus).toHaveLength(2);
      // SVM names its exits by exit code; the fixture counted each, per vCPU as the VM does.
      expect(Object.keys(exitsByReason(r.counters.total)).every((k) => k.startsWith('VMEXIT_'))).toBe(true);
      for (const v of r.counters.vcpus) expect(census(v, 'census')).toEqual(exitsByReason(v));
      // The option reached write-flood: a page counts as flooded after 1 emulated write instead of the
      // default 3, so more shadow pages are flooded and zapped than in the same run with the default.
      fs.writeFileSync('flood3.mjs', "export default { backend: 'svm', mmu: 'shadow', vcpus: 2, memory: '16M', policies: [{ use: 'write-flood' }] };\n");
      const r3 = await runJson(['--config', 'flood3.mjs', '--workload', 'fork-cow:pages=16,forks=2']);
      expect([r.counters.total.mmu_flooded, r3.counters.total.mmu_flooded]).toEqual([10, 3]);
    });
  });

  describe('a variant that cannot be composed', () => {
    it('refuses bypass-guest-pf on SVM: exit 2, naming the policy, error-code filtering and the backend', async () => {
      const code = await main(['run', '--backend', 'svm', '--mmu', 'shadow', '--policy', 'bypass-guest-pf', '--workload', 'demand-fault:pages=4']);
      expect(code).toBe(2);
      expect(err.join('')).toBe(
        "vmexit: invalid variant:\n  policies.0.use: policy 'bypass-guest-pf' needs PageFaultFilter (error-code filtering of #PF exits (VMX PFEC_MASK/PFEC_MATCH)), which backend 'svm' does not provide\n",
      );
      expect(out.join('')).toBe('');
    });

    it('reports every problem of a --config in one run: unknown key, unknown package, capability', async () => {
      fs.writeFileSync('bad.json', JSON.stringify({ backend: 'svm', colour: 'red', policies: [{ use: 'bypass-guest-pf' }, { use: 'no-such-vmexit-policy' }] }));
      expect(await main(['run', '--config', 'bad.json', '--workload', 'demand-fault:pages=4'])).toBe(2);
      const lines = err.join('').split('\n');
      expect(lines[0]).toBe('vmexit: invalid variant (bad.json):');
      expect(lines.slice(1, -1).map((l) => l.trim().split(':')[0])).toEqual(['colour', 'policies.0.use', 'policies.1.use']);
      expect(lines[3]).toContain("unknown policy or package 'no-such-vmexit-policy'");
      expect(out.join('')).toBe('');
    });

    it('--mmu tdp: runs on two-dimensional paging, on VMX and SVM; the guest takes its own #PFs, the memory is the same as on shadow paging', async () => {
      const args = ['--workload', 'demand-fault:pages=20', '--memory', '16M'];
      for (const backend of ['vmx', 'svm']) {
        const r = await runJson(['--backend', backend, '--mmu', 'tdp', '--check', '--audit', ...args]);
        expect(r.variant).toMatchObject({ backend, mmu: 'tdp' });
        // The window (the 20 touches after the boot's direct-map warm-up) has no exit: every guest frame was
        // mapped at the hardware's first touch of it during boot (mmu-tdp's demand-fault test walks through
        // those EPT violations / #NPFs), and the 20 #PFs go to the guest without an exit.
        expect(r.counters.total.exits).toBe(0);
        expect(r.guest.faults.total).toBe(20);
        const shadow = await runJson(['--backend', backend, ...args]);
        expect(shadow.counters.total.exits).toBe(3 * 20 + 1);
        expect(r.memoryDigest).toBe(shadow.memoryDigest);
      }
    });

    it.each(['tdp', 'shadow'])('--backend none --mmu %s: exit 2, an MMU needs a hypervisor', async (mmu) => {
      expect(await main(['run', '--backend', 'none', '--mmu', mmu, '--workload', 'demand-fault:pages=4'])).toBe(2);
      expect(err.join('')).toBe(
        `vmexit: invalid variant:\n  mmu: mmu '${mmu}' needs a hypervisor below it, and backend is 'none' (native): leave mmu out, or name backend vmx or svm\n`,
      );
    });

    it('--help names both MMUs', async () => {
      expect(await main(['run', '--help'])).toBe(0);
      expect(out.join('').replace(/\s+/g, ' ')).toContain(
        '--mmu <name> the MMU: shadow (shadow paging) or tdp (two-dimensional paging: EPT on VMX, NPT on SVM); not with --backend none',
      );
    });
  });
});
