import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PFERR_USER, PFERR_WRITE } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { runWorkload, type RunOutcome } from '../src/run.js';
import { TraceError } from '../src/trace/errors.js';
import { importLackey } from '../src/trace/lackey.js';
import type { VxtTrace } from '../src/trace/types.js';

/*
 * How valid lackey recordings become guest accesses: the logs are written here in valgrind lackey's own format
 * (lackey/lk_main.c `trace_instr`, `trace_load`, `trace_store`, `trace_modify`: "I  %08lx,%lu", " L", " S",
 * " M"; --trace-syscalls=yes lines as valgrind 3.19 writes them), imported, and replayed on a native guest.
 */

/** A lackey log of pid `pid` (parent `parent`) running `command`, with `body` lines, ending as valgrind ends it. */
function lackeyLog(dir: string, pid: number, parent: number, command: string, body: readonly string[], n = 1): string {
  const f = path.join(dir, `rec.${pid}.${n}`);
  const head = [
    `==${pid}== Lackey, an example Valgrind tool`,
    `==${pid}== Using Valgrind-3.19.0 and LibVEX; rerun with -h for copyright info`,
    `==${pid}== Command: ${command}`,
    `==${pid}== Parent PID: ${parent}`,
    `==${pid}== `,
  ];
  fs.writeFileSync(f, [...head, ...body, `==${pid}== `, `==${pid}== Exit code:       0`, ''].join('\n'));
  return f;
}

const tmpDir = (): string => fs.mkdtempSync(path.join(os.tmpdir(), 'replay-fidelity-'));

/** An anonymous mmap of 64 KiB at 0x4a2b000 (valgrind's client mmap area), as lackey logs it. */
const mmapLine = (pid: number): string => `SYSCALL[${pid},1](9) sys_mmap ( 0x0, 65536, 3, 34, 4294967295, 0 ) --> [pre-success] Success(0x4a2b000) `;
const exitLine = (pid: number): string => `SYSCALL[${pid},1](231) exit_group( 0 ) --> [pre-success] Success(0x0) `;

const replay = (t: VxtTrace, seed = 1): RunOutcome => runWorkload({ workload: 'rec.vxt', memory: 32 * 1024 * 1024, seed, loadTrace: () => t });

/** The faults the guest took at `address` (page aligned), in order: their sequence numbers and error codes. */
function faultsAt(o: RunOutcome, address: number): { seq: number; errorCode: number }[] {
  const out: { seq: number; errorCode: number }[] = [];
  for (let i = 0; i < o.events.length; i++) {
    const e = o.events.at(i);
    if (Math.floor(e.address / 4096) * 4096 === address) out.push({ seq: e.seq, errorCode: e.errorCode });
  }
  return out;
}

describe('importLackey + startReplay', () => {
  describe('.modify', () => {
    it('replays an M line as one write: a read-modify-write on an untouched anonymous page is one demand-zero fault with W set', () => {
      // lackey merges a load and a store of the same address and size in one instruction into M
      // (lk_main.c `addEvent_Dw`): `add [mem], reg`, a locked cmpxchg (Ist_CAS). The processor reports the #PF of
      // such an instruction with W=1 from the start (KVM mirrors it: arch/x86/kvm/emulate.c `x86_emulate_insn` ORs
      // PFERR_WRITE_MASK into a #PF raised by the read of a non-Mov memory destination), so Linux takes one write
      // fault (mm/memory.c `do_anonymous_page` with FAULT_FLAG_WRITE). A load then a store would take two: the
      // zero page on the read, then a copy on the write.
      const dir = tmpDir();
      const t = importLackey([lackeyLog(dir, 400, 399, '/bin/m', ['I  00108000,4', mmapLine(400), 'I  00108004,4', ' M 04a2b010,4', exitLine(400)])]);
      const o = replay(t);
      expect(o.result.guest.faults).toMatchObject({ 'demand-zero': 1, 'zero-page': 0, cow: 0 });
      expect(faultsAt(o, 0x4a2b000).map((f) => f.errorCode)).toEqual([PFERR_WRITE | PFERR_USER]);
    });
  });

  describe('.page-crossing', () => {
    it('touches both pages of an access that crosses a page boundary, in address order', () => {
      // ` S 04a2bffc,8` stores bytes 0x4a2bffc..0x4a2c003: each page is translated (SDM Vol. 3A §4.1: paging
      // translates each linear address), so both untouched pages of the mapping fault, the lower one first.
      // The one line is one access on each page: 2 records, 2 represented accesses.
      const dir = tmpDir();
      const t = importLackey([lackeyLog(dir, 410, 409, '/bin/c', ['I  00108000,4', mmapLine(410), 'I  00108004,4', ' S 04a2bffc,8', exitLine(410)])]);
      const o = replay(t);
      expect(o.result.guest.faults).toMatchObject({ 'demand-zero': 2 });
      const lo = faultsAt(o, 0x4a2b000);
      const hi = faultsAt(o, 0x4a2c000);
      expect(lo.length).toBe(1);
      expect(hi.length).toBe(1);
      expect(lo[0]!.seq).toBeLessThan(hi[0]!.seq);
      expect(o.result.guest.trace).toMatchObject({ records: 4, represented: 4, sigsegvRecords: 0 });
    });
  });

  describe('.wait', () => {
    /**
     * A driver (pid 300) that forks a pass (pid 301) and waits for it with wait4, then stores to a page of its
     * own; the pass reads 20000 times (40000 records in run mode, several quanta of 2000..6000) and at its end
     * stores to another page.
     */
    function driverAndPass(): VxtTrace {
      const dir = tmpDir();
      const pass: string[] = [' --> [pre-success] Success(0x0) '];
      for (let k = 0; k < 20000; k++) pass.push('I  00108010,4', ' L 04a2b000,8');
      pass.push(' S 04a2d000,8', exitLine(301));
      return importLackey(
        [
          lackeyLog(dir, 300, 299, '/bin/drv', [
            'I  00108000,4',
            mmapLine(300),
            'SYSCALL[300,1](56) sys_clone ( 1200011, 0x0, 0x0, 0x4a28a10, 0x0 )   clone(fork): process 300 created child 301',
            ' --> [pre-success] Success(0x12d) ',
            'SYSCALL[300,1](61) sys_wait4 ( 301, 0x1fff00066c, 0, 0x0 ) --> [async] ... ',
            'SYSCALL[300,1](61) ... [async] --> Success(0x12d) ',
            'I  00108004,4',
            ' S 04a2c000,8',
            exitLine(300),
          ]),
          lackeyLog(dir, 301, 300, '/bin/drv', pass),
        ],
        { collapse: 'run' },
      );
    }

    it('imports a wait4 that reaped a child as a wait event', () => {
      const t = driverAndPass();
      const drv = t.processes[0]!;
      expect(drv.events.filter((e) => e.type === 'fork' || e.type === 'wait')).toEqual([
        { type: 'fork', at: 1, parent: 300, child: 301 },
        { type: 'wait', at: 1, child: 301 },
      ]);
    });

    it('runs none of the parent’s records after a wait before the child has exited', () => {
      // With the wait, the driver blocks until the pass has exited: the pass's last store (0x4a2d000) faults
      // before the driver's store (0x4a2c000). Without it (the wait event dropped, as imports before it had
      // it), the driver goes on in the quantum of its fork and its store faults before the pass has run at all.
      const t = driverAndPass();
      const o = replay(t);
      expect(faultsAt(o, 0x4a2d000)[0]!.seq).toBeLessThan(faultsAt(o, 0x4a2c000)[0]!.seq);
      const noWait: VxtTrace = { ...t, processes: t.processes.map((p) => ({ ...p, events: p.events.filter((e) => e.type !== 'wait') })) };
      const n = replay(noWait);
      expect(faultsAt(n, 0x4a2c000)[0]!.seq).toBeLessThan(faultsAt(n, 0x4a2d000)[0]!.seq);
      // Both replay every record and reach the same guest memory: only the order differs.
      expect(o.result.guest.trace).toEqual(n.result.guest.trace);
    });
  });

  describe('.vfork', () => {
    /**
     * A driver (pid 310) that vforks a pass (pid 311) with vfork() (syscall 58, logged by valgrind 3.19 as sys_fork)
     * and waits for it, then stores to two pages of its area. The pass's pre-exec log (rec.311.2, which starts
     * with the vfork's return in the child) stores to the second of those pages, then execs /bin/pass (rec.311.1).
     */
    function vforked(): VxtTrace {
      const dir = tmpDir();
      return importLackey(
        [
          lackeyLog(dir, 310, 309, '/bin/drv', [
            'I  00108000,4',
            mmapLine(310),
            'SYSCALL[310,1](58) sys_fork ( )   fork: process 310 created child 311',
            ' --> [pre-success] Success(0x137) ',
            'SYSCALL[310,1](61) sys_wait4 ( 311, 0x1fff00066c, 0, 0x0 ) --> [async] ... ',
            'SYSCALL[310,1](61) ... [async] --> Success(0x137) ',
            'I  00108004,4',
            ' S 04a2c000,8',
            ' S 04a2d000,8',
            exitLine(310),
          ]),
          lackeyLog(
            dir,
            311,
            310,
            '/bin/drv',
            [' --> [pre-success] Success(0x0) ', ' S 04a2d000,8', 'SYSCALL[311,1](59) sys_execve ( 0x1fff000170(/bin/pass), 0x4060c58, 0x4060d50 )'],
            2,
          ),
          lackeyLog(dir, 311, 310, '/bin/pass', ['I  00108000,4', exitLine(311)]),
        ],
        { collapse: 'run' },
      );
    }

    it('imports the vfork as a fork event with vfork, and the pass’s store before its exec as its record', () => {
      const t = vforked();
      expect(t.processes[0]!.events.filter((e) => e.type === 'fork')).toEqual([{ type: 'fork', at: 1, parent: 310, child: 311, vfork: true }]);
      expect(t.processes[1]!.events.map((e) => [e.type, e.at - t.processes[1]!.recordStart])).toEqual([
        ['exec', 1],
        ['exit', 2],
      ]);
    });

    it('replays the pass’s store before its exec in the driver’s address space', () => {
      // vfork: the pass's store to 0x4a2d000 is a demand-zero fault in the driver's space (the same CR3), so the
      // driver's own store to it later finds the page: 1 fault there. Replayed as a fork (the flag dropped, as
      // imports before it had it), the pass faults the page into its copy, which its exec drops, and the driver
      // faults it again: 2.
      const t = vforked();
      expect(faultsAt(replay(t), 0x4a2d000)).toHaveLength(1);
      const asFork: VxtTrace = {
        ...t,
        processes: t.processes.map((p) => ({
          ...p,
          events: p.events.map((e) => (e.type === 'fork' ? { type: 'fork', at: e.at, parent: e.parent, child: e.child } : e)),
        })),
      };
      expect(faultsAt(replay(asFork), 0x4a2d000)).toHaveLength(2);
    });
  });

  describe('.unmodelled', () => {
    const refusal = (body: string[]): TraceError => {
      const dir = tmpDir();
      const f = lackeyLog(dir, 420, 419, '/bin/u', ['I  00108000,4', mmapLine(420), ...body, exitLine(420)]);
      try {
        importLackey([f]);
      } catch (e) {
        if (e instanceof TraceError) return e;
        throw e;
      }
      throw new Error('imported');
    };

    it('refuses a successful mremap, which the guest model cannot replay, naming the log and the line', () => {
      // valgrind passes mremap to the kernel (its output here is from a recording of glibc's realloc of an
      // mmap'd block). Imported as nothing, the grown part became a loader mapping present since the exec, and
      // a moved block's pages would fault again where Linux moves their ptes (mm/mremap.c `move_page_tables`).
      const e = refusal(['SYSCALL[420,1](25) sys_mremap ( 0x4a2b000, 65536, 1048576, 0x1 ) --> [pre-success] Success(0x4a2b000) ', ' S 04a4b000,8']);
      expect(e.code).toBe('unsupported');
      expect(e.message).toMatch(/rec\.420\.1: line 8: pid 420 calls mremap \(the guest model cannot move or resize a mapping with its pages\)/);
    });

    it('refuses madvise(MADV_DONTNEED) (the pages are zapped, the next access faults again) but imports MADV_WILLNEED as nothing', () => {
      const e = refusal(['SYSCALL[420,1](28) sys_madvise ( 0x4a2b000, 65536, 4 ) --> [async] ... ', 'SYSCALL[420,1](28) ... [async] --> Success(0x0) ']);
      expect(e.code).toBe('unsupported');
      expect(e.message).toMatch(/line 9: pid 420 calls madvise with MADV_DONTNEED/);
      const dir = tmpDir();
      const ok = importLackey([
        lackeyLog(dir, 421, 420, '/bin/u', [
          'I  00108000,4',
          mmapLine(421),
          'SYSCALL[421,1](28) sys_madvise ( 0x4a2b000, 65536, 3 ) --> [pre-success] Success(0x0) ',
          exitLine(421),
        ]),
      ]);
      expect(ok.processes[0]!.events.map((x) => x.type)).toEqual(['exec', 'mmap', 'exit']);
    });

    it('refuses an mmap with MAP_POPULATE (the kernel faults the pages in at the call) and mlock', () => {
      const pop = refusal(['SYSCALL[420,1](9) sys_mmap ( 0x0, 8192, 3, 32802, 4294967295, 0 ) --> [pre-success] Success(0x4a3b000) ']);
      expect(pop.message).toMatch(/calls mmap with MAP_POPULATE/);
      const lock = refusal(['SYSCALL[420,1](149) sys_mlock ( 0x4a2b000, 4096 ) --> [pre-success] Success(0x0) ']);
      expect(lock.message).toMatch(/calls mlock/);
    });

    it('imports a failed mremap as nothing (the address space did not change)', () => {
      const dir = tmpDir();
      const t = importLackey([
        lackeyLog(dir, 422, 421, '/bin/u', [
          'I  00108000,4',
          mmapLine(422),
          'SYSCALL[422,1](25) sys_mremap ( 0x4a2b000, 65536, 1048576, 0x0 ) --> [pre-fail] Failure(0xc) ',
          exitLine(422),
        ]),
      ]);
      expect(t.processes[0]!.events.map((x) => x.type)).toEqual(['exec', 'mmap', 'exit']);
    });
  });

  describe('.determinism', () => {
    it('gives the same counters, faults and memory digest for the same trace and seed', () => {
      const strip = (o: RunOutcome): unknown => ({ ...o.result, wallSeconds: 0, accessesPerSecond: 0 });
      const a = replay(
        importLackey(
          [
            lackeyLog(tmpDir(), 430, 429, '/bin/d', [
              'I  00108000,4',
              mmapLine(430),
              ' S 04a2b000,8',
              ' M 04a2bffc,8',
              ' L 04a2d000,4',
              ' S 04a2d000,4',
              exitLine(430),
            ]),
          ],
          { collapse: 'run' },
        ),
        7,
      );
      const b = replay(
        importLackey(
          [
            lackeyLog(tmpDir(), 430, 429, '/bin/d', [
              'I  00108000,4',
              mmapLine(430),
              ' S 04a2b000,8',
              ' M 04a2bffc,8',
              ' L 04a2d000,4',
              ' S 04a2d000,4',
              exitLine(430),
            ]),
          ],
          { collapse: 'run' },
        ),
        7,
      );
      expect(strip(a)).toEqual(strip(b));
      // S 0x4a2b000: demand-zero; M crossing into 0x4a2c000: demand-zero; L 0x4a2d000: zero page; S: copy.
      expect(a.result.guest.faults).toMatchObject({ 'demand-zero': 2, 'zero-page': 1, cow: 1 });
    });
  });
});
