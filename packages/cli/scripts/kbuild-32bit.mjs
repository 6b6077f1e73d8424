#!/usr/bin/env node
// kbuild on 32-bit guests: the bundled kbuild trace (a real compile recorded on a 64-bit
// machine, 33 M access records) relocated into the 32-bit user space and run in PAE and 32-bit paging
// under --check (the guest must not be able to tell it runs virtualized) and --audit (the MMU's
// invariants after every exit), under VMX and SVM with shadow paging and with TDP. Prints each run's
// result and time; the exit status is 1 when any run diverges or stops.
//
//   node packages/cli/scripts/kbuild-32bit.mjs [--mode pae|legacy32]... [--variant "vmx shadow"]...
//   node packages/cli/scripts/kbuild-32bit.mjs --write-fixture FILE [--per-segment 100]
//
// --write-fixture writes the thinned kbuild that CI runs instead (test/kbuild-32bit.int.test.ts,
// test/fixtures/kbuild-thin.vxt): every process and every event kept, and the first N access records
// after each event. Build first (npm run build): the script runs the built dist.
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';

/**
 * A shortened trace: every process, every event (fork, exec, mmap, munmap, mprotect, brk, exit) and the
 * order of everything kept, but of the access records between two events of a process only the first
 * `perSegment`. The page-table life of the recording (each image's mappings, COW after fork, exec
 * teardown, munmap) stays whole while the run gets short; `at` and the record ranges are renumbered.
 */
export function thinTrace(trace, perSegment) {
  const { kind, page, count } = trace.accesses;
  const keep = [];
  const byPid = new Map();
  for (const p of [...trace.processes].sort((a, b) => a.recordStart - b.recordStart)) {
    const points = [...new Set([p.recordStart, p.recordEnd, ...p.events.map((e) => e.at)])].sort((a, b) => a - b);
    const newIndex = new Map();
    for (let j = 0; j < points.length; j++) {
      const at = points[j];
      newIndex.set(at, keep.length);
      const end = j + 1 < points.length ? points[j + 1] : at;
      for (let i = at; i < Math.min(end, at + perSegment); i++) keep.push(i);
    }
    const map = (at) => newIndex.get(at);
    byPid.set(p.pid, { ...p, recordStart: map(p.recordStart), recordEnd: map(p.recordEnd), events: p.events.map((e) => ({ ...e, at: map(e.at) })) });
  }
  const n = keep.length;
  const accesses = { length: n, kind: new Uint8Array(n), page: new Float64Array(n), count: new Uint32Array(n) };
  for (let i = 0; i < n; i++) {
    accesses.kind[i] = kind[keep[i]];
    accesses.page[i] = page[keep[i]];
    accesses.count[i] = count[keep[i]];
  }
  return { ...trace, accesses, processes: trace.processes.map((p) => byPid.get(p.pid)) };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values } = parseArgs({
    options: {
      mode: { type: 'string', multiple: true },
      variant: { type: 'string', multiple: true },
      'write-fixture': { type: 'string' },
      'per-segment': { type: 'string', default: '100' },
    },
  });
  const guest = await import('@vmexit/guest');
  if (values['write-fixture'] !== undefined) {
    const per = Number(values['per-segment']);
    const trace = thinTrace(guest.decodeVxt(guest.readVxtFile(guest.KBUILD_TRACE_PATH), guest.KBUILD_TRACE_PATH), per);
    fs.writeFileSync(values['write-fixture'], guest.encodeVxt(trace, { quality: 11 }));
    process.stdout.write(`${values['write-fixture']}: ${trace.accesses.length} records, ${trace.processes.length} processes\n`);
  } else {
    const { runChecked } = await import('@vmexit/lab');
    const { parseVariantSpec } = await import('../dist/commands/compare.js');
    const modes = values.mode ?? ['pae', 'legacy32'];
    const variants = values.variant ?? ['vmx shadow', 'svm shadow', 'vmx tdp', 'svm tdp'];
    let failed = 0;
    const t00 = performance.now();
    for (const mode of modes) {
      for (const spec of variants) {
        const t0 = performance.now();
        let line;
        try {
          const variant = await parseVariantSpec(spec, {});
          const { run, check } = await runChecked({ workload: 'kbuild', mode, seed: 1, personalities: [], variant, audit: true });
          const r = run.result;
          const ok = check.divergence === null;
          if (!ok) failed++;
          line = `${ok ? 'ok  ' : 'FAIL'} kbuild ${mode} [${spec}] --check --audit: ${ok ? 'no divergence' : check.divergence}; ${r.guest.accesses} accesses, ${r.counters.total.exits} exits, relocated into ${r.guest.trace?.relocation?.userLimit ?? '(not relocated)'} bytes of user space`;
        } catch (e) {
          failed++;
          line = `FAIL kbuild ${mode} [${spec}] --check --audit: stopped: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`;
        }
        process.stdout.write(`${line} (${((performance.now() - t0) / 1000).toFixed(1)} s)\n`);
      }
    }
    process.stdout.write(`${modes.length * variants.length} runs, ${failed} failed, ${((performance.now() - t00) / 1000).toFixed(1)} s\n`);
    process.exitCode = failed > 0 ? 1 : 0;
  }
}
