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
 * events), then three columns of the access records, each a run over all records in global order:
 *
 * - kinds: one byte per record (0 fetch, 1 load, 2 store, 3 modify);
 * - counts: LEB128 varint of `count - 1` per record;
 * - pages: LEB128 varint of `zigzag(page - previous page of the same class)` per record, where the
 *   classes are fetch and data (load/store/modify) as in perf.md §4.4, both starting at page 0.
 *
 * Columns rather than interleaved tokens: each decodes in its own tight loop straight into a typed array,
 * and brotli models each separately (it sees long runs of like bytes).
 */
export const VXT_MAGIC = [0x56, 0x58, 0x54, 0x1a] as const;
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
    processes: trace.processes,
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

/** What `readVxtHeader` finds in the first 24 bytes. */
export interface VxtHeader {
  readonly version: number;
  readonly payloadBytes: number;
  readonly crc: number;
  readonly bodyBytes: number;
}

/** Checks the fixed header and the file length; throws TraceError naming `name`. */
export function readVxtHeader(bytes: Uint8Array, name: string): VxtHeader {
  if (bytes.length < 4 || VXT_MAGIC.some((b, i) => bytes[i] !== b)) {
    throw new TraceError('not-vxt', name, 'not a .vxt trace (bad magic number)');
  }
  if (bytes.length < HEADER_BYTES) {
    throw new TraceError(
      'truncated',
      name,
      `truncated .vxt trace: ${bytes.length} bytes, shorter than its ${HEADER_BYTES}-byte header`,
    );
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = dv.getUint16(4, true);
  if (version !== VXT_VERSION) {
    throw new TraceError(
      'version',
      name,
      `unsupported .vxt version ${version} (this build reads version ${VXT_VERSION})`,
    );
  }
  const payloadBytes = dv.getUint32(8, true);
  const crc = dv.getUint32(12, true);
  const bodyBytes = dv.getUint32(16, true) + dv.getUint32(20, true) * TWO32;
  const expected = HEADER_BYTES + payloadBytes;
  if (bytes.length < expected) {
    throw new TraceError(
      'truncated',
      name,
      `truncated .vxt trace: ${bytes.length} bytes, the header says ${expected}`,
    );
  }
  if (bytes.length > expected) {
    throw new TraceError(
      'corrupt',
      name,
      `corrupt .vxt trace: ${bytes.length - expected} bytes after the end of the trace`,
    );
  }
  return { version, payloadBytes, crc, bodyBytes };
}

/** Parses a `.vxt` file. Any problem (not a trace, truncated, corrupt) is a TraceError naming `name`. */
export function decodeVxt(bytes: Uint8Array, name: string): VxtTrace {
  const h = readVxtHeader(bytes, name);
  const payload = bytes.subarray(HEADER_BYTES);
  if (zlib.crc32(payload) >>> 0 !== h.crc) {
    throw new TraceError('corrupt', name, 'corrupt .vxt trace: checksum mismatch');
  }
  const corrupt = (what: string): TraceError =>
    new TraceError('corrupt', name, `corrupt .vxt trace: ${what}`);
  let body: Uint8Array;
  try {
    body = zlib.brotliDecompressSync(payload, { maxOutputLength: Math.max(1, h.bodyBytes) });
  } catch (e) {
    throw corrupt(`cannot decompress (${(e as Error).message})`);
  }
  if (body.length !== h.bodyBytes)
    throw corrupt(`body is ${body.length} bytes, the header says ${h.bodyBytes}`);
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
  if (o + n + m.countsBytes + m.pagesBytes !== body.length)
    throw corrupt('column lengths do not add up to the body length');
  const kind = body.slice(o, o + n);
  o += n;
  const count = new Uint32Array(n);
  if (decodeCounts(body, o, o + m.countsBytes, count) !== o + m.countsBytes)
    throw corrupt('count column does not match the record count');
  o += m.countsBytes;
  const page = new Float64Array(n);
  const pe = decodePages(body, o, o + m.pagesBytes, kind, page);
  if (pe === -2) throw corrupt('a record has a kind other than 0..3');
  if (pe !== o + m.pagesBytes) throw corrupt('page column does not match the record count');
  const accesses: VxtAccesses = { length: n, kind, page, count };
  checkProcesses(m.processes, n, corrupt);
  return { collapse: m.collapse, source: m.source, accesses, processes: m.processes };
}

/** Decodes `out.length` varints (each `count - 1`) from `buf[p..]`; returns the position after the last. */
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
const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

function checkMeta(meta: unknown, corrupt: (w: string) => TraceError): Meta {
  if (!isObj(meta)) throw corrupt('metadata is not an object');
  const src = meta['source'];
  if (!isObj(src) || typeof src['tool'] !== 'string' || typeof src['command'] !== 'string')
    throw corrupt('metadata.source');
  if (meta['collapse'] !== 'run' && meta['collapse'] !== 'class') throw corrupt('metadata.collapse');
  for (const k of ['records', 'countsBytes', 'pagesBytes'])
    if (!isUint(meta[k])) throw corrupt(`metadata.${k}`);
  if (!Array.isArray(meta['processes'])) throw corrupt('metadata.processes');
  return meta as unknown as Meta;
}

/** The fields each event type must have (numbers, or the named special types). */
const EVENT_FIELDS: Record<VxtEvent['type'], readonly string[]> = {
  mmap: ['start', 'length', 'prot', 'flags', 'offset'],
  munmap: ['start', 'length'],
  mprotect: ['start', 'length', 'prot'],
  brk: ['request', 'result'],
  fork: ['parent', 'child'],
  exec: ['pid'],
  exit: ['pid'],
};

function checkProcesses(processes: unknown[], n: number, corrupt: (w: string) => TraceError): void {
  const pids = new Set<number>();
  for (const [i, p] of processes.entries()) {
    const where = `process ${i}`;
    if (
      !isObj(p) ||
      !isUint(p['pid']) ||
      !isUint(p['parent']) ||
      !isUint(p['recordStart']) ||
      !isUint(p['recordEnd'])
    ) {
      throw corrupt(`${where} is malformed`);
    }
    if (p['recordStart'] > p['recordEnd'] || p['recordEnd'] > n)
      throw corrupt(`${where} has a record range outside the trace`);
    if (pids.has(p['pid'])) throw corrupt(`pid ${p['pid']} appears twice`);
    pids.add(p['pid']);
    if (!Array.isArray(p['events'])) throw corrupt(`${where} has no events`);
    let last = p['recordStart'];
    for (const e of p['events'] as unknown[]) {
      if (!isObj(e) || typeof e['type'] !== 'string' || !(e['type'] in EVENT_FIELDS) || !isUint(e['at'])) {
        throw corrupt(`${where} has a malformed event`);
      }
      const at = e['at'];
      if (at < last || at > p['recordEnd'])
        throw corrupt(`${where} has an event out of order or outside its records`);
      last = at;
      for (const f of EVENT_FIELDS[e['type'] as VxtEvent['type']])
        if (!isNum(e[f])) throw corrupt(`${where}: ${e['type']} event without ${f}`);
      if (e['type'] === 'mmap' && e['file'] !== null && typeof e['file'] !== 'string')
        throw corrupt(`${where}: mmap file`);
      if (e['type'] === 'exec') {
        if (typeof e['path'] !== 'string' || !Array.isArray(e['mappings']))
          throw corrupt(`${where}: exec event`);
        for (const mp of e['mappings'] as unknown[]) {
          const x = mp as Partial<Record<keyof VxtMapping, unknown>>;
          if (
            !isObj(mp) ||
            !isUint(x.start) ||
            !isUint(x.length) ||
            !isUint(x.prot) ||
            typeof x.role !== 'string'
          ) {
            throw corrupt(`${where}: exec mapping`);
          }
        }
      }
    }
  }
  for (const p of processes as VxtProcess[]) {
    if (p.parent !== 0 && !pids.has(p.parent))
      throw corrupt(`pid ${p.pid} has parent ${p.parent}, not in the trace`);
  }
}
