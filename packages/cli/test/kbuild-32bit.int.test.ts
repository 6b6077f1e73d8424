import { fileURLToPath } from 'node:url';
import { runChecked } from '@vmexit/lab';
import { describe, expect, it } from 'vitest';
import { parseVariantSpec } from '../src/commands/compare.js';

/*
 * kbuild (a real compile recorded on a 64-bit machine) on 32-bit guests: its processes' mappings are
 * relocated into the 32-bit user space, and the guest must not be able to tell it runs virtualized
 * (--check) while the MMU keeps its invariants after every exit (--audit), in PAE and in 32-bit paging,
 * under VMX and SVM with shadow paging and with TDP. The whole trace (33 M records) under --check --audit
 * is scripts/kbuild-32bit.mjs's (minutes a run); CI runs it thinned (fixtures/kbuild-thin.vxt, written by
 * `kbuild-32bit.mjs --write-fixture FILE --per-segment 20`): every process and every event (fork, exec,
 * mmap, munmap, mprotect, brk, exit) of kbuild, and the first 20 access records after each event, in 64 MiB
 * (about 2 s of CPU a run). CI runs each backend and each MMU once per mode; VMEXIT_FULL_MATRIX=1 runs all 8.
 */
const FULL = process.env.VMEXIT_FULL_MATRIX === '1';
const CI_CELLS = new Set(['pae vmx shadow', 'pae svm tdp', 'legacy32 svm shadow', 'legacy32 vmx tdp']);
const file = fileURLToPath(new URL('./fixtures/kbuild-thin.vxt', import.meta.url));

describe('kbuild, thinned, on 32-bit guests (--check --audit)', () => {
  for (const mode of ['pae', 'legacy32'] as const) {
    const specs = ['vmx shadow', 'svm shadow', 'vmx tdp', 'svm tdp'].filter((spec) => FULL || CI_CELLS.has(`${mode} ${spec}`));
    it.each(specs)(
      `${mode}, %s`,
      async (spec) => {
        const variant = await parseVariantSpec(spec, { memory: String(64 << 20) });
        const { run, check } = await runChecked({ workload: file, mode, seed: 1, personalities: [], variant, audit: true });
        expect(check.divergence).toBeNull();
        const r = run.result;
        // Relocated into the 32-bit user space, and every process ran to its exit.
        expect(r.workload.kind).toBe('trace');
        expect(r.guest.trace?.relocation?.userLimit).toBe(0xc000_0000);
        expect(r.guest.syscalls.exit).toBe(3);
        expect(r.guest.syscalls.fork).toBe(2);
        expect(r.guest.trace?.records).toBe(2918);
        expect(r.counters.total.exits).toBeGreaterThan(0);
      },
      300_000,
    );
  }
});
