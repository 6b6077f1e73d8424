import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { captureStdio } from '../helpers/stdio.js';
import { main } from '../../src/program.js';
import { HEADLINE_VARIANTS, REFUSED_ON_SVM, TDP_VARIANTS, WITH_FLOOD, formatConformance, formatHeadline, type MainDocument } from '../../src/commands/main.js';

const { out, err } = captureStdio();

// A small workload instead of kbuild, so that the 14 variant runs take a second or two (the bundled kbuild run is
// test/golden/main.test.ts).
const WL = 'fork-cow:pages=16,forks=1';
/** The conformance vectors under VMX and SVM take most of a run: ~10 s on an idle machine. */
const TIMEOUT = 180_000;

describe('main', () => {
  // One run (the conformance vectors under VMX and SVM are most of its time): `--json`, whose document the
  // text output is made from (`formatConformance` + `formatHeadline`, which is all the text mode prints).
  it(
    '--json prints one document with the conformance counts and the four comparisons; the text is that document formatted',
    async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-main-'));
      const report = path.join(dir, 'report.html');
      const code = await main(['main', '--workload', WL, '--json', '--report', report]);
      expect(code).toBe(0);
      const doc = JSON.parse(out.join('')) as MainDocument;
      // The report charts each run once: 4 + 3 headline shadow variants, 4 + 3 with write-flood, and the two TDP
      // runs = 16 (the +tdp comparisons' first result, the best shadow variant, is one of the 14 already; counted
      // twice it made 18).
      expect(fs.readFileSync(report, 'utf8')).toContain('<p>16 results, 16 variants.</p>');
      fs.rmSync(dir, { recursive: true, force: true });
      expect(doc.schema).toBe('vmexit.main/1');
      expect(Object.keys(doc.conformance)).toEqual(['native', 'vmx shadow', 'svm shadow', 'vmx tdp', 'svm tdp']);
      for (const c of Object.values(doc.conformance)) expect(c.failed).toBe(0);
      expect(Object.keys(doc.comparisons)).toEqual(['vmx', 'svm', 'vmx+write-flood', 'svm+write-flood', 'vmx+tdp', 'svm+tdp']);
      // Two-dimensional paging beside the best shadow variant (by modelled cycles) of the same backend.
      for (const backend of ['vmx', 'svm'] as const) {
        const specs = doc.comparisons[`${backend}+tdp`]!.results.map((r) => r.spec);
        expect(specs).toHaveLength(2);
        expect(specs[0]).toMatch(new RegExp(`^${backend} shadow`));
        expect(specs[1]).toBe(TDP_VARIANTS[backend]);
      }
      expect(doc.comparisons.vmx!.results.map((r) => r.spec)).toEqual(HEADLINE_VARIANTS.vmx);
      expect(doc.comparisons['svm+write-flood']!.results.map((r) => r.spec)).toEqual(WITH_FLOOD.svm);
      // Every variant runs the same workload and seed and leaves the same guest memory.
      const digests = new Set(Object.values(doc.comparisons).flatMap((c) => c.results.map((r) => r.memoryDigest)));
      expect(digests.size).toBe(1);
      // The headline's claims, on this small workload: pte-update removes exits, bypass-guest-pf more (VMX only).
      const exits = doc.comparisons.vmx!.table.find((r) => r.metric === 'vmexits')!;
      expect(exits.values[1]!).toBeLessThan(exits.values[0]!);
      expect(exits.values[2]!).toBeLessThan(exits.values[1]!);
      expect(exits.ratios[2]).toBeCloseTo(exits.values[2]! / exits.values[0]!, 12);
      expect(doc.refusedOnSvm).toMatch(/needs PageFaultFilter/);
      expect(err.join('')).toMatch(/\[vmx 1\/4\] vmx shadow on fork-cow:pages=16,forks=1\.\.\./);

      // The text mode: the conformance counts, the four headline tables and the SVM refusal.
      const text = formatConformance(doc) + formatHeadline(doc);
      expect(text).toMatch(
        /^paging conformance \(\d+ vectors, SDM Vol\. 3A ch\. 4\):\n {2}native {7}\d+ passed, 0 failed\n {2}vmx shadow {3}\d+ passed, 0 failed\n {2}svm shadow {3}\d+ passed, 0 failed\n {2}vmx tdp {6}\d+ passed, 0 failed\n {2}svm tdp {6}\d+ passed, 0 failed\n/,
      );
      const titles = [...text.matchAll(/^(VMX|SVM), shadow paging.*:$/gm)].map((m) => m[0]);
      expect(titles).toEqual([
        'VMX, shadow paging:',
        'SVM, shadow paging:',
        'VMX, shadow paging, with write-flood detection in every variant:',
        'SVM, shadow paging, with write-flood detection in every variant:',
      ]);
      // Each table's header names its variants, in order.
      const heads = text.split('\n').filter((l) => l.startsWith('   ') && !l.trimStart().startsWith('#') && /shadow/.test(l));
      const tdpHeads = (['vmx', 'svm'] as const).map((b) => doc.comparisons[`${b}+tdp`]!.results.map((r) => r.spec));
      expect(heads.map((h) => h.trim().split(/ {2,}/))).toEqual([HEADLINE_VARIANTS.vmx, HEADLINE_VARIANTS.svm, WITH_FLOOD.vmx, WITH_FLOOD.svm, ...tdpHeads]);
      expect(text).toContain('\nVMX, the best shadow variant against two-dimensional paging (EPT):\n');
      expect(text).toContain('\nSVM, the best shadow variant against two-dimensional paging (NPT):\n');
      expect(text).toContain(`${REFUSED_ON_SVM}: refused:\n`);
      expect(text).toMatch(/policy 'bypass-guest-pf' needs PageFaultFilter \(error-code filtering of #PF exits/);
    },
    TIMEOUT,
  );

  it('refuses a bad --mode or --seed with exit 2 before running anything', async () => {
    expect(await main(['main', '--workload', WL, '--mode', 'long6'])).toBe(2);
    expect(err.join('')).toMatch(/--mode: unknown paging mode 'long6' \(expected legacy32, pae, long4, long5\)/);
    err.length = 0;
    expect(await main(['main', '--workload', WL, '--seed', '-1'])).toBe(2);
    expect(err.join('')).toMatch(/--seed: expected an integer from 0 to 4294967295, got '-1'/);
    expect(out.join('')).toBe('');
  });
});
