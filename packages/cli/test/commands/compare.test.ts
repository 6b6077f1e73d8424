import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { captureStdio } from '../helpers/stdio.js';
import { main } from '../../src/program.js';
import { deterministicPart } from '@vmexit/lab';
import { formatComparison, type ComparisonDocument } from '../../src/commands/compare.js';

const { out, err } = captureStdio();

const WL = ['--workload', 'demand-fault:pages=64', '--memory', '4M'];

/** The table's cells: the header row's labels, and each row's label and cells (split on two or more spaces). */
function parseTable(text: string): { head: string[]; rows: Map<string, string[]> } {
  const lines = text
    .split('\n')
    .slice(1)
    .filter((l) => l.length > 0 && !l.startsWith('check:'));
  const head = lines[0]!.trim().split(/ {2,}/);
  const rows = new Map<string, string[]>();
  for (const l of lines.slice(1)) {
    const cells = l.trimStart().split(/ {2,}/);
    rows.set(cells[0]!.trim(), cells.slice(1));
  }
  return { head, rows };
}

async function compareJson(...variants: string[]): Promise<ComparisonDocument> {
  const code = await main(['compare', ...WL, ...variants.flatMap((v) => ['--variant', v]), '--json']);
  expect(err.join('')).toBe('');
  expect(code).toBe(0);
  return JSON.parse(out.join('')) as ComparisonDocument;
}

describe('compare', () => {
  describe('the table', () => {
    it('has a column per variant and a row per metric, each value with its ratio to the first variant', async () => {
      const code = await main(['compare', ...WL, '--variant', 'vmx shadow', '--variant', 'vmx shadow pte-update']);
      expect(code).toBe(0);
      const text = out.join('');
      expect(text.split('\n')[0]).toBe('workload demand-fault:pages=64, mode long4, seed 1; ratios are to the first variant');
      const { head, rows } = parseTable(text);
      expect(head).toEqual(['vmx shadow', 'vmx shadow pte-update']);
      expect([...rows.keys()]).toEqual([
        'guest faults',
        'vmexits',
        '#PF (intercepted exception)',
        'vmexits by exit reason',
        'vmx EXCEPTION_NMI',
        'share of exits',
        'cycles (modelled)',
        'exits per guest fault',
        'faults fixed (pf_fixed)',
        'faults injected (pf_guest)',
        'emulated writes',
        'shadow pages zapped',
        'TLB flushes',
        'modelled cycles',
      ]);
      // Every value cell of the second column is "value (xRATIO)" with RATIO = value / first value.
      for (const [label, cells] of rows) {
        if (label === 'vmexits by exit reason') continue;
        if (label === 'share of exits') {
          // A share has no ratio: the one exit reason is every exit.
          expect(cells).toEqual(['100.0%', '100.0%']);
          continue;
        }
        const first = Number(cells[0]!.replace(/,/g, ''));
        const m = /^([\d,.]+) \(x([\d.]+)\)$/.exec(cells[1]!);
        expect(m, `${label}: ${cells[1]}`).not.toBeNull();
        const second = Number(m![1]!.replace(/,/g, ''));
        expect(m![2], label).toBe(first === 0 ? '1.00' : (second / first).toFixed(2));
      }
      // 64 demand faults: pte-update saves the re-fault of each, but the first: its guest page table is not
      // shadowed yet when the guest writes the pte, so that store does not exit and nothing is updated.
      expect(rows.get('guest faults')).toEqual(['64', '64 (x1.00)']);
      const nmi = rows.get('vmx EXCEPTION_NMI')!.map((c) => Number(c.split(' ')[0]!.replace(/,/g, '')));
      expect(nmi[0]! - nmi[1]!).toBe(63);
    });

    it('compares VMX with SVM under common exit names, and shows - for a reason the other backend does not have', async () => {
      // fork-cow: #PFs, CR3 loads (context switches) and INVLPGs (the COW breaks), counted after boot.
      const code = await main([
        'compare',
        '--workload',
        'fork-cow:pages=16,forks=1',
        '--memory',
        '4M',
        '--variant',
        'vmx shadow',
        '--variant',
        'svm shadow',
        '--variant',
        'native',
      ]);
      expect(code).toBe(0);
      const { head, rows } = parseTable(out.join(''));
      expect(head).toEqual(['vmx shadow', 'svm shadow', 'native']);
      // The same guest events exit on both (SVM intercepts every #PF, VMX with PFEC_MASK = 0 too): equal counts.
      const pf = rows.get('#PF (intercepted exception)')!;
      expect(pf[1]).toBe(`${pf[0]} (x1.00)`);
      expect(pf[2]).toBe('0 (x0.00)');
      expect(rows.get('vmx EXCEPTION_NMI')).toEqual([pf[0], '-', '-']);
      expect(rows.get('svm VMEXIT_EXCP14')).toEqual(['-', pf[0], '-']);
      for (const [common, vmx, svm] of [
        ['CR / EFER write', 'vmx CR_ACCESS', 'svm VMEXIT_CR3_WRITE'],
        ['INVLPG', 'vmx INVLPG', 'svm VMEXIT_INVLPG'],
      ]) {
        const n = rows.get(common!)![0]!;
        expect(Number(n)).toBeGreaterThan(0);
        expect(rows.get(common!)).toEqual([n, `${n} (x1.00)`, '0 (x0.00)']);
        expect(rows.get(vmx!)).toEqual([n, '-', '-']);
        expect(rows.get(svm!)).toEqual(['-', n, '-']);
      }
      expect(out.join('')).not.toMatch(/x-|x0\.00\).*-/);
    });
  });

  describe('--json', () => {
    it('prints the results and the table with its ratios', async () => {
      const doc = await compareJson('vmx shadow', 'vmx shadow pte-update,bypass-guest-pf', 'svm shadow');
      expect(doc.schema).toBe('vmexit.compare/1');
      expect(doc).toMatchObject({ workload: 'demand-fault:pages=64', mode: 'long4', seed: 1 });
      expect(doc.results.map((r) => [r.label, r.spec])).toEqual([
        ['vmx shadow', 'vmx shadow'],
        ['vmx shadow pte-update,bypass-guest-pf', 'vmx shadow pte-update,bypass-guest-pf'],
        ['svm shadow', 'svm shadow'],
      ]);
      expect(doc.results[0]!.memoryDigest).toBe(doc.results[1]!.memoryDigest);
      const row = (metric: string) => doc.table.find((r) => r.metric === metric)!;
      const exits = row('vmexits');
      expect(exits.values).toEqual(doc.results.map((r) => r.counters.total.exits));
      expect(exits.ratios[0]).toBe(1);
      expect(exits.ratios[1]).toBeCloseTo(exits.values[1]! / exits.values[0]!, 12);
      // A reason of the other backend: null value and null ratio.
      expect(row('vmx EXCEPTION_NMI').values[2]).toBeNull();
      expect(row('vmx EXCEPTION_NMI').ratios[2]).toBeNull();
      expect(row('svm VMEXIT_EXCP14').values.slice(0, 2)).toEqual([null, null]);
      expect(row('exits per guest fault').values[1]).toBeCloseTo(exits.values[1]! / 64, 12);
      // The table printed from the document is the one the command prints.
      expect(formatComparison(doc).split('\n')[0]).toBe('workload demand-fault:pages=64, mode long4, seed 1; ratios are to the first variant');
    });
  });

  describe('--variant', () => {
    it('takes config files, and labels each policy with the options it was given', async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-compare-'));
      try {
        const file = path.join(dir, 'flood.json');
        fs.writeFileSync(
          file,
          JSON.stringify({ backend: 'vmx', mmu: 'shadow', policies: [{ use: 'write-flood', options: { count: 'per-vcpu', threshold: 4 } }] }),
        );
        const doc = await compareJson('vmx shadow write-flood', file);
        expect(doc.results.map((r) => r.label)).toEqual(['vmx shadow write-flood', 'vmx shadow write-flood(count=per-vcpu,threshold=4)']);
        expect(doc.results[1]!.spec).toBe(file);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
    it('refuses bypass-guest-pf on SVM with exit 2 and a message that names error-code filtering, printing no table', async () => {
      const code = await main(['compare', ...WL, '--variant', 'vmx shadow', '--variant', 'svm shadow pte-update,bypass-guest-pf']);
      expect(code).toBe(2);
      expect(out.join('')).toBe('');
      const text = err.join('');
      expect(text).toMatch(/--variant "svm shadow pte-update,bypass-guest-pf": invalid variant:/);
      expect(text).toMatch(/policy 'bypass-guest-pf' needs PageFaultFilter \(error-code filtering of #PF exits.*which backend 'svm' does not provide/);
      expect(text).not.toMatch(/\n\s+at /); // no stack trace
    });
    it('names the problem with a bad spec or a missing file', async () => {
      expect(await main(['compare', ...WL, '--variant', 'shadow pte-update'])).toBe(2);
      expect(err.join('')).toMatch(/--variant "shadow pte-update": name a backend \(vmx, svm, or native\)/);
      err.length = 0;
      expect(await main(['compare', ...WL, '--variant', '/nonexistent/v.json'])).toBe(2);
      expect(err.join('')).toMatch(/--variant \/nonexistent\/v\.json: no such config file/);
    });
  });

  describe('--jobs, --label, --counter', () => {
    it('gives the same document on 2 worker threads as one variant after another', async () => {
      const args = ['compare', ...WL, '--variant', 'vmx shadow', '--variant', 'vmx shadow pte-update', '--json'];
      expect(await main(args)).toBe(0);
      const serial = JSON.parse(out.join('')) as ComparisonDocument;
      out.length = 0;
      expect(await main([...args, '--jobs', '2'])).toBe(0);
      const parallel = JSON.parse(out.join('')) as ComparisonDocument;
      const strip = (d: ComparisonDocument): unknown => ({ ...d, results: d.results.map((r) => deterministicPart(r)) });
      expect(strip(parallel)).toEqual(strip(serial));
      expect(err.join('')).toBe(''); // no bar: stderr is not a terminal
    });

    it('labels a column, keeps --variant and --label in command-line order, and adds the counters asked for', async () => {
      const code = await main([
        'compare',
        ...WL,
        '--label',
        'base=vmx shadow',
        '--variant',
        'vmx shadow pte-update',
        '--counter',
        'mmu_events.*',
        '--counter',
        'pf_fixed',
        '--counter',
        'no_such.*',
      ]);
      expect(code).toBe(0);
      const text = out.join('');
      const { head, rows } = parseTable(text);
      expect(head).toEqual(['base', 'vmx shadow pte-update']);
      const keys = [...rows.keys()];
      const picked = keys.slice(keys.indexOf('counters') + 1).filter((k) => !k.startsWith('--counter'));
      expect(picked.length).toBeGreaterThan(1);
      expect(picked.filter((k) => k !== 'pf_fixed').every((k) => k.startsWith('mmu_events.'))).toBe(true);
      expect(picked).toContain('mmu_events.pte-write');
      expect(text).toMatch(/^--counter 'no_such\.\*': no counter of these runs matches$/m);
    });

    it.each([
      [['--label', 'fast'], /--label: expected NAME=VARIANT \(e\.g\. fast=flood\.json\), got 'fast'/],
      [['--label', 'a=vmx', '--label', 'a=svm'], /^vmexit: --label: the label 'a' is given twice \('a=vmx', 'a=svm'\); give each column a name of its own\n$/],
      // The label is the name `--variant 'vmx shadow'` gets by itself: two columns of one name.
      [
        ['--label', 'vmx shadow=svm shadow'],
        /^vmexit: --label: the label 'vmx shadow' \(of 'vmx shadow=svm shadow'\) is also the name of the column of --variant 'vmx shadow'; give it a name of its own\n$/,
      ],
      [['--counter', 'a b'], /--counter 'a b': expected a counter name or a glob/],
      [['--jobs', '0'], /--jobs: expected an integer from 1 to 256, got '0'/],
    ])('exits 2 on %j before running anything', async (extra, message) => {
      expect(await main(['compare', ...WL, '--variant', 'vmx shadow', ...extra])).toBe(2);
      expect(err.join('')).toMatch(message);
      expect(out.join('')).toBe('');
    });
  });
});
