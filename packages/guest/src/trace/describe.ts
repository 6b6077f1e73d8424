import type { VxtEvent, VxtTrace } from './types.js';
import { KIND_NAMES } from './types.js';

/** What `vmexit trace info` prints (also as JSON). */
export interface VxtDescription {
  /** How accesses were collapsed into records. */
  readonly collapse: VxtTrace['collapse'];
  readonly source: { readonly tool: string; readonly command: string };
  /** Access records in the trace. */
  readonly records: number;
  /** Accesses the records stand for (the sum of the counts). */
  readonly accesses: number;
  /** Accesses by kind (fetch, load, store, modify). */
  readonly accessesByKind: Readonly<Record<(typeof KIND_NAMES)[number], number>>;
  /** Distinct 4 KiB pages touched, over all processes (by virtual page number). */
  readonly distinctPages: number;
  /** Events by type over all processes. */
  readonly events: Readonly<Record<VxtEvent['type'], number>>;
  /** One entry per process, parents before children. */
  readonly processes: readonly {
    readonly pid: number;
    readonly parent: number;
    /** The images it ran, in order (the paths of its exec events). */
    readonly images: readonly string[];
    readonly records: number;
    readonly accesses: number;
    readonly distinctPages: number;
    readonly events: number;
    /** Exit status, or null (killed by a signal: see `signal`). */
    readonly status: number | null;
    readonly signal: number | null;
  }[];
  /** The process tree drawn with indentation, one line per process. */
  readonly tree: readonly string[];
  /** Sizes: the file, the in-memory columns (13 bytes per record), and bytes per represented access. */
  readonly size: {
    readonly fileBytes: number | null;
    readonly columnBytes: number;
    readonly ratio: number | null;
    readonly bytesPerAccess: number | null;
  };
}

/** Summarises a trace; `fileBytes` is the size of its `.vxt` file when known (for the compression ratio). */
export function describeVxt(trace: VxtTrace, fileBytes: number | null = null): VxtDescription {
  const { kind, page, count } = trace.accesses;
  const byKind = [0, 0, 0, 0];
  const all = new Set<number>();
  const events: Record<VxtEvent['type'], number> = {
    mmap: 0,
    munmap: 0,
    mprotect: 0,
    brk: 0,
    fork: 0,
    exec: 0,
    exit: 0,
  };
  const processes = trace.processes.map((p) => {
    const mine = new Set<number>();
    let acc = 0;
    for (let i = p.recordStart; i < p.recordEnd; i++) {
      const c = count[i]!;
      byKind[kind[i]!]! += c;
      acc += c;
      mine.add(page[i]!);
      all.add(page[i]!);
    }
    for (const e of p.events) events[e.type]++;
    const exit = p.events.find((e) => e.type === 'exit');
    return {
      pid: p.pid,
      parent: p.parent,
      images: p.events.flatMap((e) => (e.type === 'exec' ? [e.path] : [])),
      records: p.recordEnd - p.recordStart,
      accesses: acc,
      distinctPages: mine.size,
      events: p.events.length,
      status: exit?.type === 'exit' ? exit.status : null,
      signal: exit?.type === 'exit' ? exit.signal : null,
    };
  });
  const accesses = byKind[0]! + byKind[1]! + byKind[2]! + byKind[3]!;
  const tree: string[] = [];
  const walk = (pid: number, depth: number): void => {
    const p = processes.find((x) => x.pid === pid)!;
    const what = p.images.length > 0 ? p.images.join(' -> ') : '(fork, no exec)';
    tree.push(`${'  '.repeat(depth)}${p.pid} ${what}: ${p.accesses} accesses, ${p.records} records`);
    for (const c of processes) if (c.parent === pid && c.pid !== pid) walk(c.pid, depth + 1);
  };
  for (const r of processes) if (r.parent === 0 || !processes.some((x) => x.pid === r.parent)) walk(r.pid, 0);
  const columnBytes = trace.accesses.length * 13;
  return {
    collapse: trace.collapse,
    source: trace.source,
    records: trace.accesses.length,
    accesses,
    accessesByKind: { fetch: byKind[0]!, load: byKind[1]!, store: byKind[2]!, modify: byKind[3]! },
    distinctPages: all.size,
    events,
    processes,
    tree,
    size: {
      fileBytes,
      columnBytes,
      ratio: fileBytes ? columnBytes / fileBytes : null,
      bytesPerAccess: fileBytes && accesses > 0 ? fileBytes / accesses : null,
    },
  };
}
