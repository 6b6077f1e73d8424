import type { VxtEvent, VxtExecEvent, VxtMapping, VxtTrace } from './types.js';
import { KIND_LOAD, PROT_EXEC, PROT_READ, PROT_WRITE, VXT_PAGE_SHIFT } from './types.js';

/**
 * Where valgrind 3.19 (amd64) puts a client, as observed in the recordings here: a PIE executable at
 * 0x108000 (a non-PIE one at its link address, 0x400000), ld.so at 0x4000000, the brk heap right after
 * ld.so, the client's mmaps from 0x4800000 up, the stack just below 0x1fff001000. Used only to name the
 * inferred regions.
 */
const INTERP_BASE = 0x4000000;
const MMAP_BASE = 0x4800000;
const STACK_ZONE = 0x1000000000;

/** Untouched pages that may separate two touched pages of one inferred mapping (64 KiB). */
const MAX_GAP_PAGES = 16;

/** Sorted, disjoint [start, end) intervals of addresses: what the trace's own syscalls have mapped. */
class Intervals {
  constructor(
    readonly starts: number[] = [],
    readonly ends: number[] = [],
  ) {}
  clone(): Intervals {
    return new Intervals([...this.starts], [...this.ends]);
  }
  /** Index of the last interval with start <= a, or -1. */
  private find(a: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    let r = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.starts[mid]! <= a) {
        r = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return r;
  }
  covers(a: number): boolean {
    const i = this.find(a);
    return i >= 0 && a < this.ends[i]!;
  }
  remove(s: number, e: number): void {
    const S: number[] = [];
    const E: number[] = [];
    for (let i = 0; i < this.starts.length; i++) {
      const a = this.starts[i]!;
      const b = this.ends[i]!;
      if (b <= s || a >= e) {
        S.push(a);
        E.push(b);
        continue;
      }
      if (a < s) {
        S.push(a);
        E.push(s);
      }
      if (b > e) {
        S.push(e);
        E.push(b);
      }
    }
    this.starts.splice(0, this.starts.length, ...S);
    this.ends.splice(0, this.ends.length, ...E);
  }
  add(s: number, e: number): void {
    if (e <= s) return;
    this.remove(s, e);
    const i = this.find(s) + 1;
    this.starts.splice(i, 0, s);
    this.ends.splice(i, 0, e);
  }
}

/** One image (an exec) and the pages its address space touched outside every syscall-made mapping. */
interface Image {
  readonly exec: VxtExecEvent;
  /** page -> PROT bits the accesses to it need */
  readonly pages: Map<number, number>;
}

/** An address space while the pass walks a process: mapped intervals, the image, pages seen. */
interface Space {
  mapped: Intervals;
  image: Image | null;
  brkBase: number;
  brkTop: number;
  /** page -> -1 (inside a mapping the trace made) or 1 (an initial-mapping page of `image`) */
  seen: Map<number, number>;
}

const PROT_OF_KIND = [PROT_READ | PROT_EXEC, PROT_READ, PROT_READ | PROT_WRITE, PROT_READ | PROT_WRITE];

/**
 * Fills in `mappings` of every exec event of `trace`: each image's pages that were touched (by the image
 * or by a fork child before it exec'd) while no mmap or brk of the trace covered them belong to what
 * valgrind's loader mapped. They are grouped into regions by valgrind's layout (one zone each for the
 * executable, ld.so and the stack; elsewhere touched pages at most 64 KiB apart), never code and written
 * data in one region (they are different ELF segments), with the protection the accesses need (READ, plus EXEC if fetched from, WRITE if stored to), and named by
 * valgrind's layout. The extent of a region is that of its touched pages: pages that were never touched
 * cannot matter to the replay.
 */
export function inferInitialMappings(trace: VxtTrace): void {
  const { kind, page } = trace.accesses;
  const atFork = new Map<number, Space>();
  const images: Image[] = [];
  for (const proc of trace.processes) {
    let sp: Space = atFork.get(proc.pid) ?? {
      mapped: new Intervals(),
      image: null,
      brkBase: -1,
      brkTop: -1,
      seen: new Map(),
    };
    const events = proc.events;
    let ei = 0;
    const apply = (e: VxtEvent): void => {
      switch (e.type) {
        case 'mmap':
          sp.mapped.add(e.start, e.start + e.length);
          break;
        case 'munmap':
          sp.mapped.remove(e.start, e.start + e.length);
          break;
        case 'brk':
          if (sp.brkBase < 0) sp.brkBase = sp.brkTop = e.result;
          if (e.result > sp.brkTop) sp.mapped.add(sp.brkTop, e.result);
          else if (e.result < sp.brkTop && e.result >= sp.brkBase) sp.mapped.remove(e.result, sp.brkTop);
          sp.brkTop = Math.max(e.result, sp.brkBase);
          break;
        case 'fork':
          atFork.set(e.child, {
            mapped: sp.mapped.clone(),
            image: sp.image,
            brkBase: sp.brkBase,
            brkTop: sp.brkTop,
            seen: new Map(sp.seen),
          });
          break;
        case 'exec': {
          const image: Image = { exec: e, pages: new Map() };
          images.push(image);
          sp = { mapped: new Intervals(), image, brkBase: -1, brkTop: -1, seen: new Map() };
          break;
        }
        case 'mprotect':
        case 'wait':
        case 'exit':
          break;
      }
    };
    for (let i = proc.recordStart; i < proc.recordEnd; i++) {
      while (ei < events.length && events[ei]!.at <= i) apply(events[ei++]!);
      const pg = page[i]!;
      const k = kind[i]!;
      const v = sp.seen.get(pg);
      if (v === undefined) {
        if (sp.mapped.covers(pg * 4096) || sp.image === null) sp.seen.set(pg, -1);
        else {
          sp.seen.set(pg, 1);
          sp.image.pages.set(pg, PROT_OF_KIND[k]!);
        }
      } else if (v > 0 && k !== KIND_LOAD) {
        const pages = sp.image!.pages;
        pages.set(pg, pages.get(pg)! | PROT_OF_KIND[k]!);
      }
    }
    while (ei < events.length) apply(events[ei++]!);
  }
  for (const im of images) (im.exec as { mappings: readonly VxtMapping[] }).mappings = regions(im);
}

function regions(im: Image): VxtMapping[] {
  const pages = [...im.pages.keys()].sort((a, b) => a - b);
  const out: VxtMapping[] = [];
  let i = 0;
  while (i < pages.length) {
    let j = i;
    let prot = im.pages.get(pages[i]!)!;
    for (;;) {
      if (j + 1 >= pages.length || zone(pages[j + 1]!) !== zone(pages[i]!)) break;
      // the loader's regions (exe, ld.so, stack) are whole; elsewhere a gap of untouched pages splits
      if (zone(pages[i]!) === 'other' && pages[j + 1]! - pages[j]! > MAX_GAP_PAGES + 1) break;
      // code (fetched) and data (stored to) are different ELF segments: never one writable+executable region
      const merged = prot | im.pages.get(pages[j + 1]!)!;
      if ((merged & (PROT_EXEC | PROT_WRITE)) === (PROT_EXEC | PROT_WRITE)) break;
      prot = merged;
      j++;
    }
    const start = pages[i]! * 2 ** VXT_PAGE_SHIFT;
    const length = (pages[j]! - pages[i]! + 1) * 2 ** VXT_PAGE_SHIFT;
    const z = zone(pages[i]!);
    out.push({ start, length, prot, role: z, file: z === 'exe' ? im.exec.path : null });
    i = j + 1;
  }
  return out;
}

function zone(pg: number): VxtMapping['role'] {
  const a = pg * 4096;
  if (a >= STACK_ZONE) return 'stack';
  if (a < INTERP_BASE) return 'exe';
  if (a < MMAP_BASE) return 'interp';
  return 'other';
}
