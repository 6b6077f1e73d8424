import { MODE_LONG4, PAGE_SIZE, type Vcpu } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import type { Kernel, Process } from '../../src/os/kernel.js';
import { TaskRunner } from '../../src/os/tasks.js';
import { PROT_READ, PROT_WRITE, VMA_ANON } from '../../src/os/vma.js';
import { boot, user } from '../helpers.js';

/*
 * Remote TLB flushes and vCPUs in lazy TLB mode (arch/x86/mm/tlb.c, Linux 6.x). A CPU is lazy on an mm when it
 * still has the mm loaded (CR3) but runs no task of it (`enter_lazy_tlb`: `cpu_tlbstate_shared.is_lazy`); in this
 * kernel that is a vCPU on which a vfork child exited before its exec (the parent's space stays loaded, no CR3
 * write). `flush_tlb_mm_range` -> `native_flush_tlb_multi` sends a lazy CPU no IPI (`should_flush_tlb` returns
 * false for it) unless the flush frees page tables (`info->freed_tables`: then every CPU of mm_cpumask gets the
 * IPI, and `flush_tlb_func` switches a lazy one to init_mm: `switch_mm_irqs_off(NULL, &init_mm, NULL)`). A lazy
 * CPU that missed a flush catches up when it switches back to the mm: `switch_mm_irqs_off` with `prev == next`
 * and `was_lazy` compares its `tlb_gen` with the mm's and, behind, reloads CR3 with a flush.
 */

const RW = PROT_READ | PROT_WRITE;

interface Lazy {
  k: Kernel;
  v0: Vcpu;
  v1: Vcpu;
  drv: Process;
  /** One written anonymous page of the driver's, the only area of its space. */
  base: number;
  /** CR3 writes on vCPU 1 from the moment it went lazy. */
  cr3: number[];
}

/**
 * The driver runs on vCPU 0 and writes its page; its vfork child runs on vCPU 1 (the driver's space loaded there,
 * a CR3 write from the idle tables), reads the page (a TLB entry for it on vCPU 1) and exits without exec:
 * vCPU 1 is lazy on the driver's space.
 */
function lazyVcpu(): Lazy {
  const { k, m } = boot(MODE_LONG4, { vcpus: 2 });
  const [v0, v1] = [m.vcpus[0]!, m.vcpus[1]!];
  const drv = k.createProcess(v0, 'drv');
  k.switchTo(v0, drv);
  const base = k.mmap(v0, drv, null, PAGE_SIZE, RW, VMA_ANON);
  user(v0, () => v0.write(base, 4, 1));
  const pass = k.vfork(v0, drv);
  k.switchTo(v1, pass);
  user(v1, () => v1.read(base, 4));
  k.exit(v1, pass);
  expect(v1.cr3).toBe(drv.root);
  const cr3: number[] = [];
  const mov = v1.movToCr3.bind(v1);
  v1.movToCr3 = (value: number): void => {
    cr3.push(value);
    mov(value);
  };
  return { k, v0, v1, drv, base, cr3 };
}

/** Two vCPUs, a process `p` with one anonymous page at `base`, and a task runner (the scheduler-level tests). */
function twoVcpus() {
  const { m, k } = boot(MODE_LONG4, { vcpus: 2 });
  const [v0, v1] = [m.vcpus[0]!, m.vcpus[1]!];
  const p = k.createProcess(v0, 'p');
  const base = k.mmap(v0, p, null, PAGE_SIZE, RW, VMA_ANON);
  return { m, k, v0, v1, p, base, runner: new TaskRunner(m, k) };
}

/** `p`'s page at `base` made read-only from `v` (a one-page flush that frees no table): what it cost. */
function mprotectFlush(k: Kernel, v: Vcpu, watched: Vcpu, p: Process, base: number): { shootdowns: number; invlpgs: number; watchedInvlpgs: number } {
  const s0 = { shootdowns: k.stats.shootdowns, invlpgs: k.stats.invlpgs, watched: watched.tlb.invlpgs };
  k.mprotect(v, p, base, PAGE_SIZE, PROT_READ);
  return { shootdowns: k.stats.shootdowns - s0.shootdowns, invlpgs: k.stats.invlpgs - s0.invlpgs, watchedInvlpgs: watched.tlb.invlpgs - s0.watched };
}

/**
 * Two threads of `w.p`: A on vCPU 0 writes the page, waits until B is done, then makes the page read-only
 * (`flush`, watched on vCPU 1); B on vCPU 1 reads the page once A has written it, and finishes.
 */
function writerAndReader(w: ReturnType<typeof twoVcpus>) {
  const out = { bDone: false, aDone: false, flush: null as ReturnType<typeof mprotectFlush> | null };
  w.runner.start(
    w.p,
    function* (t) {
      t.write(w.base, 1);
      while (!out.bDone) yield;
      out.flush = mprotectFlush(w.k, t.vcpu, w.v1, w.p, w.base);
      out.aDone = true;
    },
    w.v0,
  );
  w.runner.start(
    w.p,
    function* (t) {
      while (w.k.stats.pageFaults === 0) yield; // A has written the page
      t.read(w.base);
      out.bDone = true;
    },
    w.v1,
  );
  return out;
}

describe('TLB flushes', () => {
  describe('.flushRange', () => {
    it('sends a vCPU lazily on the space no IPI when no page table is freed, and flushes it when the space runs there again', () => {
      const { k, v0, v1, drv, base, cr3 } = lazyVcpu();
      const s0 = { shootdowns: k.stats.shootdowns, invlpgs: k.stats.invlpgs, full: k.stats.fullFlushes };
      const i1 = v1.tlb.invlpgs;
      // mprotect(PROT_READ) of the page: its pte loses R/W (pte_needs_flush), no table is freed:
      // flush_tlb_range -> flush_tlb_mm_range(freed_tables = false). vCPU 0 flushes locally (one INVLPG:
      // 1 page <= 33); vCPU 1, lazy, is skipped by should_flush_tlb: no IPI, no INVLPG there.
      k.mprotect(v0, drv, base, PAGE_SIZE, PROT_READ);
      expect(k.stats.shootdowns - s0.shootdowns).toBe(0);
      expect(k.stats.invlpgs - s0.invlpgs).toBe(1);
      expect(v1.tlb.invlpgs - i1).toBe(0);
      expect(cr3).toEqual([]);
      // The driver runs on vCPU 1 again: the same mm, but vCPU 1 was lazy and its tlb_gen is behind the mm's
      // (the skipped flush): switch_mm_irqs_off reloads CR3 with a flush, one full flush, no IPI.
      k.switchTo(v1, drv);
      expect(cr3).toEqual([drv.root]);
      expect(k.stats.fullFlushes - s0.full).toBe(1);
      expect(k.stats.shootdowns - s0.shootdowns).toBe(0);
      // The entry vCPU 1 had cached from its read (writable, as the pte was) is gone: a write faults on the
      // read-only pte now, a SIGSEGV (the area is PROT_READ).
      expect(() => user(v1, () => v1.write(base, 4, 2))).toThrow(`SIGSEGV: pid ${drv.pid}`);
    });

    it('sends a vCPU lazily on the space an IPI when page tables are freed, and it goes to the idle tables', () => {
      const { k, v0, v1, drv, base, cr3 } = lazyVcpu();
      const s0 = { shootdowns: k.stats.shootdowns, invlpgs: k.stats.invlpgs, full: k.stats.fullFlushes };
      const i1 = v1.tlb.invlpgs;
      // munmap of the page, the driver's only area: its pte is cleared and its PT, PD and PDPT are freed
      // (free_pgtables: no area left under the PML4 entry), so freed_tables is set and native_flush_tlb_multi
      // sends the IPI to every CPU of mm_cpumask, lazy vCPU 1 included: 1 shootdown. There flush_tlb_func
      // finds the CPU lazy and switches it to init_mm (a CR3 write of the idle tables, a full flush), no INVLPG.
      // vCPU 0 flushes the range locally: from the first page mapped by the freed PDPT (pud_free_tlb at the
      // start of its 512 GiB, 0x7f8000000000) to the page's end (0x7ffff7fff000): far above 33 pages, a full
      // flush. 2 full flushes, no INVLPG.
      expect(base).toBe(0x7ffff7ffe000);
      k.munmap(v0, drv, base, PAGE_SIZE);
      expect(k.stats.tablesFreed.slice(1, 4)).toEqual(new Float64Array([1, 1, 1]));
      expect(k.stats.shootdowns - s0.shootdowns).toBe(1);
      expect(k.stats.invlpgs - s0.invlpgs).toBe(0);
      expect(v1.tlb.invlpgs - i1).toBe(0);
      expect(k.stats.fullFlushes - s0.full).toBe(2);
      expect(cr3).toEqual([k.idleRoot]);
      expect(k.current[1]).toBeNull();
      // The driver on vCPU 1 again: from init_mm to its mm, a CR3 write (switch_mm_irqs_off, prev != next).
      k.switchTo(v1, drv);
      expect(cr3).toEqual([k.idleRoot, drv.root]);
      expect(k.stats.fullFlushes - s0.full).toBe(2);
    });

    it('still sends the IPI to a vCPU that runs a task of the space', () => {
      // The same mprotect with the driver running on vCPU 1 (not lazy): should_flush_tlb is true for it
      // (loaded_mm == info->mm, not lazy): 1 shootdown, 1 INVLPG on each vCPU; the switch back to the
      // driver on vCPU 1 is then a switch within the mm (not lazy): no CR3 write.
      const { k, v0, v1, drv, base, cr3 } = lazyVcpu();
      k.switchTo(v1, drv);
      const s0 = { shootdowns: k.stats.shootdowns, invlpgs: k.stats.invlpgs };
      const i1 = v1.tlb.invlpgs;
      k.mprotect(v0, drv, base, PAGE_SIZE, PROT_READ);
      expect(k.stats.shootdowns - s0.shootdowns).toBe(1);
      expect(k.stats.invlpgs - s0.invlpgs).toBe(2);
      expect(v1.tlb.invlpgs - i1).toBe(1);
      k.switchTo(v1, drv);
      expect(cr3).toEqual([]);
    });

    it('treats a vCPU whose tasks have all finished as idle and lazy: no IPI for a flush that frees no table', () => {
      // A process with a task on each vCPU (two threads of one space). Task B on vCPU 1 reads the page (the space
      // loaded there, a TLB entry for it) and finishes; vCPU 1 has nothing left to run, so it runs the idle task,
      // which keeps the space loaded (kernel/sched/core.c context_switch -> enter_lazy_tlb). Task A on vCPU 0
      // then makes the page read-only: a one-page flush that frees no table, so should_flush_tlb is false for the
      // lazy vCPU 1: no shootdown, and one INVLPG, vCPU 0's own.
      const w = twoVcpus();
      const ab = writerAndReader(w);
      w.runner.run();
      expect(ab.flush).toEqual({ shootdowns: 0, invlpgs: 1, watchedInvlpgs: 0 });
    });

    it('switches a vCPU to its next task as soon as its task finishes: a flush of the old space no longer reaches it', () => {
      // vCPU 1 has thread B of p and a task C of another process q. When B finishes, vCPU 1 switches to q at once
      // (kernel/sched/core.c __schedule), not at C's next quantum: A's one-page mprotect on vCPU 0 then sends it
      // nothing (it runs q: should_flush_tlb is false), one INVLPG on vCPU 0 only. vCPU 1's CR3 goes p, then q.
      const w = twoVcpus();
      const { k, v1, p } = w;
      const q = k.createProcess(w.v0, 'q');
      const cr3: string[] = [];
      const mov = v1.movToCr3.bind(v1);
      v1.movToCr3 = (x: number): void => {
        cr3.push(x === p.root ? 'p' : x === q.root ? 'q' : x === k.idleRoot ? 'idle' : String(x));
        mov(x);
      };
      const ab = writerAndReader(w);
      w.runner.start(
        q,
        function* () {
          while (!ab.aDone) yield;
        },
        v1,
      );
      w.runner.run();
      expect(ab.flush).toEqual({ shootdowns: 0, invlpgs: 1, watchedInvlpgs: 0 });
      expect(cr3.slice(0, 2)).toEqual(['p', 'q']);
    });

    it('treats a vCPU whose task waits as idle and lazy, and reloads CR3 when the task runs again after a skipped flush', () => {
      // Task B of p on vCPU 1 reads the page, then waits for a child process (wait4); vCPU 1 has nothing else
      // to run, so it goes idle, lazily on p. A's one-page mprotect on vCPU 0 sends it no IPI and leaves it
      // behind; when the child exits and B runs again, switch_mm_irqs_off finds vCPU 1 behind and reloads CR3
      // (one full flush, a CR3 write of p's tables).
      const { k, v0, v1, p, base, runner } = twoVcpus();
      let bWaits = false;
      let release = false;
      let flush: ReturnType<typeof mprotectFlush> | null = null;
      let resumed: { fullFlushes: number; cr3IsP: boolean } | null = null;
      runner.start(
        p,
        function* (t) {
          t.write(base, 1);
          while (!bWaits) yield;
          yield; // B is blocked now (its quantum ended in the wait)
          flush = mprotectFlush(k, t.vcpu, v1, p, base);
          release = true;
        },
        v0,
      );
      runner.start(
        p,
        function* (t) {
          while (k.stats.pageFaults === 0) yield;
          t.read(base);
          const child = k.createProcess(t.vcpu, 'child', p);
          runner.start(
            child,
            function* () {
              while (!release) yield;
            },
            v0,
          );
          bWaits = true;
          const full = k.stats.fullFlushes;
          yield* t.wait(child);
          resumed = { fullFlushes: k.stats.fullFlushes - full, cr3IsP: v1.cr3 === p.root };
        },
        v1,
      );
      runner.run();
      expect(flush).toEqual({ shootdowns: 0, invlpgs: 1, watchedInvlpgs: 0 });
      expect(resumed).toEqual({ fullFlushes: 1, cr3IsP: true });
    });

    it('writes no CR3 when a lazy vCPU returns to the space and no flush was skipped', () => {
      // Nothing flushed the driver's space while vCPU 1 was lazy: its tlb_gen equals the mm's, and
      // switch_mm_irqs_off returns without a CR3 write.
      const { k, v1, drv, cr3 } = lazyVcpu();
      const full = k.stats.fullFlushes;
      k.switchTo(v1, drv);
      expect(cr3).toEqual([]);
      expect(k.stats.fullFlushes).toBe(full);
    });
  });

  describe('teardown of a space', () => {
    // exit (do_exit -> exit_mm -> mmput) and exec (exec_mmap, then mmput of the old mm) end in exit_mmap, whose
    // tlb_finish_mmu flushes with freed_tables: every CPU of mm_cpumask gets the IPI, a lazy one included, and
    // flush_tlb_func switches it to init_mm. One shootdown and one full flush for vCPU 1, and a CR3 write of the
    // idle tables there.
    it('sends a vCPU lazily on the space an IPI when the process exits', () => {
      const { k, v0, drv, cr3 } = lazyVcpu();
      const s0 = { shootdowns: k.stats.shootdowns, fullFlushes: k.stats.fullFlushes };
      k.exit(v0, drv);
      expect([k.stats.shootdowns - s0.shootdowns, k.stats.fullFlushes - s0.fullFlushes]).toEqual([1, 1]);
      expect(cr3).toEqual([k.idleRoot]);
    });

    it('sends a vCPU lazily on the space an IPI when the process execs (its old tables are freed)', () => {
      const { k, v0, drv, cr3 } = lazyVcpu();
      const s0 = { shootdowns: k.stats.shootdowns, fullFlushes: k.stats.fullFlushes };
      k.exec(v0, drv, { path: '/bin/x', textPages: 1, dataPages: 0, bssPages: 0, stackPages: 1 });
      expect([k.stats.shootdowns - s0.shootdowns, k.stats.fullFlushes - s0.fullFlushes]).toEqual([1, 1]);
      expect(cr3).toEqual([k.idleRoot]);
    });
  });

  describe('.flushMm', () => {
    it('sends a vCPU lazily on the space an IPI at fork, and it goes to the idle tables (flush_tlb_mm frees tables)', () => {
      // dup_mmap ends with flush_tlb_mm(oldmm), which x86 defines as flush_tlb_mm_range(mm, 0, TLB_FLUSH_ALL,
      // 0, true): freed_tables is true, so lazy vCPU 1 gets the IPI (1 shootdown) and switches to init_mm (a
      // CR3 write of the idle tables); vCPU 0 reloads its own CR3: 2 full flushes.
      const { k, v0, v1, drv, cr3 } = lazyVcpu();
      const s0 = { shootdowns: k.stats.shootdowns, full: k.stats.fullFlushes };
      const child = k.fork(v0, drv);
      expect(k.stats.shootdowns - s0.shootdowns).toBe(1);
      expect(k.stats.fullFlushes - s0.full).toBe(2);
      expect(cr3).toEqual([k.idleRoot]);
      expect(k.current[1]).toBeNull();
      k.switchTo(v1, drv);
      expect(cr3).toEqual([k.idleRoot, drv.root]);
      expect(child.root).not.toBe(drv.root);
    });
  });
});
