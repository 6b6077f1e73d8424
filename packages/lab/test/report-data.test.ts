import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError, migrate, parseVariantSpec, readReportData, runCell, type CellRecord, type MigrateResult } from '../src/index.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-report-data-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

// What the commands write: a sweep's cell record (results.jsonl) and a `vmexit migrate --json` document, both small.
let record: CellRecord;
let migration: MigrateResult;
beforeAll(async () => {
  record = await runCell({ kind: 'run', workload: 'demand-fault:pages=16', variant: 'vmx', mode: 'long4', seed: 1, overrides: { memory: '4M' } });
  const variant = await parseVariantSpec('vmx shadow', { memory: '4M' });
  migration = await migrate({
    workload: 'dirty-log-test:pages=64,iterations=10,writes=16',
    mode: 'long4',
    seed: 1,
    personalities: [],
    variant,
    copyRate: 4000,
    maxRounds: 2,
    stopPages: 0,
  });
}, 60_000);

let files = 0;
function write(text: string): string {
  const file = path.join(tmp, `input-${files++}.jsonl`);
  fs.writeFileSync(file, text);
  return file;
}

/** `x`, a copy of it changed by `change`, as JSON. */
function changed<T>(x: T, change: (c: Record<string, unknown>) => void): Record<string, unknown> {
  const c = JSON.parse(JSON.stringify(x)) as Record<string, unknown>;
  change(c);
  return c;
}

type Json = Record<string, unknown>;

describe('readReportData', () => {
  it('reads what the commands write: results.jsonl lines, a migrate document, JSON Lines of both', () => {
    const lines = write(`${JSON.stringify(record)}\n${JSON.stringify(migration)}\n`);
    const d = readReportData(lines);
    expect(d.results).toHaveLength(1);
    expect(d.migrations).toHaveLength(1);
    // policies as names and as {use, options}, a native variant (no mmu, no policies), a named host page size
    const variants = [
      { ...record.variant, policies: ['pte-update', { use: 'write-flood', options: { threshold: 4 } }] },
      { backend: 'none', costModel: 'server-2020s', mode: 'long4', vcpus: 1, memory: 4194304, personalities: [] },
      { ...record.variant, mmu: 'tdp', hostPages: '2m' },
    ];
    expect(readReportData(write(variants.map((v) => `${JSON.stringify({ ...record, variant: v })}\n`).join(''))).results).toHaveLength(3);
    expect(readReportData(write(JSON.stringify(migration, null, 2))).migrations).toHaveLength(1);
  });

  it.each<[string, (c: Json) => void, string]>([
    ['variant null', (c) => (c.variant = null), 'variant must be an object, not null'],
    ['policies a string', (c) => ((c.variant as Json).policies = 'x'), 'variant.policies must be an array, not the string "x"'],
    ['a policy without a use', (c) => ((c.variant as Json).policies = [{ use: 5 }]), 'variant.policies[0].use must be a string, not 5'],
    ['a policy a number', (c) => ((c.variant as Json).policies = [7]), 'variant.policies[0] must be a policy name or an object with a use, not 7'],
    ['an unknown backend', (c) => ((c.variant as Json).backend = 'kvm'), 'variant.backend must be one of vmx, svm, none, not the string "kvm"'],
    ['no mmu', (c) => delete (c.variant as Json).mmu, 'variant.mmu must be a string (the MMU of a vmx variant), not missing'],
    ['an unknown mode', (c) => ((c.variant as Json).mode = 5), 'variant.mode must be one of legacy32, pae, long4, long5, not 5'],
    ['hostPages a number', (c) => ((c.variant as Json).hostPages = 2), 'variant.hostPages must be a string, not 2'],
    ['workload a string', (c) => (c.workload = 'demand-fault'), 'workload must be an object, not the string "demand-fault"'],
    ['seed a string', (c) => (c.seed = '1'), 'seed must be a non-negative integer, not the string "1"'],
    ['guest missing', (c) => delete c.guest, 'guest must be an object, not missing'],
    ['guest a number', (c) => (c.guest = 3), 'guest must be an object, not 3'],
    ['guest.faults an array', (c) => ((c.guest as Json).faults = []), 'guest.faults must be an object, not an array'],
    ['guest.faults.total missing', (c) => ((c.guest as Json).faults = {}), 'guest.faults.total must be a non-negative integer, not missing'],
    ['cycles not an object', (c) => (c.cycles = 'x'), 'cycles must be an object, not the string "x"'],
    ['cycles.cycles negative', (c) => ((c.cycles as Json).cycles = -1), 'cycles.cycles must be a non-negative number, not -1'],
    [
      'a breakdown of strings',
      (c) => ((c.cycles as Json).breakdown = { pf_fixed: '1' }),
      'cycles.breakdown.pf_fixed must be a non-negative number, not the string "1"',
    ],
    ['a counter null', (c) => (((c.counters as Json).total as Json).exits = null), 'counters.total.exits must be a non-negative number, not null'],
  ])('refuses a sweep result with %s, naming the line and the field', (_, change, message) => {
    const file = write(`${JSON.stringify(record)}\n${JSON.stringify(changed(record, change))}\n`);
    expect(() => readReportData(file)).toThrow(new InputError(`${file}:2: ${message}`));
  });

  it.each<[string, (c: Json) => void, string]>([
    ['rounds [null]', (c) => (c.rounds = [null]), 'rounds[0] must be an object, not null'],
    ['rounds a string', (c) => (c.rounds = 'x'), 'rounds must be an array, not the string "x"'],
    ['a negative dirtyPages', (c) => ((c.rounds as Json[])[1]!.dirtyPages = -3), 'rounds[1].dirtyPages must be a non-negative integer, not -3'],
    ['pagesSent missing', (c) => delete (c.rounds as Json[])[0]!.pagesSent, 'rounds[0].pagesSent must be a non-negative integer, not missing'],
    ['variant null', (c) => (c.variant = null), 'variant must be an object, not null'],
    ['policies a string', (c) => ((c.variant as Json).policies = 'x'), 'variant.policies must be an array, not the string "x"'],
    ['an unknown dirtyLog', (c) => (c.dirtyLog = 7), 'dirtyLog must be one of bitmap, clear, ring, pml, not 7'],
    ['workload missing', (c) => delete c.workload, 'workload must be a string, not missing'],
  ])('refuses a migration with %s: as a document naming the file, as a line naming the line', (_, change, message) => {
    const bad = changed(migration, change);
    const doc = write(JSON.stringify(bad, null, 2));
    expect(() => readReportData(doc)).toThrow(new InputError(`${doc}: ${message}`));
    const lines = write(`${JSON.stringify(migration)}\n${JSON.stringify(bad)}\n`);
    expect(() => readReportData(lines)).toThrow(new InputError(`${lines}:2: ${message}`));
  });

  it('still refuses a line that is neither a sweep result nor a migration, and one that is not JSON', () => {
    for (const line of ['{"schema":"vmexit.run/1"}', 'null', '[1,2]', '1', '"s"', 'true', '{"cell":{"key":"k"}}']) {
      const file = write(`${line}\n`);
      expect(() => readReportData(file), line).toThrow(
        new InputError(`${file}:1: neither a sweep result (no cell.key or counters) nor a migration (schema vmexit.migrate/1)`),
      );
    }
    const file = write('{"cell":\n');
    expect(() => readReportData(file)).toThrow(/:1: not a JSON line \(/);
  });
});
