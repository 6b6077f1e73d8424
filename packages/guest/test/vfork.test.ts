import { ACC_FETCH, ACC_WRITE, Machine, PFERR_PRESENT, PFERR_WRITE } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { Kernel } from '../src/os/kernel.js';
import { MODE_LONG4 } from '../src/os/layout.js';
import { TaskRunner } from '../src/os/tasks.js';
import { ReplayStats, startReplay } from '../src/replay.js';
import { decodeVxt, encodeVxt } from '../src/trace/vxt.js';
import type { VxtEvent, VxtTrace } from '../src/trace/types.js';
import { recordStores } from './os/stores.js';

/*
 * vfork (kernel/fork.c `kernel_clone` with CLONE_VM | CLONE_VFORK) against fork, replayed from a trace: a driver
 * (pid 1) writes N private anonymous pages, vforks (or forks) a pass (pid 2), writes the N pages again and waits
 * for the pass, which execs /bin/pass, touches its text and stack and exits.
 */

const N = 8;
/** The driver's anonymous area: N pages at 0x4a2b000. */
const AREA = 0x4a2b;
const TEXT = 0x108;
const STACK = 0x1ffefff;
const KIND_FETCH = 0;
const KIND_LOAD = 1;
const KIND_STORE = 2;

/**
 * The driver and its pass. Driver records: a fetch of its text, N stores (one per page), then after the (v)fork
 * `after` records, then the wait. Pass records: `preExec` (its accesses before its exec, as valgrind logs them
 * when the pre-exec log survives), then, after its exec, a fetch of its text and a store to its stack; without
 * `exec`, it exits after `preExec`.
 */
function driverAndPass(vfork: boolean, after: [number, number][], preExec: [number, number][] = [], exec = true): VxtTrace {
  const recs: [number, number][] = [[KIND_FETCH, TEXT]];
  for (let i = 0; i < N; i++) recs.push([KIND_STORE, AREA + i]);
  const forkAt = recs.length;
  recs.push(...after);
  const driverEnd = recs.length;
  recs.push(...preExec);
  const execAt = recs.length;
  if (exec) recs.push([KIND_FETCH, TEXT], [KIND_STORE, STACK]);
  const n = recs.length;
  const fork: VxtEvent = vfork ? { type: 'fork', at: forkAt, parent: 1, child: 2, vfork: true } : { type: 'fork', at: forkAt, parent: 1, child: 2 };
  const passExec: VxtEvent = {
    type: 'exec',
    at: execAt,
    pid: 2,
    path: '/bin/pass',
    mappings: [
      { start: TEXT * 4096, length: 0x2000, prot: 5, role: 'exe', file: '/bin/pass' },
      { start: STACK * 4096, length: 0x1000, prot: 3, role: 'stack', file: null },
    ],
  };
  const passExit: VxtEvent = { type: 'exit', at: n, pid: 2, status: 0, signal: null };
  return {
    collapse: 'run',
    source: { tool: 'test', command: 'drv' },
    accesses: {
      length: n,
      kind: Uint8Array.from(recs.map((r) => r[0])),
      page: Float64Array.from(recs.map((r) => r[1])),
      count: new Uint32Array(n).fill(1),
    },
    processes: [
      {
        pid: 1,
        parent: 0,
        recordStart: 0,
        recordEnd: driverEnd,
        events: [
          { type: 'exec', at: 0, pid: 1, path: '/bin/drv', mappings: [{ start: TEXT * 4096, length: 0x2000, prot: 5, role: 'exe', file: '/bin/drv' }] },
          { type: 'mmap', at: 1, start: AREA * 4096, length: N * 4096, prot: 3, flags: 34, offset: 0, file: null },
          fork,
          { type: 'wait', at: driverEnd, child: 2 },
          { type: 'exit', at: driverEnd, pid: 1, status: 0, signal: null },
        ],
      },
      { pid: 2, parent: 1, recordStart: driverEnd, recordEnd: n, events: exec ? [passExec, passExit] : [passExit] },
    ],
  };
}

/** The driver's N stores again, after the (v)fork. */
const rewrite = (): [number, number][] => Array.from({ length: N }, (_, i): [number, number] => [KIND_STORE, AREA + i]);

interface Replayed {
  k: Kernel;
  /** What the (v)fork call itself stored to page-table pages, and the page-table pages it allocated. */
  forkStores: number;
  forkTables: number;
  /** CR3 writes after boot, in order: the value written. */
  cr3: number[];
  /**
   * In order: each user access ("pid:kind:page": the pid of the space it ran in, f/r/w, the page in hex) and the
   * fork, vfork and exec calls.
   */
  log: string[];
  /** Faults with W and P set (write-protection faults) on the driver's area. */
  wpFaults: number;
  contextSwitches: number;
}

/** Replays `t` natively on one vCPU (seed 1), recording what the fork or vfork costs and the order of things. */
function replay(t: VxtTrace): Replayed {
  const m = new Machine({ memoryBytes: 32 * 1024 * 1024, vcpus: 1, seed: 1 });
  const k = new Kernel(m, MODE_LONG4);
  const v = m.vcpus[0]!;
  const stores = recordStores(k, v);
  const cr3: number[] = [];
  const mov = v.movToCr3.bind(v);
  v.movToCr3 = (value: number): void => {
    cr3.push(value);
    mov(value);
  };
  const log: string[] = [];
  const touch = v.touch.bind(v);
  v.touch = (va: number, kind: number): void => {
    log.push(`${k.current[0]!.pid}:${kind === ACC_FETCH ? 'f' : kind === ACC_WRITE ? 'w' : 'r'}:${(va / 4096).toString(16)}`);
    touch(va, kind);
  };
  let forkStores = -1;
  let forkTables = -1;
  const tables = (): number => k.stats.tablesAllocated.reduce((a, b) => a + b, 0);
  for (const call of ['fork', 'vfork'] as const) {
    const f = k[call].bind(k);
    k[call] = (w, parent) => {
      log.push(call);
      const s0 = stores.length;
      const t0 = tables();
      const child = f(w, parent);
      forkStores = stores.length - s0;
      forkTables = tables() - t0;
      return child;
    };
  }
  const execAreas = k.execAreas.bind(k);
  k.execAreas = (w, proc, path, areas) => {
    log.push(`exec ${path}`);
    execAreas(w, proc, path, areas);
  };
  const runner = new TaskRunner(m, k);
  startReplay(k, runner, t, new ReplayStats(), 'drv.vxt');
  cr3.length = 0;
  runner.run();
  let wpFaults = 0;
  for (const e of k.events) {
    const page = Math.floor(e.address / 4096);
    if (page >= AREA && page < AREA + N && (e.errorCode & (PFERR_WRITE | PFERR_PRESENT)) === (PFERR_WRITE | PFERR_PRESENT)) wpFaults++;
  }
  return { k, forkStores, forkTables, cr3, log, wpFaults, contextSwitches: k.stats.contextSwitches };
}

describe('vfork', () => {
  describe('.replay', () => {
    it('copies no page table and write-protects nothing, where fork copies the N written ptes', () => {
      const vf = replay(driverAndPass(true, rewrite()));
      const f = replay(driverAndPass(false, rewrite()));
      // vfork: the child borrows the driver's mm (kernel/fork.c `copy_mm` with CLONE_VM): no store to a page-table
      // page, no page-table page allocated.
      expect(vf.forkStores).toBe(0);
      expect(vf.forkTables).toBe(0);
      // fork: the child's PML4 (its kernel half copied by one rep movs, not counted here) and, by mm/memory.c
      // `copy_page_range` over the area (the only one with anonymous pages), its PDPT, PD and PT: 4 tables; one
      // entry store in each of the child's PML4, PDPT and PD linking them (3), and per written page a write-protect
      // of the driver's pte and the child's copy (2 N = 16): 19 stores, each an emulated write under shadow paging.
      expect(f.forkTables).toBe(4);
      expect(f.forkStores).toBe(3 + 2 * N);
      // The driver's N stores after it: the ptes are still writable after a vfork (no fault); after a fork each
      // store takes a write-protection fault (W|P), N of them.
      expect(vf.wpFaults).toBe(0);
      expect(f.wpFaults).toBe(N);
    });

    it('runs the driver not at all between its vfork and the pass’s exec, and switches to the pass with no CR3 write', () => {
      const vf = replay(driverAndPass(true, rewrite()));
      const f = replay(driverAndPass(false, rewrite()));
      const stores = (pid: number): string[] => Array.from({ length: N }, (_, i) => `${pid}:w:${(AREA + i).toString(16)}`);
      const before = ['exec /bin/drv', `1:f:${TEXT.toString(16)}`, ...stores(1)];
      const pass = ['exec /bin/pass', `2:f:${TEXT.toString(16)}`, `2:w:${STACK.toString(16)}`];
      // vfork: the driver sleeps in wait_for_vfork_done until the pass has exec'd; its N stores come after (in its
      // next quantum, the pass having exited in its own).
      expect(vf.log).toEqual([...before, 'vfork', ...pass, ...stores(1)]);
      // fork: the driver goes on in the quantum of its fork, its stores first, and sleeps at its wait only.
      expect(f.log).toEqual([...before, 'fork', ...stores(1), ...pass]);
      // CR3 writes on the one vCPU. vfork: the driver's first mm (switch to it), its exec'd mm, the pass's exec'd
      // mm (switching from the driver to the pass wrote none: the same mm, arch/x86/mm/tlb.c
      // `switch_mm_irqs_off`), the idle tables at the pass's exit, the driver's mm again, the idle tables at its
      // exit: 6. fork adds 2: the flush after copy_page_range (flush_tlb_mm reloads CR3) and the switch to the
      // child's copy of the mm before its exec.
      expect(vf.cr3).toHaveLength(6);
      expect(f.cr3).toHaveLength(8);
      const roots = vf.cr3;
      expect(roots[1]).toBe(roots[4]); // the driver's exec'd mm, before and after the pass ran
      expect(roots[2]).not.toBe(roots[1]); // the pass's own mm from its exec
      expect(roots[3]).toBe(vf.k.idleRoot);
      // Context switches: driver, pass, idle at the pass's exit, driver, idle at its exit: 5 in both.
      expect(vf.contextSwitches).toBe(5);
      expect(f.contextSwitches).toBe(5);
    });

    it('frees nothing of the driver’s at the pass’s exec and exit: every page and table freed at the end, once', () => {
      const vf = replay(driverAndPass(true, rewrite()));
      const s = vf.k.stats;
      // The driver: its first mm's PML4, and for its exec'd mm a PML4, a PDPT, a PD and two PTs (text at 0x108000
      // and the area at 0x4a2b000 are in different 2 MiB): 6. The pass's exec'd mm: a PML4, a PDPT, and a PD and a
      // PT each for the text and the stack (0x1ffefff000 is in another 1 GiB): 6. The vfork allocated none.
      expect(s.tablesAllocated.reduce((a, b) => a + b, 0)).toBe(12);
      expect(s.tablesFreed.reduce((a, b) => a + b, 0)).toBe(12);
      expect(s.execs).toBe(2);
      expect(s.exits).toBe(2);
      expect(s.forks).toBe(1);
      // demand-zero faults: the driver's N pages once each (never again after the pass), and the pass's stack page
      expect(s.faults[0]).toBe(N + 1);
    });

    it('runs a pass’s accesses before its exec in the driver’s address space', () => {
      // The area has N + 1 pages. Before its exec the pass stores to page 0 of the area (present and writable in
      // the driver's tables: no fault) and reads page N, untouched: a zero-page fault, in the driver's space (the
      // same CR3, as on hardware). The driver's store to page N after the vfork then finds the zero page there: a
      // write-protection fault that copies it. With fork, the pass's store to page 0 would copy it (a COW fault),
      // and its read of page N would map the zero page in its own copy of the tables, not in the driver's.
      const t = driverAndPass(
        true,
        [[KIND_STORE, AREA + N]],
        [
          [KIND_STORE, AREA],
          [KIND_LOAD, AREA + N],
        ],
      );
      (t.processes[0]!.events[1] as { length: number }).length = (N + 1) * 4096;
      const vf = replay(t);
      expect(vf.log.slice(N + 2)).toEqual([
        'vfork',
        `1:w:${AREA.toString(16)}`,
        `1:r:${(AREA + N).toString(16)}`,
        'exec /bin/pass',
        `2:f:${TEXT.toString(16)}`,
        `2:w:${STACK.toString(16)}`,
        `1:w:${(AREA + N).toString(16)}`,
      ]);
      const pageFaults = (page: number): number[] => [...vf.k.events].filter((e) => Math.floor(e.address / 4096) === page).map((e) => e.pid);
      // page 0: the driver's demand-zero fault only; page N: the pass's read (the zero page, mapped in the driver's
      // space, but taken by the pass: the fault log names the task that faulted, 2, as Linux's perf sample of
      // exceptions:page_fault_user names `current`) and the driver's write (W|P: a copy of the zero page)
      expect(pageFaults(AREA)).toEqual([1]);
      expect(pageFaults(AREA + N)).toEqual([2, 1]);
      expect(vf.k.stats.faults[1]).toBe(1);
    });

    it('frees nothing and writes no CR3 when a pass exits without exec', () => {
      // The pass reads the driver's page 0 and exits (vfork then _exit, as a failed exec does). Its exit releases
      // the driver (kernel/exit.c `exit_mm` -> `exit_mm_release`) and drops its reference to the driver's mm: no
      // table is freed before the driver's own exit, which frees the 6 tables of its two mms (see above).
      const vf = replay(driverAndPass(true, rewrite(), [[KIND_LOAD, AREA]], false));
      expect(vf.log.slice(N + 2)).toEqual(['vfork', `1:r:${AREA.toString(16)}`, ...Array.from({ length: N }, (_, i) => `1:w:${(AREA + i).toString(16)}`)]);
      const s = vf.k.stats;
      expect(s.tablesAllocated.reduce((a, b) => a + b, 0)).toBe(6);
      expect(s.tablesFreed.reduce((a, b) => a + b, 0)).toBe(6);
      expect(vf.wpFaults).toBe(0);
      // CR3: the driver's first mm, its exec'd mm, and the idle tables at its exit: 3. The switches to the pass,
      // away from it at its exit (the driver's mm stays loaded) and back to the driver write none.
      expect(vf.cr3).toHaveLength(3);
      expect(vf.cr3[2]).toBe(vf.k.idleRoot);
      // driver, pass, none (the pass exited), driver, idle
      expect(vf.contextSwitches).toBe(5);
      expect(s.exits).toBe(2);
    });

    it('names the vfork child, not the parent whose space it runs in, in its fault log entry and its SIGSEGV', () => {
      // A vfork child that faults before its exec is `current` in the #PF handler (arch/x86/mm/fault.c
      // `do_user_addr_fault` -> `bad_area_nosemaphore` -> `force_sig_fault(SIGSEGV)` on `current`): the signal is
      // the child's, and the parent, asleep in vfork, takes none. The areas searched are the parent's (its mm).
      const m = new Machine({ memoryBytes: 32 * 1024 * 1024, vcpus: 1, seed: 1 });
      const k = new Kernel(m, MODE_LONG4);
      const v = m.vcpus[0]!;
      const parent = k.createProcess(v, 'drv');
      k.switchTo(v, parent);
      const area = k.mmap(v, parent, null, 4096, 3, 0);
      const child = k.vfork(v, parent);
      k.switchTo(v, child);
      v.setCpl(3);
      v.touch(area, ACC_WRITE); // the parent's area: a demand-zero fault, taken by the child
      expect(() => v.touch(0x1000, ACC_WRITE)).toThrow(`SIGSEGV: pid ${child.pid} at`);
      expect([...k.events].map((e) => e.pid)).toEqual([child.pid, child.pid]);
      expect(child.pid).not.toBe(parent.pid);
    });

    it('leaves a vCPU lazily on the parent\u2019s old space idle when the parent execs, and reloads CR3 when the parent runs there', () => {
      // The pass runs on vCPU 1 and exits without exec: vCPU 1 keeps the driver's tables loaded (lazy TLB, no CR3
      // write). The driver then execs on vCPU 0: its old mm is torn down (fs/exec.c `exec_mmap` -> `mmput` ->
      // `exit_mmap`), and freeing its page tables flushes every CPU in its mm_cpumask, lazy ones included
      // (arch/x86/mm/tlb.c `flush_tlb_multi`: `info->freed_tables`), where `flush_tlb_func` switches a lazy CPU
      // to init_mm (`switch_mm_irqs_off(NULL, &init_mm, NULL)`). So vCPU 1 is on the idle tables, not on the
      // driver's new ones (which it never ran), and when the driver is next scheduled there, that is a CR3 write.
      const m = new Machine({ memoryBytes: 32 * 1024 * 1024, vcpus: 2, seed: 1 });
      const k = new Kernel(m, MODE_LONG4);
      const [v0, v1] = [m.vcpus[0]!, m.vcpus[1]!];
      const drv = k.createProcess(v0, 'drv');
      k.switchTo(v0, drv);
      const pass = k.vfork(v0, drv);
      k.switchTo(v1, pass);
      expect(v1.cr3).toBe(drv.root);
      k.exit(v1, pass);
      expect(v1.cr3).toBe(drv.root); // lazy: still the driver's tables
      k.execAreas(v0, drv, '/bin/next', []);
      expect(v0.cr3).toBe(drv.root); // the new tables, on the vCPU that execs
      expect(v1.cr3).toBe(k.idleRoot);
      expect(k.current[1]).toBeNull();
      const writes: number[] = [];
      const mov = v1.movToCr3.bind(v1);
      v1.movToCr3 = (value: number): void => {
        writes.push(value);
        mov(value);
      };
      k.switchTo(v1, drv);
      expect(writes).toEqual([drv.root]);
    });

    it('keeps the vfork flag through a .vxt file', () => {
      const t = driverAndPass(true, rewrite());
      const back = decodeVxt(encodeVxt(t), 'drv.vxt');
      expect(back.processes[0]!.events[2]).toEqual({ type: 'fork', at: N + 1, parent: 1, child: 2, vfork: true });
      expect(replay(back).log).toEqual(replay(t).log);
    });
  });
});
