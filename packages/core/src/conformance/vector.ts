import { ACC_FETCH, ACC_USER, ACC_WRITE } from '../arch/constants.js';
import { PAGING_MODE_NAMES, type PagingModeName } from '../arch/modes.js';

/*
 * Paging conformance vectors (the JSON Lines format of
 * conformance/FORMAT.md in this package): parsing and
 * validation. This is an edge: hex strings become BigInts here, and nothing past `toNumber`-style
 * conversions in the runner sees one. Every problem is reported as a `VectorError` that names the file, the
 * line and the field (`cpu.cr0_wp`, `memory[2][1]`, ...).
 */

/** A vector file or line that is not a valid vector. `code` is stable for callers that branch on it. */
export class VectorError extends Error {
  readonly code = 'E_CONFORMANCE_VECTOR';
  constructor(
    readonly file: string,
    /** 1-based line number; 0 when the file as a whole is at fault (cannot be read). */
    readonly line: number,
    /** The field path (`cpu.maxphyaddr`), or '' when the line is not JSON or the file cannot be read. */
    readonly field: string,
    readonly problem: string,
  ) {
    super(`${line > 0 ? `${file}:${line}` : file}: ${field !== '' ? `${field}: ` : ''}${problem}`);
    this.name = 'VectorError';
  }
}

/** The control state a conformance vector sets before its accesses: CR0.WP, CR4.PSE/PGE/SMEP/SMAP/PKE, EFER.NXE, EFLAGS.AC, the CPL, PKRU and MAXPHYADDR. */
export interface VectorCpu {
  cr0Wp: boolean;
  cr4Pse: boolean;
  /** Optional in a vector (`cr4_pge`, default 0); it changes no walk outcome, only `WalkResult.global`. */
  cr4Pge: boolean;
  cr4Smep: boolean;
  cr4Smap: boolean;
  cr4Pke: boolean;
  eferNxe: boolean;
  eflagsAc: boolean;
  cpl: 0 | 3;
  pkru: number;
  maxPhyAddr: number;
}

/** One `[pa, value, size]` item of `memory` / `memory_after`. */
export interface VectorMemoryEntry {
  pa: bigint;
  value: bigint;
  size: 4 | 8;
}

/** One `[pa, mask]` item of `memory_after_dontcare`. */
export interface VectorDontCare {
  pa: bigint;
  mask: bigint;
}

/** The outcome a vector expects for one access. */
export interface VectorOutcome {
  fault: boolean;
  /** The #PF error code (SDM Vol. 3A §4.7) when `fault`, else null. */
  errorCode: number | null;
  /** The physical address when not `fault`, else null. */
  pa: bigint | null;
}

export interface VectorExpect extends VectorOutcome {
  memoryAfter: VectorMemoryEntry[];
  memoryAfterDontCare: VectorDontCare[];
}

/** A validated vector. Accesses are ACC_* bits (ACC_WRITE | ACC_USER | ACC_FETCH). */
export interface ConformanceVector {
  /** The file (as named by the caller) and 1-based line it came from. */
  file: string;
  line: number;
  id: string;
  mode: PagingModeName;
  cpu: VectorCpu;
  cr3: bigint;
  /** PAE: the PDPTE registers as loaded at CR3 load; null when absent (they are then loaded from memory at CR3). */
  pdptes: bigint[] | null;
  memory: VectorMemoryEntry[];
  /** The linear address as the 64-bit (32-bit modes: 32-bit) value of the vector. */
  va: bigint;
  preAccess: number | null;
  access: number;
  expect: VectorExpect;
  preExpect: VectorOutcome | null;
}

const MAX_PA = 1n << 52n;
/** FORMAT.md: hex strings are lowercase, `0x`-prefixed and unpadded (`0x0`, `0x2001`; not `0x02001`, `0xA`, `0X1`). */
const HEX = /^0x(?:0|[1-9a-f][0-9a-f]*)$/;
/** Any hex spelling, to tell a string that is hex but not in the format's spelling from one that is not hex. */
const HEX_ANY = /^0x[0-9a-f]+$/i;
/**
 * The #PF error-code bits a vector may expect (FORMAT.md: P=1 W=2 U=4 RSVD=8 I/D=16 PK=32; SDM Vol. 3A §4.7,
 * Figure 4-12). The SDM's other bits (SS, HLAT, SGX) come from features the format has no state for.
 */
const ERROR_CODE_MAX = 0x3f;
/** Bits 8:5 and 2:1 of a PAE PDPTE are reserved (SDM Vol. 3A §4.4.1, Table 4-8); so are bits 63:MAXPHYADDR. */
const PDPTE_RSVD_LO = 0x1e6n;

type Json = unknown;

class Ctx {
  constructor(
    readonly file: string,
    readonly line: number,
  ) {}
  fail(field: string, problem: string): never {
    throw new VectorError(this.file, this.line, field, problem);
  }
}

function describe(v: Json): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v)}`;
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${String(v)}`;
}

function isObject(v: Json): v is Record<string, Json> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function field(c: Ctx, obj: Record<string, Json>, key: string, path: string): Json {
  if (!Object.prototype.hasOwnProperty.call(obj, key) || obj[key] === undefined) c.fail(path, 'missing');
  return obj[key];
}

function object(c: Ctx, v: Json, path: string): Record<string, Json> {
  if (!isObject(v)) c.fail(path, `expected an object, got ${describe(v)}`);
  return v;
}

function array(c: Ctx, v: Json, path: string): Json[] {
  if (!Array.isArray(v)) c.fail(path, `expected an array, got ${describe(v)}`);
  return v;
}

function bit(c: Ctx, v: Json, path: string): boolean {
  if (typeof v !== 'number') c.fail(path, `expected 0 or 1, got ${describe(v)}`);
  if (v !== 0 && v !== 1) c.fail(path, `expected 0 or 1, got ${v}`);
  return v === 1;
}

function integer(c: Ctx, v: Json, path: string, min: number, max: number): number {
  if (typeof v !== 'number') c.fail(path, `expected an integer in ${min}..${max}, got ${describe(v)}`);
  if (!Number.isInteger(v) || v < min || v > max) c.fail(path, `expected an integer in ${min}..${max}, got ${v}`);
  return v;
}

function hex(c: Ctx, v: Json, path: string, limit: bigint, limitText: string): bigint {
  if (typeof v !== 'string') c.fail(path, `expected a "0x..." hex string, got ${describe(v)}`);
  if (!HEX.test(v)) {
    if (!HEX_ANY.test(v)) c.fail(path, `expected a "0x..." hex string, got ${describe(v)}`);
    c.fail(path, `hex strings are lowercase and unpadded (FORMAT.md): expected "0x${BigInt(v).toString(16)}", got ${describe(v)}`);
  }
  const n = BigInt(v);
  if (n >= limit) c.fail(path, `${v} is out of range (must be below ${limitText})`);
  return n;
}

function memoryEntry(c: Ctx, v: Json, path: string): VectorMemoryEntry {
  const a = array(c, v, path);
  if (a.length !== 3) c.fail(path, `expected [pa, value, size], got an array of ${a.length}`);
  const size = a[2];
  if (typeof size !== 'number') c.fail(`${path}[2]`, `expected the size 4 or 8, got ${describe(size)}`);
  if (size !== 4 && size !== 8) c.fail(`${path}[2]`, `expected the size 4 or 8, got ${size}`);
  const pa = hex(c, a[0], `${path}[0]`, MAX_PA, '2^52');
  if (pa % BigInt(size) !== 0n) c.fail(`${path}[0]`, `0x${pa.toString(16)} is not ${size}-byte aligned`);
  const value = hex(c, a[1], `${path}[1]`, 1n << BigInt(size * 8), `2^${size * 8}`);
  return { pa, value, size };
}

function memoryList(c: Ctx, v: Json, path: string): VectorMemoryEntry[] {
  const list = array(c, v, path).map((e, i) => memoryEntry(c, e, `${path}[${i}]`));
  // Entries are aligned to their size, so two overlap exactly when one holds the other's first 4 bytes.
  const owner = new Map<bigint, number>();
  list.forEach((e, i) => {
    for (let b = 0n; b < BigInt(e.size); b += 4n) {
      const j = owner.get(e.pa + b);
      if (j !== undefined) c.fail(`${path}[${i}][0]`, `0x${e.pa.toString(16)} overlaps ${path}[${j}] (each byte of memory is listed once)`);
      owner.set(e.pa + b, i);
    }
  });
  return list;
}

/**
 * FORMAT.md: `memory_after` lists the same entries as `memory` (same addresses and sizes, in any order); only
 * the values may differ. A missing, extra or moved entry would leave a final value unchecked or check one the
 * vector never set.
 */
function sameEntries(c: Ctx, memory: readonly VectorMemoryEntry[], after: readonly VectorMemoryEntry[], path: string): void {
  const sizeAt = new Map<bigint, number>();
  for (const e of memory) sizeAt.set(e.pa, e.size);
  after.forEach((e, i) => {
    const size = sizeAt.get(e.pa);
    if (size === undefined) c.fail(`${path}[${i}][0]`, `0x${e.pa.toString(16)} is not an entry of memory (memory_after lists the same entries as memory)`);
    if (size !== e.size) c.fail(`${path}[${i}][2]`, `the entry at 0x${e.pa.toString(16)} has size ${size} in memory, not ${e.size}`);
  });
  if (after.length !== memory.length) {
    const listed = new Set(after.map((e) => e.pa));
    const missing = memory.filter((e) => !listed.has(e.pa)).map((e) => `0x${e.pa.toString(16)}`);
    // The first ten, so that a vector missing thousands of entries gets a message of one line, not megabytes.
    const shown = missing.length > 10 ? `${missing.slice(0, 10).join(', ')} and ${missing.length - 10} more` : missing.join(', ');
    c.fail(path, `lists ${after.length} entries, memory lists ${memory.length}: missing ${shown} (memory_after lists the same entries as memory)`);
  }
}

/** The reserved bits set in a present PAE PDPTE (SDM Vol. 3A §4.4.1, Table 4-8), 0n when none or not present. */
function pdpteReserved(value: bigint, maxPhyAddr: number): bigint {
  if ((value & 1n) === 0n) return 0n;
  return value & (PDPTE_RSVD_LO | (((1n << 64n) - 1n) & ~((1n << BigInt(maxPhyAddr)) - 1n)));
}

/**
 * A present PAE PDPTE with a reserved bit makes the CR3 load that loads it fail with #GP, not a #PF (SDM Vol. 3A
 * §4.4.1). The format can only expect an access's #PF or success, so such a vector is not valid input. The
 * PDPTEs are the vector's `pdptes`, or, without them, the four 8-byte values at CR3[31:5] in `memory`.
 */
function checkPdptes(c: Ctx, pdptes: readonly bigint[] | null, memory: readonly VectorMemoryEntry[], cr3: bigint, maxPhyAddr: number): void {
  const problem = (i: number, value: bigint, rsvd: bigint) =>
    `PDPTE ${i} = 0x${value.toString(16)} is present with reserved bits 0x${rsvd.toString(16)} set (bits 2:1, 8:5, 63:MAXPHYADDR): ` +
    'loading it at CR3 is a #GP, not a #PF (SDM Vol. 3A §4.4.1, Table 4-8), which a vector cannot expect';
  if (pdptes !== null) {
    pdptes.forEach((value, i) => {
      const rsvd = pdpteReserved(value, maxPhyAddr);
      if (rsvd !== 0n) c.fail(`pdptes[${i}]`, problem(i, value, rsvd));
    });
    return;
  }
  const base = cr3 & 0xffffffe0n;
  for (let i = 0; i < 4; i++) {
    const pa = base + BigInt(i * 8);
    let value = 0n;
    let from = -1;
    memory.forEach((e, k) => {
      if (e.pa === pa || (e.size === 4 && e.pa === pa + 4n)) {
        value |= e.size === 8 || e.pa === pa ? e.value : e.value << 32n;
        from = k;
      }
    });
    const rsvd = pdpteReserved(value, maxPhyAddr);
    if (rsvd !== 0n) c.fail(`memory[${from}]`, `without pdptes, the PDPTE registers are loaded from memory at CR3: ${problem(i, value, rsvd)}`);
  }
}

function access(c: Ctx, v: Json, path: string): number {
  const o = object(c, v, path);
  const write = bit(c, field(c, o, 'write', `${path}.write`), `${path}.write`);
  const user = bit(c, field(c, o, 'user', `${path}.user`), `${path}.user`);
  const fetch = bit(c, field(c, o, 'fetch', `${path}.fetch`), `${path}.fetch`);
  if (write && fetch) c.fail(path, 'an access cannot be both a write and a fetch');
  return (write ? ACC_WRITE : 0) | (user ? ACC_USER : 0) | (fetch ? ACC_FETCH : 0);
}

function outcome(c: Ctx, o: Record<string, Json>, path: string): VectorOutcome {
  const f = field(c, o, 'fault', `${path}.fault`);
  if (typeof f !== 'boolean') c.fail(`${path}.fault`, `expected true or false, got ${describe(f)}`);
  const ec = field(c, o, 'error_code', `${path}.error_code`);
  const pa = field(c, o, 'pa', `${path}.pa`);
  if (f) {
    if (ec === null) c.fail(`${path}.error_code`, 'expected the error code of the fault, got null');
    if (typeof ec !== 'number' || !Number.isInteger(ec) || ec < 0 || ec > ERROR_CODE_MAX) {
      c.fail(`${path}.error_code`, `expected an error code in 0..63 (P=1 W=2 U=4 RSVD=8 I/D=16 PK=32), got ${describe(ec)}`);
    }
    const errorCode = ec;
    if (pa !== null) c.fail(`${path}.pa`, `expected null with a fault, got ${describe(pa)}`);
    return { fault: true, errorCode, pa: null };
  }
  if (ec !== null) c.fail(`${path}.error_code`, `expected null without a fault, got ${describe(ec)}`);
  if (pa === null) c.fail(`${path}.pa`, 'expected the physical address without a fault, got null');
  return { fault: false, errorCode: null, pa: hex(c, pa, `${path}.pa`, MAX_PA, '2^52') };
}

/**
 * Validates one parsed JSON value as a vector of `file`:`line`. Unknown fields (such as `ac_flags`) are
 * ignored; every field the format defines is checked for presence, type and range.
 */
export function validateVector(json: Json, file: string, line: number): ConformanceVector {
  const c: Ctx = new Ctx(file, line);
  const v = object(c, json, '(vector)');
  const id = field(c, v, 'id', 'id');
  if (typeof id !== 'string') c.fail('id', `expected a string, got ${describe(id)}`);
  const modeV = field(c, v, 'mode', 'mode');
  if (typeof modeV !== 'string') c.fail('mode', `expected a string, got ${describe(modeV)}`);
  if (!(PAGING_MODE_NAMES as readonly string[]).includes(modeV)) c.fail('mode', `expected one of ${PAGING_MODE_NAMES.join(', ')}, got ${describe(modeV)}`);
  const mode = modeV as PagingModeName;
  const is32 = mode === 'legacy32' || mode === 'pae';

  const co = object(c, field(c, v, 'cpu', 'cpu'), 'cpu');
  const b = (k: string) => bit(c, field(c, co, k, `cpu.${k}`), `cpu.${k}`);
  const cplV = integer(c, field(c, co, 'cpl', 'cpu.cpl'), 'cpu.cpl', 0, 3);
  if (cplV !== 0 && cplV !== 3) c.fail('cpu.cpl', `expected 0 or 3, got ${cplV}`);
  const cpu: VectorCpu = {
    cr0Wp: b('cr0_wp'),
    cr4Pse: b('cr4_pse'),
    cr4Pge: co['cr4_pge'] === undefined ? false : bit(c, co['cr4_pge'], 'cpu.cr4_pge'),
    cr4Smep: b('cr4_smep'),
    cr4Smap: b('cr4_smap'),
    cr4Pke: b('cr4_pke'),
    eferNxe: b('efer_nxe'),
    eflagsAc: b('eflags_ac'),
    cpl: cplV as 0 | 3,
    pkru: integer(c, field(c, co, 'pkru', 'cpu.pkru'), 'cpu.pkru', 0, 0xffffffff),
    maxPhyAddr: integer(c, field(c, co, 'maxphyaddr', 'cpu.maxphyaddr'), 'cpu.maxphyaddr', 36, 52),
  };

  const cr3 = hex(c, field(c, v, 'cr3', 'cr3'), 'cr3', is32 ? 1n << 32n : MAX_PA, is32 ? '2^32 in a 32-bit mode' : '2^52');

  let pdptes: bigint[] | null = null;
  if (mode === 'pae' && v['pdptes'] !== undefined) {
    const p = array(c, v['pdptes'], 'pdptes');
    if (p.length !== 4) c.fail('pdptes', `expected 4 PDPTE registers, got ${p.length}`);
    pdptes = p.map((e, i) => hex(c, e, `pdptes[${i}]`, 1n << 64n, '2^64'));
  }

  const memory = memoryList(c, field(c, v, 'memory', 'memory'), 'memory');
  if (mode === 'pae') checkPdptes(c, pdptes, memory, cr3, cpu.maxPhyAddr);
  const va = hex(c, field(c, v, 'va', 'va'), 'va', is32 ? 1n << 32n : 1n << 64n, is32 ? '2^32 in a 32-bit mode' : '2^64');
  if (mode === 'long5') {
    const signed = BigInt.asIntN(64, va);
    const canonical = signed >= -(1n << 56n) && signed < 1n << 56n;
    if (canonical && (signed >= 1n << 53n || signed < -(1n << 53n))) {
      c.fail('va', 'a canonical 5-level address must be within +-2^53 (the model keeps linear addresses as exact numbers)');
    }
  }
  const preAccess = v['pre_access'] === undefined ? null : access(c, v['pre_access'], 'pre_access');
  const acc = access(c, field(c, v, 'access', 'access'), 'access');
  // FORMAT.md: `user: 1` is a user-mode access (CPL 3), otherwise an explicit supervisor access (CPL 0). The
  // machines take the kind of access from `access`; a cpl that contradicts it would be parsed and never used.
  const accUser = (acc & ACC_USER) !== 0;
  if (cpu.cpl !== (accUser ? 3 : 0)) {
    const what = accUser ? 'user: 1 is a user-mode access, at CPL 3' : 'user: 0 is an explicit supervisor access, at CPL 0';
    c.fail('cpu.cpl', `${cpu.cpl} is not the CPL of access (${what}; FORMAT.md)`);
  }

  const eo = object(c, field(c, v, 'expect', 'expect'), 'expect');
  const exp = outcome(c, eo, 'expect');
  const memoryAfter = memoryList(c, field(c, eo, 'memory_after', 'expect.memory_after'), 'expect.memory_after');
  sameEntries(c, memory, memoryAfter, 'expect.memory_after');
  const memoryAfterDontCare: VectorDontCare[] = [];
  if (eo['memory_after_dontcare'] !== undefined) {
    array(c, eo['memory_after_dontcare'], 'expect.memory_after_dontcare').forEach((e, i) => {
      const path = `expect.memory_after_dontcare[${i}]`;
      const a = array(c, e, path);
      if (a.length !== 2) c.fail(path, `expected [pa, mask], got an array of ${a.length}`);
      const pa = hex(c, a[0], `${path}[0]`, MAX_PA, '2^52');
      // A mask applies to one entry of memory_after (the same entries as memory), within its size.
      const entry = memory.find((m) => m.pa === pa);
      if (entry === undefined) c.fail(`${path}[0]`, `0x${pa.toString(16)} is not an entry of memory`);
      memoryAfterDontCare.push({ pa, mask: hex(c, a[1], `${path}[1]`, 1n << BigInt(entry.size * 8), `2^${entry.size * 8} for a ${entry.size}-byte entry`) });
    });
  }
  let preExpect: VectorOutcome | null = null;
  if (v['pre_expect'] !== undefined) {
    if (preAccess === null) c.fail('pre_expect', 'given without pre_access');
    preExpect = outcome(c, object(c, v['pre_expect'], 'pre_expect'), 'pre_expect');
  }

  return {
    file,
    line,
    id,
    mode,
    cpu,
    cr3,
    pdptes,
    memory,
    va,
    preAccess,
    access: acc,
    expect: { ...exp, memoryAfter, memoryAfterDontCare },
    preExpect,
  };
}

/**
 * Parses the text of a JSON Lines vector file: one vector per non-blank line. Throws a `VectorError` for the
 * first line that is not JSON or not a valid vector, and for a file with no vector at all (empty, or blank
 * lines only): running nothing and reporting `0 passed, 0 failed` would hide a wrong or truncated file.
 */
export function parseVectorLines(text: string, file: string): ConformanceVector[] {
  const out: ConformanceVector[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!.trim();
    if (raw === '') continue;
    let json: Json;
    try {
      json = JSON.parse(raw);
    } catch (e) {
      throw new VectorError(file, i + 1, '', `not a JSON value (${e instanceof Error ? e.message : String(e)})`);
    }
    out.push(validateVector(json, file, i + 1));
  }
  if (out.length === 0) throw new VectorError(file, 0, '', 'no vectors (the file is empty or has only blank lines)');
  return out;
}

/** A vector in its JSON Lines form (FORMAT.md): the inverse of `validateVector` (`file` and `line` are not written). */
export function vectorToJson(v: ConformanceVector): Record<string, unknown> {
  const hexOf = (n: bigint) => `0x${n.toString(16)}`;
  const b = (x: boolean) => (x ? 1 : 0);
  const acc = (a: number) => ({ write: b((a & ACC_WRITE) !== 0), user: b((a & ACC_USER) !== 0), fetch: b((a & ACC_FETCH) !== 0) });
  const out = (o: VectorOutcome) => ({ fault: o.fault, error_code: o.errorCode, pa: o.pa === null ? null : hexOf(o.pa) });
  const mem = (list: readonly VectorMemoryEntry[]) => list.map((e) => [hexOf(e.pa), hexOf(e.value), e.size]);
  const c = v.cpu;
  return {
    id: v.id,
    mode: v.mode,
    cpu: {
      cr0_wp: b(c.cr0Wp),
      cr4_pse: b(c.cr4Pse),
      ...(c.cr4Pge ? { cr4_pge: 1 } : {}),
      cr4_smep: b(c.cr4Smep),
      cr4_smap: b(c.cr4Smap),
      cr4_pke: b(c.cr4Pke),
      efer_nxe: b(c.eferNxe),
      eflags_ac: b(c.eflagsAc),
      cpl: c.cpl,
      pkru: c.pkru,
      maxphyaddr: c.maxPhyAddr,
    },
    cr3: hexOf(v.cr3),
    ...(v.pdptes === null ? {} : { pdptes: v.pdptes.map(hexOf) }),
    memory: mem(v.memory),
    va: hexOf(v.va),
    ...(v.preAccess === null ? {} : { pre_access: acc(v.preAccess) }),
    access: acc(v.access),
    expect: {
      ...out(v.expect),
      memory_after: mem(v.expect.memoryAfter),
      ...(v.expect.memoryAfterDontCare.length === 0 ? {} : { memory_after_dontcare: v.expect.memoryAfterDontCare.map((d) => [hexOf(d.pa), hexOf(d.mask)]) }),
    },
    ...(v.preExpect === null ? {} : { pre_expect: out(v.preExpect) }),
  };
}
