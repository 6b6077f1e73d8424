import * as fs from 'node:fs';
import * as zlib from 'node:zlib';
import { TraceError } from './errors.js';
import type { VxtAccesses, VxtCollapse, VxtEvent, VxtMapping, VxtProcess, VxtTrace } from './types.js';

/**
 * The `.vxt` file format (version 1).
 *
 * ```
 * offset size
 *  0      4   magic "VXT" 0x1a
 *  4      2   version (u16 LE) = 1
 *  6      2   flags (u16 LE) = 0 (reserved)
 *  8      4   payload length in bytes (u32 LE)
 * 12      4   CRC-32 of the payload (u32 LE, zlib's crc32)
 * 16      8   body length in bytes (u64 LE, as two u32 halves, low first)
 * 24      -   payload = brotli(body); the file ends exactly after it
 * ```
 *
 * body = u32 LE metaLength, meta (UTF-8 JSON: source, record count, column lengths, processes with their
 * events; a fork event with `vfork` is written as an event of type `vfork`, without the flag, so that a reader
 * that does not know vforks refuses the file rather than replay them as forks), then three columns of the access
 * records, each a run over all records in global order:
 *
 * - kinds: one byte per record (0 fetch, 1 load, 2 store, 3 modify);
 * - counts: LEB128 varint of `count - 1` per record;
 * - pages: LEB128 varint of `zigzag(page - previous page of the same class)` per record, where the
 *   classes are fetch and data (load/store/modify), both starting at page 0 (a fetch and a data stream each
 *   move by small steps; interleaved, their deltas would be large).
 *
 * Columns rather than interleaved tokens: each decodes in its own tight loop straight into a typed array,
 * and brotli models each separately (it sees long runs of like bytes).
 */
export const VXT_MAGIC = [0x56, 0x58, 0x54, 0x1a] as const;
/** The .vxt format version this package writes and reads (a file with another version is refused with a TraceError). */
export const VXT_VERSION = 1;
const HEADER_BYTES = 24;
const TWO32 = 2 ** 32;

/** Options of `encodeVxt`. */
export interface EncodeVxtOptions {
  /** Brotli quality 0..11 (default 9: about 2x slower to encode than 5, ~10 % smaller). */
  readonly quality?: number;
}

/** Growable byte buffer for the varint columns. */
class ByteWriter {
  buf: Uint8Array;
  pos = 0;
  constructor(capacity: number) {
    this.buf = new Uint8Array(Math.max(64, capacity));
  }
  ensure(k: number): void {
    if (this.pos + k <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.pos + k));
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
  }
  /** Unsigned varint of a non-negative integer below 2^53 (caller ensured 8 bytes of room). */
  varint(v: number): void {
    const b = this.buf;
    let p = this.pos;
    if (v < 0x80000000) {
      while (v >= 0x80) {
        b[p++] = (v & 0x7f) | 0x80;
        v >>>= 7;
      }
    } else {
      while (v >= 0x80) {
        b[p++] = (v % 128) | 0x80;
        v = Math.floor(v / 128);
      }
    }
    b[p++] = v;
    this.pos = p;
  }
  bytes(): Uint8Array {
    return this.buf.subarray(0, this.pos);
  }
}

/** Serialises `trace` into a `.vxt` file. */
export function encodeVxt(trace: VxtTrace, options: EncodeVxtOptions = {}): Uint8Array {
  const { kind, page, count, length: n } = trace.accesses;
  const counts = new ByteWriter(n + 16);
  const pages = new ByteWriter(n * 2 + 16);
  let prevFetch = 0;
  let prevData = 0;
  for (let i = 0; i < n; i++) {
    counts.ensure(8);
    counts.varint(count[i]! - 1);
    const pg = page[i]!;
    let d: number;
    if (kind[i] === 0) {
      d = pg - prevFetch;
      prevFetch = pg;
    } else {
      d = pg - prevData;
      prevData = pg;
    }
    pages.ensure(10);
    pages.varint(d >= 0 ? d * 2 : -d * 2 - 1);
  }
  const meta = {
    collapse: trace.collapse,
    source: trace.source,
    records: n,
    countsBytes: counts.pos,
    pagesBytes: pages.pos,
    processes: withVforkEvents(trace.processes),
  };
  const metaBytes = new TextEncoder().encode(JSON.stringify(meta));
  const bodyLength = 4 + metaBytes.length + n + counts.pos + pages.pos;
  const body = new Uint8Array(bodyLength);
  new DataView(body.buffer).setUint32(0, metaBytes.length, true);
  let o = 4;
  body.set(metaBytes, o);
  o += metaBytes.length;
  body.set(kind.subarray(0, n), o);
  o += n;
  body.set(counts.bytes(), o);
  o += counts.pos;
  body.set(pages.bytes(), o);
  const payload = zlib.brotliCompressSync(body, {
    params: {
      [zlib.constants.BROTLI_PARAM_QUALITY]: options.quality ?? 9,
      [zlib.constants.BROTLI_PARAM_LGWIN]: 24,
      [zlib.constants.BROTLI_PARAM_SIZE_HINT]: bodyLength,
    },
  });
  const out = new Uint8Array(HEADER_BYTES + payload.length);
  const dv = new DataView(out.buffer);
  out.set(VXT_MAGIC, 0);
  dv.setUint16(4, VXT_VERSION, true);
  dv.setUint16(6, 0, true);
  dv.setUint32(8, payload.length, true);
  dv.setUint32(12, zlib.crc32(payload) >>> 0, true);
  dv.setUint32(16, bodyLength % TWO32, true);
  dv.setUint32(20, Math.floor(bodyLength / TWO32), true);
  out.set(payload, HEADER_BYTES);
  return out;
}

/**
 * The processes as the file holds them: each fork event with `vfork` becomes an event of type `vfork` (same
 * fields, no flag). A trace without vforks is written as it is (its file is the same as before vforks existed).
 */
function withVforkEvents(processes: readonly VxtProcess[]): readonly unknown[] {
  if (!processes.some((p) => p.events.some((e) => e.type === 'fork' && e.vfork === true))) return processes;
  return processes.map((p) => ({
    ...p,
    events: p.events.map((e) => (e.type === 'fork' && e.vfork === true ? { type: 'vfork', at: e.at, parent: e.parent, child: e.child } : e)),
  }));
}

/** What `readVxtHeader` finds in the first 24 bytes. */
export interface VxtHeader {
  readonly version: number;
  readonly payloadBytes: number;
  readonly crc: number;
  readonly bodyBytes: number;
}

/**
 * The most a header may honestly claim for the body, as a multiple of the compressed payload. Brotli packs
 * the varint columns of a real recording about 50 to 1 (the bundled kbuild trace: 2.97 MB of payload, 148 MB
 * of body); a claim far beyond that is a corrupt or hostile file, and believing it would make the reader
 * decompress gigabytes (a 780 KB file claiming a 4 GiB body). 1024 to 1 leaves
 * twenty times that for very regular traces.
 */
export const VXT_MAX_RATIO = 1024;

/**
 * The largest body this reader decodes (1 GiB, seven times the bundled kbuild trace's): the decoded columns
 * take about 4.5 times the body again, and memory is the limit.
 */
export const VXT_MAX_BODY_BYTES = 2 ** 30;

/** The largest `.vxt` file this reader reads (a payload for the largest body at a modest ratio). */
export const VXT_MAX_FILE_BYTES = 2 ** 30;

/**
 * Checks the fixed header against the file's length (`fileBytes`, by default `bytes.length`: the whole file
 * is `bytes`; a reader that has only the first 24 bytes passes the file's size) and the body length it
 * claims against the payload (VXT_MAX_RATIO, VXT_MAX_BODY_BYTES); throws TraceError naming `name`.
 */
export function readVxtHeader(bytes: Uint8Array, name: string, fileBytes: number = bytes.length): VxtHeader {
  if (bytes.length < 4 || VXT_MAGIC.some((b, i) => bytes[i] !== b)) {
    throw new TraceError('not-vxt', name, 'not a .vxt trace (bad magic number)');
  }
  if (bytes.length < HEADER_BYTES) {
    throw new TraceError('truncated', name, `truncated .vxt trace: ${bytes.length} bytes, shorter than its ${HEADER_BYTES}-byte header`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = dv.getUint16(4, true);
  if (version !== VXT_VERSION) {
    throw new TraceError('version', name, `unsupported .vxt version ${version} (this build reads version ${VXT_VERSION})`);
  }
  const flags = dv.getUint16(6, true);
  if (flags !== 0) {
    throw new TraceError('corrupt', name, `corrupt .vxt trace: reserved flags field is 0x${flags.toString(16)} (version ${VXT_VERSION} writes 0)`);
  }
  const payloadBytes = dv.getUint32(8, true);
  const crc = dv.getUint32(12, true);
  const bodyBytes = dv.getUint32(16, true) + dv.getUint32(20, true) * TWO32;
  const expected = HEADER_BYTES + payloadBytes;
  if (fileBytes < expected) {
    throw new TraceError('truncated', name, `truncated .vxt trace: ${fileBytes} bytes, the header says ${expected}`);
  }
  if (fileBytes > expected) {
    throw new TraceError('corrupt', name, `corrupt .vxt trace: ${fileBytes - expected} bytes after the end of the trace`);
  }
  if (bodyBytes > VXT_MAX_BODY_BYTES) {
    throw new TraceError(
      'corrupt',
      name,
      `corrupt .vxt trace: the header claims a body of ${bodyBytes} bytes, over the ${VXT_MAX_BODY_BYTES} bytes (1 GiB) this reader decodes`,
    );
  }
  if (bodyBytes > Math.max(1, payloadBytes) * VXT_MAX_RATIO) {
    throw new TraceError(
      'corrupt',
      name,
      `corrupt .vxt trace: the header claims a body of ${bodyBytes} bytes from ${payloadBytes} bytes of compressed payload, more than ${VXT_MAX_RATIO} times as large (a real trace is about 50 times)`,
    );
  }
  return { version, payloadBytes, crc, bodyBytes };
}

/**
 * Reads a `.vxt` file with every size checked before it is read: it must be a regular file (not a device
 * such as /dev/zero, a FIFO or a directory; a symbolic link is followed to what it names) of at most
 * VXT_MAX_FILE_BYTES, whose header agrees with its size. Returns the file's bytes; TraceError naming `file`.
 */
export function readVxtFile(file: string): Uint8Array {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new TraceError('io', file, `cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile())
      throw new TraceError('io', file, `not a regular file (${st.isDirectory() ? 'a directory' : 'a device, FIFO or socket'}); a .vxt trace is a file`);
    if (st.size > VXT_MAX_FILE_BYTES) throw new TraceError('io', file, `${st.size} bytes, over the ${VXT_MAX_FILE_BYTES} bytes (1 GiB) this reader reads`);
    const size = st.size;
    const head = readFully(fd, file, Math.min(size, HEADER_BYTES));
    readVxtHeader(head, file, size);
    const bytes = new Uint8Array(size);
    bytes.set(head, 0);
    const rest = readFully(fd, file, size - head.length, head.length);
    bytes.set(rest, head.length);
    return bytes;
  } finally {
    fs.closeSync(fd);
  }
}

function readFully(fd: number, file: string, length: number, position = 0): Uint8Array {
  const buf = new Uint8Array(length);
  let got = 0;
  try {
    while (got < length) {
      const k = fs.readSync(fd, buf, got, length - got, position + got);
      if (k === 0) break;
      got += k;
    }
  } catch (e) {
    throw new TraceError('io', file, `cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (got < length) throw new TraceError('truncated', file, `truncated .vxt trace: the file shrank while it was read`);
  return buf;
}

/** Parses a `.vxt` file. Any problem (not a trace, truncated, corrupt) is a TraceError naming `name`. */
export function decodeVxt(bytes: Uint8Array, name: string): VxtTrace {
  const h = readVxtHeader(bytes, name);
  const payload = bytes.subarray(HEADER_BYTES);
  if (zlib.crc32(payload) >>> 0 !== h.crc) {
    throw new TraceError('corrupt', name, 'corrupt .vxt trace: checksum mismatch');
  }
  const corrupt = (what: string): TraceError => new TraceError('corrupt', name, `corrupt .vxt trace: ${what}`);
  let body: Uint8Array;
  try {
    // readVxtHeader bounded bodyBytes (1 GiB, VXT_MAX_RATIO times the payload): a valid maxOutputLength.
    body = zlib.brotliDecompressSync(payload, { maxOutputLength: Math.max(1, h.bodyBytes) });
  } catch (e) {
    throw corrupt(`cannot decompress (${(e as Error).message})`);
  }
  if (body.length !== h.bodyBytes) throw corrupt(`body is ${body.length} bytes, the header says ${h.bodyBytes}`);
  if (body.length < 4) throw corrupt('body too short');
  const metaLength = new DataView(body.buffer, body.byteOffset, body.byteLength).getUint32(0, true);
  if (4 + metaLength > body.length) throw corrupt('metadata runs past the end');
  let meta: unknown;
  try {
    meta = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body.subarray(4, 4 + metaLength)));
  } catch (e) {
    throw corrupt(`metadata is not JSON (${(e as Error).message})`);
  }
  const m = checkMeta(meta, corrupt);
  const n = m.records;
  let o = 4 + metaLength;
  if (o + n + m.countsBytes + m.pagesBytes !== body.length) throw corrupt('column lengths do not add up to the body length');
  const kind = body.slice(o, o + n);
  o += n;
  const count = new Uint32Array(n);
  const ce = decodeCounts(body, o, o + m.countsBytes, count);
  if (ce <= -2) throw corrupt(`record ${-ce - 2} has a count above ${MAX_COUNT}`);
  if (ce !== o + m.countsBytes) throw corrupt('count column does not match the record count');
  o += m.countsBytes;
  const page = new Float64Array(n);
  const pe = decodePages(body, o, o + m.pagesBytes, kind, page);
  if (pe === -2) throw corrupt('a record has a kind other than 0..3');
  if (pe !== o + m.pagesBytes) throw corrupt('page column does not match the record count');
  const accesses: VxtAccesses = { length: n, kind, page, count };
  checkProcesses(m.processes, page, corrupt);
  return { collapse: m.collapse, source: m.source, accesses, processes: m.processes };
}

/** The largest count of a record: the count column holds u32 counts (a larger one would wrap in the Uint32Array). */
const MAX_COUNT = 0xffffffff;

/**
 * Decodes `out.length` varints (each `count - 1`) from `buf[p..]`; returns the position after the last (-1: too
 * short, -2 - i: record i's count is above MAX_COUNT).
 */
function decodeCounts(buf: Uint8Array, p: number, end: number, out: Uint32Array): number {
  const n = out.length;
  for (let i = 0; i < n; i++) {
    let b = buf[p++]!;
    let v = b & 0x7f;
    if (b >= 0x80) {
      b = buf[p++]!;
      v |= (b & 0x7f) << 7;
      if (b >= 0x80) {
        b = buf[p++]!;
        v |= (b & 0x7f) << 14;
        if (b >= 0x80) {
          b = buf[p++]!;
          v |= (b & 0x7f) << 21;
          if (b >= 0x80) {
            b = buf[p++]!;
            v += (b & 0x7f) * 0x10000000;
            if (b >= 0x80) return -1;
            if (v >= MAX_COUNT) return -2 - i;
          }
        }
      }
    }
    out[i] = v + 1;
    if (p > end) return -1;
  }
  return p;
}

/** Decodes the page deltas (zigzag varints, per class) into `out`; returns the position after the last (-1: too short, -2: a kind above 3). */
function decodePages(buf: Uint8Array, p: number, end: number, kind: Uint8Array, out: Float64Array): number {
  const n = out.length;
  let prevFetch = 0;
  let prevData = 0;
  let kinds = 0;
  for (let i = 0; i < n; i++) {
    const k = kind[i]!;
    kinds |= k;
    let b = buf[p++]!;
    let z = b & 0x7f;
    if (b >= 0x80) {
      b = buf[p++]!;
      z |= (b & 0x7f) << 7;
      if (b >= 0x80) {
        b = buf[p++]!;
        z |= (b & 0x7f) << 14;
        if (b >= 0x80) {
          b = buf[p++]!;
          z |= (b & 0x7f) << 21;
          if (b >= 0x80) {
            let mul = 0x10000000;
            do {
              b = buf[p++]!;
              z += (b & 0x7f) * mul;
              mul *= 128;
            } while (b >= 0x80 && mul < 2 ** 56);
            if (b >= 0x80) return -1;
          }
        }
      }
    }
    const d = z < 0x80000000 ? (z >>> 1) ^ -(z & 1) : z % 2 === 0 ? z / 2 : -(z + 1) / 2;
    if (k === 0) out[i] = prevFetch += d;
    else out[i] = prevData += d;
  }
  if (kinds > 3) return -2;
  return p > end ? -1 : p;
}

interface Meta {
  collapse: VxtCollapse;
  source: { tool: string; command: string };
  records: number;
  countsBytes: number;
  pagesBytes: number;
  processes: VxtProcess[];
}

const isUint = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function checkMeta(meta: unknown, corrupt: (w: string) => TraceError): Meta {
  if (!isObj(meta)) throw corrupt('metadata is not an object');
  const src = meta['source'];
  if (!isObj(src) || typeof src['tool'] !== 'string' || typeof src['command'] !== 'string') throw corrupt('metadata.source');
  if (meta['collapse'] !== 'run' && meta['collapse'] !== 'class') throw corrupt('metadata.collapse');
  for (const k of ['records', 'countsBytes', 'pagesBytes']) if (!isUint(meta[k])) throw corrupt(`metadata.${k}`);
  if (!Array.isArray(meta['processes'])) throw corrupt('metadata.processes');
  return meta as unknown as Meta;
}

/** An event type as the file writes it: a fork event with `vfork` is written as type `vfork`. */
type FileEventType = VxtEvent['type'] | 'vfork';

/** The fields each event type must have (numbers, or the named special types). */
const EVENT_FIELDS: Record<FileEventType, readonly string[]> = {
  mmap: ['start', 'length', 'prot', 'flags', 'offset'],
  munmap: ['start', 'length'],
  mprotect: ['start', 'length', 'prot'],
  brk: ['request', 'result'],
  fork: ['parent', 'child'],
  vfork: ['parent', 'child'],
  wait: ['child'],
  exec: ['pid'],
  exit: ['pid'],
};

const PAGE_BYTES = 4096;
/**
 * The end of the largest user space of any paging mode: the lower canonical half of 5-level paging
 * (SDM Vol. 3A §4.5.1: bits 63:57 of a linear address copy bit 56). No address of a trace reaches it; the
 * replay checks the chosen paging mode's own, smaller limit.
 */
export const VXT_USER_TOP = 2 ** 56;
const USER_TOP_PAGE = VXT_USER_TOP / PAGE_BYTES;
const ROLES: ReadonlySet<string> = new Set(['exe', 'interp', 'stack', 'vdso', 'other']);

/**
 * A record's page number or address as it stands in the file, sign kept: a corrupt record can hold a
 * negative page number, which is no canonical address (so not `hexU64`'s 64-bit form).
 */
const signedHex = (v: number): string => (v < 0 ? `-0x${(-v).toString(16)}` : `0x${v.toString(16)}`);

/**
 * A page-aligned range `[start, start + length)`, as every successful mmap, munmap and mprotect has (Linux
 * returns EINVAL for an unaligned start, mm/mmap.c `do_mmap`/`__do_munmap`, mm/mprotect.c
 * `do_mprotect_pkey`); null when it is one, else what is wrong with it. Both numbers are below 2^53, so the
 * range is inside the largest user space (`VXT_USER_TOP`); the replay checks the paging mode's own limit.
 */
function rangeProblem(start: unknown, length: unknown, emptyOk: boolean): string | null {
  if (!isUint(start)) return `a start of ${String(start)}, not a whole number from 0 to 2^53`;
  if (!isUint(length)) return `a length of ${String(length)}, not a whole number from 0 to 2^53`;
  if (start % PAGE_BYTES !== 0) return `an unaligned start ${signedHex(start)} (not a multiple of 4096)`;
  if (length % PAGE_BYTES !== 0) return `a length of ${length} bytes, not a multiple of 4096`;
  if (length === 0 && !emptyOk) return 'a length of 0';
  return null;
}

/**
 * Checks what the replay relies on, beyond the types: every range page aligned and in user space, every
 * access record's page in user space, each event of a process about that process, and a process tree the
 * replay can run - each process but the root is created by exactly one fork event, in its parent, which
 * comes before it in the list (so there is no cycle, and no process forks itself).
 */
function checkProcesses(processes: unknown[], page: Float64Array, corrupt: (w: string) => TraceError): void {
  const n = page.length;
  const index = new Map<number, number>();
  /** child pid -> the pid whose fork event creates it */
  const forkedBy = new Map<number, number>();
  for (const [i, p] of processes.entries()) {
    if (!isObj(p) || !isUint(p['pid']) || !isUint(p['parent']) || !isUint(p['recordStart']) || !isUint(p['recordEnd'])) {
      throw corrupt(`process ${i} is malformed`);
    }
    const pid = p['pid'];
    const where = `pid ${pid}`;
    if (p['recordStart'] > p['recordEnd'] || p['recordEnd'] > n) throw corrupt(`${where} has a record range outside the trace`);
    if (index.has(pid)) throw corrupt(`pid ${pid} appears twice`);
    index.set(pid, i);
    if (!Array.isArray(p['events'])) throw corrupt(`${where} has no events`);
    let last = p['recordStart'];
    for (const [k, e] of (p['events'] as unknown[]).entries()) {
      if (!isObj(e) || typeof e['type'] !== 'string' || !(e['type'] in EVENT_FIELDS) || !isUint(e['at'])) {
        throw corrupt(`${where} has a malformed event (event ${k})`);
      }
      const type = e['type'] as FileEventType;
      const ev = `${where}: ${type} event ${k}`;
      const at = e['at'];
      if (at < last || at > p['recordEnd']) throw corrupt(`${where} has an event out of order or outside its records (event ${k})`);
      last = at;
      for (const f of EVENT_FIELDS[type]) if (!isNum(e[f])) throw corrupt(`${where}: ${type} event without ${f}`);
      switch (type) {
        case 'mmap':
        case 'munmap':
        case 'mprotect': {
          const bad = rangeProblem(e['start'], e['length'], type !== 'mmap');
          if (bad !== null) throw corrupt(`${ev} has ${bad}`);
          if (type === 'mmap' && e['file'] !== null && typeof e['file'] !== 'string') throw corrupt(`${ev} has a file that is neither a string nor null`);
          break;
        }
        case 'brk':
          if (!isUint(e['request']) || !isUint(e['result']))
            throw corrupt(`${ev} has a break outside user space (request ${e['request']}, result ${e['result']})`);
          break;
        case 'fork':
        case 'vfork': {
          const child = e['child'];
          if (e['parent'] !== pid) throw corrupt(`${ev} names pid ${e['parent']} as the parent, not this process`);
          // A vfork is written as its own event type (a reader without it refuses it), never as a flag on a fork.
          if (type === 'fork' && 'vfork' in e) throw corrupt(`${ev} has a vfork field (a vfork is written as an event of type vfork)`);
          if (!isUint(child)) throw corrupt(`${ev} has a child pid of ${child}`);
          if (child === pid) throw corrupt(`${ev} forks the process itself`);
          const before = forkedBy.get(child);
          if (before !== undefined) throw corrupt(`${ev} forks pid ${child}, which pid ${before} already forked (a child is forked once)`);
          forkedBy.set(child, pid);
          // In memory a vfork is a fork event with the flag (types.ts, VxtForkEvent).
          if (type === 'vfork') (p['events'] as unknown[])[k] = { type: 'fork', at, parent: pid, child, vfork: true };
          break;
        }
        case 'wait':
          // The replay blocks the process until the child has exited: a child it forked before, so that it runs.
          if (forkedBy.get(e['child'] as number) !== pid) throw corrupt(`${ev} waits for pid ${e['child']}, which this process did not fork before`);
          break;
        case 'exec': {
          if (e['pid'] !== pid) throw corrupt(`${ev} is about pid ${e['pid']}`);
          if (typeof e['path'] !== 'string' || !Array.isArray(e['mappings'])) throw corrupt(`${ev} has no path or no mappings`);
          let end = 0;
          for (const [j, mp] of (e['mappings'] as unknown[]).entries()) {
            const x = mp as Partial<Record<keyof VxtMapping, unknown>>;
            const m = `${ev}, mapping ${j}`;
            if (!isObj(mp) || !isUint(x.prot) || typeof x.role !== 'string' || !ROLES.has(x.role)) throw corrupt(`${m} is malformed`);
            if (x.file !== null && typeof x.file !== 'string') throw corrupt(`${m} has a file that is neither a string nor null`);
            const bad = rangeProblem(x.start, x.length, false);
            if (bad !== null) throw corrupt(`${m} has ${bad}`);
            const s = x.start as number;
            if (s < end) throw corrupt(`${m} overlaps the mapping before it or is out of order`);
            end = s + (x.length as number);
          }
          break;
        }
        case 'exit':
          if (e['pid'] !== pid) throw corrupt(`${ev} is about pid ${e['pid']}`);
          if (e['status'] !== null && !isUint(e['status'])) throw corrupt(`${ev} has a status of ${String(e['status'])}`);
          if (e['signal'] !== null && !isUint(e['signal'])) throw corrupt(`${ev} has a signal of ${String(e['signal'])}`);
          break;
      }
    }
    // Every access of the process is to a page of user space: a page below 0 or at 2^44 and above has
    // no canonical user address (the walker would raise #GP, or #PF on a kernel page).
    for (let r = p['recordStart']; r < p['recordEnd']; r++) {
      const pg = page[r]!;
      if (!(pg >= 0 && pg < USER_TOP_PAGE)) {
        throw corrupt(
          `${where}: record ${r} is an access to page ${signedHex(pg)} (address ${signedHex(pg * PAGE_BYTES)}), outside user space [0, ${signedHex(VXT_USER_TOP)})`,
        );
      }
    }
  }
  // Each access record belongs to exactly one process: the processes' record ranges do not overlap, and
  // they leave no record out (the replay runs a process's records only; a record of no process was skipped).
  const ranges = (processes as VxtProcess[]).filter((p) => p.recordEnd > p.recordStart).sort((a, b) => a.recordStart - b.recordStart);
  const orphans = (from: number, to: number): TraceError => corrupt(`records [${from}, ${to}) belong to no process (each record is an access of one process)`);
  let covered = 0;
  for (let i = 0; i < ranges.length; i++) {
    const b = ranges[i]!;
    if (i > 0) {
      const a = ranges[i - 1]!;
      if (b.recordStart < a.recordEnd) {
        throw corrupt(
          `pid ${b.pid}'s records [${b.recordStart}, ${b.recordEnd}) overlap pid ${a.pid}'s [${a.recordStart}, ${a.recordEnd}) (a record belongs to one process)`,
        );
      }
    }
    if (b.recordStart > covered) throw orphans(covered, b.recordStart);
    covered = b.recordEnd;
  }
  if (covered < n) throw orphans(covered, n);
  for (const [i, p] of (processes as VxtProcess[]).entries()) {
    const by = forkedBy.get(p.pid);
    if (p.parent === 0) {
      if (by !== undefined) throw corrupt(`pid ${p.pid} is a root (parent 0) but pid ${by} forks it`);
      continue;
    }
    const pi = index.get(p.parent);
    if (p.parent === p.pid) throw corrupt(`pid ${p.pid} is its own parent`);
    if (pi === undefined) throw corrupt(`pid ${p.pid} has parent ${p.parent}, not in the trace`);
    if (pi > i) throw corrupt(`pid ${p.pid} comes before its parent ${p.parent} (parents come first)`);
    if (by === undefined) throw corrupt(`pid ${p.pid} has parent ${p.parent}, which has no fork event that creates it`);
    if (by !== p.parent) throw corrupt(`pid ${p.pid} has parent ${p.parent} but pid ${by} forks it`);
  }
  for (const [child, by] of forkedBy) {
    if (!index.has(child)) throw corrupt(`pid ${by} forks pid ${child}, not in the trace`);
  }
}
