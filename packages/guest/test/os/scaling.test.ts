import { ACC_WRITE, Machine, MODE_LONG4, PAGE_SIZE, type Vcpu } from '@vmexit/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Kernel, type AreaSpec, type Process } from '../../src/os/kernel.js';
import { Task, TaskRunner, type ProgramFactory } from '../../src/os/tasks.js';
import { PROT_READ, PROT_WRITE, VMA_ANON, VMA_FILE_PRIVATE, Vma, VmaList, type FileObject } from '../../src/os/vma.js';
import { boot } from '../helpers.js';

/*
 * A valid trace may list 100,000 areas in an exec, or have 100,000 processes. The area searches and the task
 * runner's choice of the next task used to scan every area or every task: n operations cost n^2. These tests
 * count the work through the `steps` counters (areas or tree nodes looked at), so they do not depend on the
 * wall clock, and check against the former algorithms, kept here as references, that the results are the same.
 */

const RW = PROT_READ | PROT_WRITE;
const N = 20_000;
const LOG_N = Math.ceil(Math.log2(N)); // 15

/** A seeded generator (mulberry32). */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('VmaList', () => {
  it('maps, mprotects, munmaps and re-mmaps 20,000 areas in O(log n) steps each', () => {
    const { k, v } = boot(MODE_LONG4, { memory: 64 * 1024 * 1024 });
    const p = k.createProcess(v, 'p');
    k.switchTo(v, p);
    // one page every other page, so that no two areas merge
    const at = (i: number): number => 0x10000000 + 2 * i * PAGE_SIZE;
    const areas: AreaSpec[] = [];
    for (let i = 0; i < N; i++) areas.push({ start: at(i), end: at(i) + PAGE_SIZE, prot: RW, backing: VMA_ANON, file: null, offset: 0, growsDown: false });
    k.execAreas(v, p, '/bin/many', areas);
    expect(p.vmas.list.length).toBe(N);
    const s0 = p.vmas.steps;
    // exec: per area one search in intersects (mapAreas) and two in insert, each at most log2(n) + 1 steps,
    // plus the area intersects looks at: under 4 (log2(n) + 1) = 64 a step; a scan would be n / 2 on average.
    expect(s0).toBeLessThan(N * 4 * (LOG_N + 1));
    for (let i = 0; i < N; i++) k.mprotect(v, p, at(i), PAGE_SIZE, PROT_READ);
    expect(p.vmas.list.every((a) => a.prot === PROT_READ)).toBe(true);
    // mprotect: carve (a search and the area), mergeAdjacent (a search for each of the changed area's pairs)
    const s1 = p.vmas.steps - s0;
    expect(s1).toBeLessThan(N * 4 * (LOG_N + 2));
    // mmap in each hole (MAP_FIXED): the areas now touch but differ in rights, so none merge
    for (let i = 0; i < N; i++) k.mmap(v, p, at(i) + PAGE_SIZE, PAGE_SIZE, RW, VMA_ANON);
    expect(p.vmas.list.length).toBe(2 * N);
    const s2 = p.vmas.steps - s0 - s1;
    expect(s2).toBeLessThan(N * 4 * (LOG_N + 2));
    // munmap the first pages again: each is one carve and one remove
    for (let i = 0; i < N; i++) k.munmap(v, p, at(i), PAGE_SIZE);
    expect(p.vmas.list.length).toBe(N);
    const s3 = p.vmas.steps - s0 - s1 - s2;
    expect(s3).toBeLessThan(N * 4 * (LOG_N + 2));
    // every operation above scanning the list would be over n^2 / 4 = 10^8 steps in all
    expect(p.vmas.steps).toBeLessThan(N * 16 * (LOG_N + 2));
  });

  it('gives the same areas as the former linear scans, over 20,000 random operations', () => {
    // Random inserts (some overlapping: both throw alike), mprotect-like and munmap-like carves, anon and end
    // changes, merges, find, intersects, findGap and findGapTopDown: after each, the two lists hold the same areas.
    const r = rng(1);
    const list = new VmaList();
    const ref = new RefList();
    const page = (): number => Math.floor(r() * 4000) * PAGE_SIZE;
    const same = (): void => {
      expect(list.list.map(show)).toEqual(ref.list.map(show));
    };
    for (let step = 0; step < N; step++) {
      const a = page();
      const len = (1 + Math.floor(r() * 8)) * PAGE_SIZE;
      const prot = r() < 0.5 ? RW : PROT_READ;
      const op = Math.floor(r() * 8);
      if (op === 0 || op === 1) {
        const make = (): Vma => new Vma(a, a + len, prot, VMA_ANON, null, 0);
        let e1 = '';
        let e2 = '';
        try {
          list.insert(make());
        } catch (e) {
          e1 = (e as Error).message;
        }
        try {
          ref.insert(make());
        } catch (e) {
          e2 = (e as Error).message;
        }
        expect(e1).toBe(e2);
      } else if (op === 2) {
        for (const x of list.carve(a, a + len)) x.prot = prot;
        for (const x of ref.carve(a, a + len)) x.prot = prot;
        list.mergeAdjacent();
        ref.mergeAdjacent();
      } else if (op === 3) {
        list.remove(list.carve(a, a + len));
        ref.remove(ref.carve(a, a + len));
      } else if (op === 4) {
        // a fault installs an anonymous page (fault.ts sets vma.anon), or brk grows an area up to its neighbour
        const x = list.find(a);
        const y = ref.find(a);
        expect(x === null).toBe(y === null);
        if (x !== null && y !== null) {
          if (r() < 0.5) {
            x.anon = true;
            y.anon = true;
          } else if (!list.intersects(x.end, x.end + len)) {
            expect(ref.intersects(y.end, y.end + len)).toBe(false);
            x.end += len;
            y.end += len;
          }
        }
      } else if (op === 5) {
        list.mergeAdjacent();
        ref.mergeAdjacent();
      } else if (op === 6) {
        expect(list.intersects(a, a + len)).toBe(ref.intersects(a, a + len));
        expect(list.intersects(a + len, a)).toBe(ref.intersects(a + len, a));
      } else {
        expect(list.findGap(a, len, 4100 * PAGE_SIZE)).toBe(ref.findGap(a, len, 4100 * PAGE_SIZE));
        // top-down: below the end of the space, and below a limit near `a` with a floor under it
        expect(list.findGapTopDown(a, len, 4100 * PAGE_SIZE)).toBe(ref.findGapTopDown(a, len, 4100 * PAGE_SIZE));
        const floor = Math.max(0, a - 64 * PAGE_SIZE);
        expect(list.findGapTopDown(floor, len, a + 16 * PAGE_SIZE)).toBe(ref.findGapTopDown(floor, len, a + 16 * PAGE_SIZE));
        expect(list.find(a)).toBe(list.list[ref.list.indexOf(ref.find(a)!)] ?? null);
      }
      if (step % 16 === 0) same();
    }
    same();
    // Each operation is a few binary searches over some 700 areas (10 steps each) and the areas it changes:
    // 319,016 steps in all for this seed, against 12,996,702 when the list scans.
    expect(list.steps).toBeLessThan(N * 20);
  });

  /** One operation of the property below: an area [page, page + len) of 64 pages, its rights and backing. */
  interface Op {
    op: number;
    page: number;
    len: number;
    write: boolean;
    file: boolean;
  }
  const FILE: FileObject = { id: 1, path: '/f', pages: new Map(), ra: { filePages: 0, marked: new Set(), start: 0, size: 0, asyncSize: 0, mmapMiss: 0 } };
  const opArb: fc.Arbitrary<Op> = fc.record({ op: fc.nat(8), page: fc.nat(63), len: fc.integer({ min: 1, max: 8 }), write: fc.boolean(), file: fc.boolean() });

  it('inserts, removes, merges and finds gaps as the former linear scans do (fast-check)', () => {
    // Short random sequences in a 64-page space, so that areas collide, touch and merge; file areas at the
    // file offset of their address, so that neighbours of one file continue each other. After each operation
    // the tree holds the same areas as the reference, and every query answered the same.
    fc.assert(
      fc.property(fc.array(opArb, { minLength: 1, maxLength: 120, size: 'max' }), (ops) => {
        const list = new VmaList();
        const ref = new RefList();
        for (const { op, page, len: n, write, file } of ops) {
          const a = page * PAGE_SIZE;
          const len = n * PAGE_SIZE;
          const prot = write ? RW : PROT_READ;
          if (op <= 1) {
            const make = (): Vma => (file ? new Vma(a, a + len, prot, VMA_FILE_PRIVATE, FILE, a) : new Vma(a, a + len, prot, VMA_ANON, null, 0));
            const e1 = attempt(() => list.insert(make()));
            const e2 = attempt(() => ref.insert(make()));
            expect(e1).toBe(e2);
          } else if (op === 2) {
            for (const x of list.carve(a, a + len)) x.prot = prot;
            for (const x of ref.carve(a, a + len)) x.prot = prot;
            list.mergeAdjacent();
            ref.mergeAdjacent();
          } else if (op === 3) {
            list.remove(list.carve(a, a + len));
            ref.remove(ref.carve(a, a + len));
          } else if (op === 4) {
            const x = list.find(a);
            const y = ref.find(a);
            expect(x === null ? null : show(x)).toEqual(y === null ? null : show(y));
            if (x !== null && y !== null && !list.intersects(x.end, x.end + len)) {
              expect(ref.intersects(y.end, y.end + len)).toBe(false);
              x.end += len;
              y.end += len;
            }
          } else if (op === 5) {
            list.mergeAdjacent();
            ref.mergeAdjacent();
          } else if (op === 6) {
            expect(list.intersects(a, a + len)).toBe(ref.intersects(a, a + len));
          } else if (op === 7) {
            // every length from here and from 0, under two limits; top-down too, checked against every page
            for (const from of [0, a]) {
              for (let l = 1; l <= 8; l++) {
                for (const limit of [32 * PAGE_SIZE, 80 * PAGE_SIZE]) {
                  expect(list.findGap(from, l * PAGE_SIZE, limit)).toBe(ref.findGap(from, l * PAGE_SIZE, limit));
                  const top = list.findGapTopDown(from, l * PAGE_SIZE, limit);
                  expect(top).toBe(ref.findGapTopDown(from, l * PAGE_SIZE, limit));
                  expect(top).toBe(highestFreeByPage(ref, from, l * PAGE_SIZE, limit));
                }
              }
            }
          } else {
            const x = list.find(a);
            if (x !== null) x.anon = true;
            const y = ref.find(a);
            if (y !== null) y.anon = true;
          }
          expect(list.list.map(show)).toEqual(ref.list.map(show));
          expect(list.size).toBe(ref.list.length);
        }
      }),
      { numRuns: 200, seed: 1 },
    );
  });

  it('leaves the tree alone on an anonymous fault in an area that has its anon_vma already', () => {
    // mm/memory.c `do_anonymous_page` -> `vmf_anon_prepare`: `anon_vma_prepare` does something only while
    // `vma->anon_vma` is NULL, the first fault of the area; later faults change nothing about the area. The
    // first sets `anon` (a change `mergeAdjacent` must see: the tree recomputes the area's gap and the next
    // area's, 2 updates); each of the 63 later faults used to set it again and cost as much, a walk to the root
    // and two neighbour searches per fault.
    const { k, v } = boot(MODE_LONG4, { memory: 64 * 1024 * 1024 });
    const p = k.createProcess(v, 'p');
    k.switchTo(v, p);
    for (let i = 0; i < 100; i++) k.mmap(v, p, 0x10000000 + 2 * i * PAGE_SIZE, PAGE_SIZE, RW, VMA_ANON);
    const a = k.mmap(v, p, 0x20000000, 64 * PAGE_SIZE, RW, VMA_ANON);
    k.mmap(v, p, 0x30000000, PAGE_SIZE, RW, VMA_ANON); // an area after it, whose gap is updated with its own
    const tree = (p.vmas as unknown as { tree: { updateGap: (n: unknown) => void } }).tree;
    let updates = 0;
    const updateGap = tree.updateGap.bind(tree);
    tree.updateGap = (n): void => {
      updates++;
      updateGap(n);
    };
    v.setCpl(3);
    for (let i = 0; i < 64; i++) v.touch(a + i * PAGE_SIZE, ACC_WRITE);
    v.setCpl(0);
    expect(k.stats.faults[0]).toBe(64);
    expect(updates).toBe(2);
  });

  it('maps 100,000 areas with MAP_FIXED, and 100,000 at the highest free address below mmap_base, in O(log n) steps each', () => {
    // MAP_FIXED from the top down, one page every other page: each area goes before all the others (an array
    // insert moves them all: about 13 s for the two loops' former list, now well under one). mmap(NULL): the
    // highest gap below mmapBase (top-down, as Linux), under all the areas packed there (a scan would look at
    // each: 5 * 10^9 steps, about two minutes).
    const M = 100_000;
    const LOG_M = Math.ceil(Math.log2(M)); // 17
    const { k, v } = boot(MODE_LONG4, { memory: 64 * 1024 * 1024 });
    const p = k.createProcess(v, 'fixed');
    k.switchTo(v, p);
    let t = performance.now();
    for (let i = M - 1; i >= 0; i--) k.mmap(v, p, 0x10000000 + 2 * i * PAGE_SIZE, PAGE_SIZE, RW, VMA_ANON);
    const fixedMs = performance.now() - t;
    expect(p.vmas.size).toBe(M);
    // intersects and insert: two descents of the tree, under 1.45 log2(n + 2) + 1 nodes each
    expect(p.vmas.steps).toBeLessThan(M * 4 * (LOG_M + 2));
    const q = k.createProcess(v, 'packed');
    k.switchTo(v, q);
    const base = k.mmap(v, q, null, PAGE_SIZE, RW, VMA_ANON);
    t = performance.now();
    let wrong = 0;
    // each area right under the one before: the first ends at mmap_base, 0x7ffff7fff000 (mmap.test.ts)
    expect(base).toBe(0x7ffff7ffe000);
    for (let i = 1; i < M; i++) if (k.mmap(v, q, null, PAGE_SIZE, RW, VMA_ANON) !== base - i * PAGE_SIZE) wrong++;
    const packedMs = performance.now() - t;
    expect(wrong).toBe(0);
    expect(q.vmas.size).toBe(M);
    // findGapTopDown: a descent to the last area below mmap_base and a climb from it looking for a gap large
    // enough (there is none: the area goes under the first); firstFrom (is the area above a stack, whose guard
    // gap must stay free): a descent; intersects and insert: a descent each and the gaps' updates. Five
    // descents or climbs, each under 1.45 log2(n + 2) + 1 nodes (about 77 nodes an mmap in all here).
    expect(q.vmas.steps).toBeLessThan(M * 5 * (LOG_M + 2));
    console.log(`VmaList: ${M} MAP_FIXED mmaps in ${fixedMs.toFixed(0)} ms, ${M} mmap(NULL) in ${packedMs.toFixed(0)} ms`);
  });
});

/** The message of what `f` throws, or ''. */
function attempt(f: () => void): string {
  try {
    f();
    return '';
  } catch (e) {
    return (e as Error).message;
  }
}

describe('TaskRunner', () => {
  /** A chain: each process forks the next and waits for it; the last one exits, then each in turn. */
  const chain =
    (depth: number, log: number[] | null): ProgramFactory =>
    (t) =>
      (function* () {
        log?.push(t.proc.pid);
        t.tick();
        if (depth > 0) {
          const child = t.fork(chain(depth - 1, log));
          yield;
          log?.push(t.proc.pid);
          yield* t.wait(child);
        }
        log?.push(-t.proc.pid);
      })();

  it('runs a chain of 20,000 waiting processes in O(log n) steps a quantum', () => {
    const m = new Machine({ memoryBytes: 256 * 1024 * 1024, vcpus: 4, seed: 3 });
    const k = new Kernel(m, MODE_LONG4);
    let quanta = 0;
    const runner = new TaskRunner(m, k, { onQuantum: () => quanta++ });
    runner.start(k.createProcess(m.vcpus[0]!, 'init'), chain(N, null));
    runner.run();
    expect(k.stats.exits).toBe(N + 1);
    // Each quantum: a firstFrom and a last in two trees of depth log2(n / 4 vCPUs) <= 13, and the set() of
    // the task that blocks, finishes or wakes (up to 14 nodes each); the trees double as the lists grow.
    // Every task used to be looked at in each quantum: 20,000 waiting tasks, over 10^8 steps in all.
    // three quanta a process (fork, wait, exit), two when its child has exited before it waits; one for the last
    expect(quanta).toBeGreaterThan(2 * N);
    expect(quanta).toBeLessThanOrEqual(3 * N + 1);
    expect(runner.steps).toBeLessThan(quanta * 8 * (LOG_N + 1));
  });

  it('runs the tasks in the same order as the former scans, with waits and lists over 64 long', () => {
    // 4 vCPUs, 3 chains of 150 processes, 300 short tasks, and 6 tasks that fork 120 short ones each, one a
    // quantum: over 64 tasks a vCPU, finished ones dropped, new ones started after finished ones.
    const scenario = (make: (m: Machine, k: Kernel) => { start(p: Process, f: ProgramFactory, v?: Vcpu): unknown; run(): void }): number[] => {
      const m = new Machine({ memoryBytes: 64 * 1024 * 1024, vcpus: 4, seed: 11 });
      const k = new Kernel(m, MODE_LONG4);
      const runner = make(m, k);
      const log: number[] = [];
      for (let c = 0; c < 3; c++) runner.start(k.createProcess(m.vcpus[0]!, `chain${c}`), chain(150, log));
      for (let i = 0; i < 300; i++) {
        runner.start(k.createProcess(m.vcpus[0]!, `short${i}`), (t) =>
          (function* () {
            for (let j = 0; j <= i % 5; j++) {
              log.push(1e6 + t.proc.pid);
              yield;
            }
          })(),
        );
      }
      // spawners fork a short child each quantum: new tasks come after finished ones at the lists' ends
      for (let i = 0; i < 6; i++) {
        runner.start(k.createProcess(m.vcpus[0]!, `spawner${i}`), (t) =>
          (function* () {
            for (let j = 0; j < 120; j++) {
              log.push(2e6 + t.proc.pid);
              t.fork((c) =>
                (function* () {
                  for (let q = 0; q < ((i + j) % 3) + 1; q++) {
                    log.push(3e6 + c.proc.pid);
                    yield;
                  }
                })(),
              );
              yield;
            }
          })(),
        );
      }
      runner.run();
      return log;
    };
    const now = scenario((m, k) => new TaskRunner(m, k, { quantumMin: 1, quantumMax: 3 }));
    const before = scenario((m, k) => new RefRunner(m, k));
    expect(now.length).toBe(before.length);
    expect(now).toEqual(before);
  });
});

const show = (a: Vma): string => `${a.start}-${a.end}:${a.prot}${a.anon ? 'a' : ''}`;

/** The former VmaList: linear scans (the reference the binary searches must agree with). */
class RefList {
  readonly list: Vma[] = [];
  private last: Vma | null = null;
  find(va: number): Vma | null {
    const l = this.last;
    if (l !== null && va >= l.start && va < l.end) return l;
    const a = this.list;
    let lo = 0;
    let hi = a.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const v = a[mid]!;
      if (va < v.start) hi = mid - 1;
      else if (va >= v.end) lo = mid + 1;
      else {
        this.last = v;
        return v;
      }
    }
    return null;
  }
  intersects(start: number, end: number): boolean {
    for (const v of this.list) if (v.start < end && v.end > start) return true;
    return false;
  }
  insert(vma: Vma): void {
    if (this.intersects(vma.start, vma.end)) throw new Error(`vma [${vma.start.toString(16)}, ${vma.end.toString(16)}) overlaps an existing one`);
    let i = 0;
    while (i < this.list.length && this.list[i]!.start < vma.start) i++;
    this.list.splice(i, 0, vma);
  }
  carve(start: number, end: number): Vma[] {
    this.last = null;
    const out: Vma[] = [];
    for (let i = 0; i < this.list.length; i++) {
      const v = this.list[i]!;
      if (v.end <= start || v.start >= end) continue;
      if (v.start < start) {
        const right = v.clone();
        right.offset = v.offset + (start - v.start);
        right.start = start;
        v.end = start;
        this.list.splice(i + 1, 0, right);
        continue;
      }
      if (v.end > end) {
        const right = v.clone();
        right.offset = v.offset + (end - v.start);
        right.start = end;
        v.end = end;
        this.list.splice(i + 1, 0, right);
      }
      out.push(v);
    }
    return out;
  }
  remove(areas: readonly Vma[]): void {
    this.last = null;
    const gone = new Set(areas);
    let j = 0;
    for (let i = 0; i < this.list.length; i++) if (!gone.has(this.list[i]!)) this.list[j++] = this.list[i]!;
    this.list.length = j;
  }
  mergeAdjacent(): void {
    this.last = null;
    const a = this.list;
    let j = 0;
    for (let i = 0; i < a.length; i++) {
      const v = a[i]!;
      const p = j > 0 ? a[j - 1]! : null;
      if (
        p !== null &&
        p.end === v.start &&
        p.prot === v.prot &&
        p.backing === v.backing &&
        p.file === v.file &&
        p.anon === v.anon &&
        p.growsDown === v.growsDown &&
        (p.file === null || p.offset + (p.end - p.start) === v.offset)
      ) {
        p.end = v.end;
        continue;
      }
      a[j++] = v;
    }
    a.length = j;
  }
  findGap(from: number, length: number, limit: number): number {
    let at = from;
    for (const v of this.list) {
      if (v.end <= at) continue;
      if (v.start >= at + length) break;
      at = v.end;
    }
    return at + length <= limit ? at : -1;
  }
  /**
   * The top-down search, by its definition: the highest free range ends at `high` or where an area starts
   * (else it could move up), so each of those ends is tried, from the highest, until one leaves a range in
   * [low, high) that meets no area.
   */
  findGapTopDown(low: number, length: number, high: number): number {
    const ends = [high, ...this.list.map((v) => v.start).filter((s) => s < high)].sort((x, y) => y - x);
    for (const end of ends) {
      const at = end - length;
      if (at < low) return -1;
      if (!this.intersects(at, end)) return at;
    }
    return -1;
  }
}

/**
 * The highest start in [low, high - length] of a free range of `length` bytes, trying every page from the top
 * (page-aligned areas and lengths only), or -1: the meaning of `findGapTopDown`, with no search at all.
 */
function highestFreeByPage(ref: RefList, low: number, length: number, high: number): number {
  for (let at = high - length; at >= low; at -= PAGE_SIZE) if (!ref.intersects(at, at + length)) return at;
  return -1;
}

/** The former TaskRunner's scheduling: every task looked at in each quantum (the reference for the order). */
class RefRunner {
  private readonly perVcpu: Task[][];
  private readonly rr: number[];
  private nextVcpu = 0;
  constructor(
    readonly machine: Machine,
    readonly kernel: Kernel,
  ) {
    this.perVcpu = machine.vcpus.map(() => []);
    this.rr = machine.vcpus.map(() => 0);
  }
  start(proc: Process, program: ProgramFactory, vcpu?: Vcpu): Task {
    const v = vcpu ?? this.machine.vcpus[this.nextVcpu++ % this.machine.vcpus.length]!;
    const t = new Task(this as unknown as TaskRunner, proc, v);
    t.program = program(t);
    proc.threads++;
    this.perVcpu[v.id]!.push(t);
    return t;
  }
  private runnable(t: Task): boolean {
    return !t.done && (t.waitingFor === null || t.waitingFor.exited);
  }
  run(): void {
    const vcpus = this.machine.vcpus;
    for (;;) {
      const ready: number[] = [];
      for (let i = 0; i < vcpus.length; i++) if (this.perVcpu[i]!.some((t) => this.runnable(t))) ready.push(i);
      if (ready.length === 0) return;
      const vi = ready[this.machine.scheduler.pick(ready.length)]!;
      const list = this.perVcpu[vi]!;
      let t: Task | undefined;
      for (let k = 0; k < list.length; k++) {
        const c = list[(this.rr[vi]! + k) % list.length]!;
        if (this.runnable(c)) {
          t = c;
          this.rr[vi] = (this.rr[vi]! + k + 1) % list.length;
          break;
        }
      }
      this.kernel.switchTo(t!.vcpu, t!.proc);
      t!.budget = this.machine.scheduler.quantum(1, 3);
      t!.vcpu.setCpl(3);
      const r = t!.program.next();
      t!.vcpu.setCpl(0);
      if (r.done === true) {
        t!.done = true;
        t!.proc.threads--;
        if (t!.proc.threads === 0) this.kernel.exit(t!.vcpu, t!.proc);
      }
      if (list.length > 64) {
        const next = this.rr[vi]!;
        let kept = 0;
        let nextKept = 0;
        for (let i = 0; i < list.length; i++) {
          if (i === next) nextKept = kept;
          if (!list[i]!.done) list[kept++] = list[i]!;
        }
        if (kept !== list.length) {
          list.length = kept;
          this.rr[vi] = kept === 0 ? 0 : nextKept % kept;
        }
      }
    }
  }
}
