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
  /** Events by type over all processes; `vfork`: the fork events that are vforks (counted in `fork` too). */
  readonly events: Readonly<Record<VxtEvent['type'] | 'vfork', number>>;
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
  /** The process tree drawn with indentation, one line per process; a line deeper than 32 levels is indented 32 and says its depth. */
  readonly tree: readonly string[];
  /** Sizes: the file, the in-memory columns (13 bytes per record), and bytes per represented access. */
  readonly size: {
    readonly fileBytes: number | null;
    readonly columnBytes: number;
    readonly ratio: number | null;
    readonly bytesPerAccess: number | null;
  };
}

/**
 * The deepest level the tree indents; a process deeper down is indented as much and says its depth. Else a
 * chain of forks n deep took n^2 characters (100000 deep: 10^10, more than a string holds).
 */
const TREE_INDENT_LEVELS = 32;

/** Summarises a trace; `fileBytes` is the size of its `.vxt` file when known (for the compression ratio). */
export function describeVxt(trace: VxtTrace, fileBytes: number | null = null): VxtDescription {
  const { kind, page, count } = trace.accesses;
  const byKind = [0, 0, 0, 0];
  const all = new Set<number>();
  /** The children created by a vfork (the tree marks them). */
  const vforked = new Set<number>();
  const events: Record<VxtEvent['type'] | 'vfork', number> = {
    mmap: 0,
    munmap: 0,
    mprotect: 0,
    brk: 0,
    fork: 0,
    vfork: 0,
    wait: 0,
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
    for (const e of p.events) {
      events[e.type]++;
      if (e.type === 'fork' && e.vfork === true) {
        events.vfork++;
        vforked.add(e.child);
      }
    }
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
  // The tree, drawn without recursion and in linear time: a trace may hold a chain of forks thousands deep
  // (recursion overflowed the stack) and 100000 processes (a scan per process took minutes).
  const byPid = new Map<number, (typeof processes)[number]>();
  for (const p of processes) if (!byPid.has(p.pid)) byPid.set(p.pid, p);
  const children = new Map<number, number[]>();
  for (const c of processes) {
    if (c.parent === c.pid) continue;
    const list = children.get(c.parent);
    if (list === undefined) children.set(c.parent, [c.pid]);
    else list.push(c.pid);
  }
  const tree: string[] = [];
  const drawn = new Set<number>();
  for (const r of processes) {
    if (r.parent !== 0 && byPid.has(r.parent)) continue;
    // Depth first, children in list order: pushed in reverse onto the stack.
    const stack: [number, number][] = [[r.pid, 0]];
    while (stack.length > 0) {
      const [pid, depth] = stack.pop()!;
      if (drawn.has(pid)) continue;
      drawn.add(pid);
      const p = byPid.get(pid)!;
      const what = p.images.length > 0 ? p.images.join(' -> ') : '(fork, no exec)';
      const indent = depth <= TREE_INDENT_LEVELS ? '  '.repeat(depth) : `${'  '.repeat(TREE_INDENT_LEVELS)}(depth ${depth}) `;
      tree.push(`${indent}${p.pid}${vforked.has(pid) ? ' (vfork)' : ''} ${what}: ${p.accesses} accesses, ${p.records} records`);
      const kids = children.get(pid) ?? [];
      for (let k = kids.length - 1; k >= 0; k--) stack.push([kids[k]!, depth + 1]);
    }
  }
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
