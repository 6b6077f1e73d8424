import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { JsonLinesTracer } from '@vmexit/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError, runVariant, traceStats } from '../src/index.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-trace-stats-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

// The lines `vmexit run --trace` writes for a tiny run (window lines, exits, MMU decisions).
let trace: string[];
beforeAll(async () => {
  trace = [];
  await runVariant('vmx shadow', 'fork-cow:pages=8,forks=1', { overrides: { memory: '4M' }, tracer: new JsonLinesTracer((l) => trace.push(l)) });
}, 60_000);

let files = 0;
function write(text: string): string {
  const file = path.join(tmp, `trace-${files++}.jsonl`);
  fs.writeFileSync(file, text);
  return file;
}

const EXIT = { type: 'exit', vcpu: 0, seq: 1, kind: 'exception', reason: 'EXCEPTION_NMI', code: 0, resolution: { kind: 'resume' }, resolvedBy: 'mmu' };

describe('traceStats', () => {
  it("reads a run's trace, with the page faults, a selection line and the aborted line of a stopped run after it", async () => {
    const whole = await traceStats(write(trace.join('')));
    expect(whole.exits).toBeGreaterThan(0);
    const extra = [
      { type: 'page-fault', seq: 0, vcpu: 0, pid: 1, address: '0x7f0000000000', errorCode: 6, kind: 'demand-zero' },
      { type: 'aborted', error: 'audit: a shadow PTE maps what the guest does not' },
      { type: 'interrupted', reason: 'the run was stopped here from outside' },
    ];
    const selection = `${JSON.stringify({ type: 'trace-selection', filter: ['EXCEPTION_NMI'], sample: 2 })}\n`;
    const s = await traceStats(write(selection + trace.join('') + extra.map((x) => `${JSON.stringify(x)}\n`).join('')));
    expect(s.exits).toBe(whole.exits);
    expect(s.selection).toEqual({ filter: ['EXCEPTION_NMI'], sample: 2 });
  });

  it('takes a cost model by its own names only (not an inherited property such as toString)', async () => {
    for (const name of ['toString', 'constructor', 'nope'])
      await expect(traceStats(write(''), { costModel: name })).rejects.toThrow(
        `--cost-model: unknown cost model '${name}' (expected one of core2-2007, server-2020s, cloud-vm-measured, or a custom model's .json file)`,
      );
  });

  it('counts no exits in an empty trace (a run that traced nothing)', async () => {
    expect((await traceStats(write(''))).exits).toBe(0);
    expect((await traceStats(write('\n\n'))).exits).toBe(0);
  });

  it.each<[string, string]>([
    ['null', 'a trace record must be an object with a type, not null'],
    ['[1,2]', 'a trace record must be an object with a type, not an array'],
    ['1', 'a trace record must be an object with a type, not 1'],
    ['"s"', 'a trace record must be an object with a type, not the string "s"'],
    ['true', 'a trace record must be an object with a type, not true'],
    ['{}', 'type must be a trace record type (exit, mmu, window, page-fault, trace-selection, aborted, interrupted), not missing'],
    ['{"type":"exits"}', 'type must be a trace record type (exit, mmu, window, page-fault, trace-selection, aborted, interrupted), not the string "exits"'],
    [JSON.stringify({ ...EXIT, vcpu: -1 }), 'exit record: vcpu must be a non-negative integer, not -1'],
    [JSON.stringify({ ...EXIT, vcpu: 0.5 }), 'exit record: vcpu must be a non-negative integer, not 0.5'],
    [JSON.stringify({ ...EXIT, vcpu: undefined }), 'exit record: vcpu must be a non-negative integer, not missing'],
    [
      JSON.stringify({ ...EXIT, reason: 'NO_SUCH_EXIT' }),
      'exit record: reason must be an exit reason of VMX or SVM (EXCEPTION_NMI, VMEXIT_EXCP14, ...), not the string "NO_SUCH_EXIT"',
    ],
    [JSON.stringify({ ...EXIT, reason: 14 }), 'exit record: reason must be a string, not 14'],
    [
      JSON.stringify({ ...EXIT, kind: 'fault' }),
      'exit record: kind must be an exit kind (exception, cr-write, invlpg, nested-fault, mmio), not the string "fault"',
    ],
    [
      JSON.stringify({ ...EXIT, resolution: { kind: 'ignore' } }),
      'exit record: resolution.kind must be a resolution kind (resume, inject, emulate, userspace), not the string "ignore"',
    ],
    [JSON.stringify({ ...EXIT, resolution: 'resume' }), 'exit record: resolution must be null or an object with a kind, not the string "resume"'],
    ['{"type":"window","phase":"middle"}', 'window record: phase must be one of start, end, not the string "middle"'],
    ['{"type":"trace-selection","filter":[5],"sample":1}', 'trace-selection record: filter[0] must be a string, not 5'],
    ['{"type":"trace-selection","filter":null,"sample":0}', 'trace-selection record: sample must be a positive integer, not 0'],
  ])('refuses the line %s, naming the file, the line and what is wrong', async (line, message) => {
    const file = write(`${trace.slice(0, 3).join('')}${line}\n${trace.slice(3).join('')}`);
    await expect(traceStats(file)).rejects.toThrow(new InputError(`${file}:4: ${message}`));
  });

  it('refuses a directory, a missing file and a line that is not JSON', async () => {
    const dir = path.join(tmp, 'dir');
    fs.mkdirSync(dir);
    await expect(traceStats(dir)).rejects.toThrow(new InputError(`${dir}: is a directory, not a trace file`));
    const none = path.join(tmp, 'none.jsonl');
    await expect(traceStats(none)).rejects.toThrow(new InputError(`${none}: cannot read (ENOENT)`));
    const bad = write('hello\n');
    await expect(traceStats(bad)).rejects.toThrow(new InputError(`${bad}:1: not a JSON line (is this a --trace file?)`));
  });
});
