#!/usr/bin/env node
// Fuzzes the CLI's trace inputs: mutated `.vxt` files (`trace info`, and every 25th also `run --backend none`)
// and mutated lackey logs (`trace import lackey`). Every case must end with exit 0 or 2 (never 70, never a
// throw), in under 10 s, and the process under 512 MB of memory. Runs in-process through the CLI's `main`
// with stdout and stderr captured.
//
//   node packages/cli/scripts/fuzz-inputs.mjs [--count 10000] [--seed 1]
//
// Mutations: bit flips (anywhere, header included), truncations, the header's length fields swapped or
// inflated, and, so that the decoder's inner checks are reached past the checksum, mutations of the
// decompressed body (bit flips, a truncated body, an inflated metadata length, inflated column lengths and
// record counts in the metadata) re-compressed under a correct header. Lackey logs: bit flips, truncations
// (at a line boundary too), deleted, duplicated and swapped lines, inflated access sizes and addresses.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TINY = path.join(HERE, '..', '..', 'guest', 'test', 'fixtures', 'tiny');
const PIPE = path.join(HERE, '..', '..', 'guest', 'test', 'fixtures', 'pipeline');
export const TINY_LOGS = ['tiny.100.1', 'tiny.101.1', 'tiny.101.2'].map((f) => path.join(TINY, f));
export const PIPE_LOGS = fs.existsSync(PIPE)
  ? fs
      .readdirSync(PIPE)
      .filter((f) => /\.\d+\.\d+$/.test(f))
      .map((f) => path.join(PIPE, f))
  : [];

/** xorshift32: the cases depend on the seed only. */
export function rng(seed) {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
  return { next, int: (n) => next() % n, pick: (a) => a[next() % a.length] };
}

function header(payload, body) {
  const h = Buffer.alloc(24);
  h.set([0x56, 0x58, 0x54, 0x1a], 0);
  h.writeUInt16LE(1, 4);
  h.writeUInt32LE(payload.length, 8);
  h.writeUInt32LE(zlib.crc32(payload) >>> 0, 12);
  h.writeUInt32LE(body.length % 2 ** 32, 16);
  h.writeUInt32LE(Math.floor(body.length / 2 ** 32), 20);
  return h;
}

/** A body re-compressed under a correct header (quality 1: fast). */
function wrap(body) {
  const payload = zlib.brotliCompressSync(body, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 1 } });
  return Buffer.concat([header(payload, body), payload]);
}

function flipBits(buf, r, n) {
  const b = Buffer.from(buf);
  for (let i = 0; i < n; i++) b[r.int(b.length)] ^= 1 << r.int(8);
  return b;
}

/** One mutated `.vxt` from `good` (a valid file); returns [what, bytes]. */
export function mutateVxt(good, r) {
  const body = zlib.brotliDecompressSync(good.subarray(24));
  const k = r.int(12);
  switch (k) {
    case 0:
      return ['bit flips', flipBits(good, r, 1 + r.int(8))];
    case 1:
      return ['header bit flip', flipBits(good.subarray(0, 24), r, 1).length && Buffer.concat([flipBits(good.subarray(0, 24), r, 1), good.subarray(24)])];
    case 2:
      return ['truncated', good.subarray(0, r.int(good.length))];
    case 3: {
      const b = Buffer.from(good);
      const pl = b.readUInt32LE(8);
      b.writeUInt32LE(b.readUInt32LE(16), 8);
      b.writeUInt32LE(pl, 16);
      return ['payload and body lengths swapped', b];
    }
    case 4: {
      const b = Buffer.from(good);
      const v = r.pick([2 ** 32 - 1, 2 ** 31, b.readUInt32LE(16) * (2 + r.int(2000)), b.readUInt32LE(16) + 1 + r.int(64)]);
      b.writeUInt32LE(v % 2 ** 32, 16);
      b.writeUInt32LE(r.int(3) === 0 ? r.int(2 ** 16) : 0, 20);
      return ['body length inflated', b];
    }
    case 5: {
      const b = Buffer.from(good);
      b.writeUInt32LE((b.readUInt32LE(8) + 1 + r.int(1 << 20)) >>> 0, 8);
      return ['payload length inflated', b];
    }
    case 6:
      return ['body bit flips (valid checksum)', wrap(flipBits(body, r, 1 + r.int(6)))];
    case 7:
      return ['body truncated (valid checksum)', wrap(body.subarray(0, r.int(body.length)))];
    case 8: {
      const b = Buffer.from(body);
      b.writeUInt32LE(r.pick([b.readUInt32LE(0) + 1 + r.int(100), 0xffffffff, 2 ** 31, 0]), 0);
      return ['metadata length inflated (valid checksum)', wrap(b)];
    }
    case 9:
    case 10: {
      const metaLen = body.readUInt32LE(0);
      const meta = JSON.parse(body.subarray(4, 4 + metaLen).toString('utf8'));
      const field = r.pick(['records', 'countsBytes', 'pagesBytes', 'processes']);
      if (field === 'processes') {
        const p = meta.processes[r.int(meta.processes.length)];
        const f2 = r.pick(['recordStart', 'recordEnd', 'pid', 'parent']);
        p[f2] = r.pick([p[f2] + 1, -1, 2 ** 53, 1e300, null, '7']);
      } else meta[field] = r.pick([meta[field] * (2 + r.int(100000)), 2 ** 32, 2 ** 53, -1, 0, 1.5]);
      const m = Buffer.from(JSON.stringify(meta));
      const lb = Buffer.alloc(4);
      lb.writeUInt32LE(m.length, 0);
      return [`metadata ${field} inflated (valid checksum)`, wrap(Buffer.concat([lb, m, body.subarray(4 + metaLen)]))];
    }
    default: {
      // columns swapped: the kinds column replaced by the count column's first bytes
      const metaLen = body.readUInt32LE(0);
      const b = Buffer.from(body);
      const o = 4 + metaLen;
      const n = Math.min(64, b.length - o);
      b.set(flipBits(b.subarray(o, o + n), r, 2), o);
      return ['columns scrambled (valid checksum)', wrap(b)];
    }
  }
}

/** One mutated set of lackey logs: [what, texts by file name]. */
export function mutateLogs(logs, r) {
  const texts = logs.map((f) => fs.readFileSync(f, 'latin1'));
  const i = r.int(texts.length);
  const t = texts[i];
  const lines = t.split('\n');
  const k = r.int(8);
  let what;
  switch (k) {
    case 0:
      what = 'bit flips';
      texts[i] = flipBits(Buffer.from(t, 'latin1'), r, 1 + r.int(6)).toString('latin1');
      break;
    case 1:
      what = 'truncated';
      texts[i] = t.slice(0, r.int(t.length));
      break;
    case 2:
      what = 'truncated at a line boundary';
      texts[i] = `${lines.slice(0, r.int(lines.length)).join('\n')}\n`;
      break;
    case 3: {
      what = 'lines deleted';
      const a = r.int(lines.length);
      lines.splice(a, 1 + r.int(5));
      texts[i] = lines.join('\n');
      break;
    }
    case 4: {
      what = 'lines duplicated';
      const a = r.int(lines.length);
      lines.splice(a, 0, ...lines.slice(a, a + 1 + r.int(20)));
      texts[i] = lines.join('\n');
      break;
    }
    case 5: {
      what = 'lines swapped';
      const a = r.int(lines.length);
      const b = r.int(lines.length);
      [lines[a], lines[b]] = [lines[b], lines[a]];
      texts[i] = lines.join('\n');
      break;
    }
    case 6:
      what = 'sizes inflated';
      texts[i] = t.replace(/,(\d+)\n/g, (m, n) =>
        r.int(4) === 0 ? `,${r.pick(['99999999', '4294967296', '0', '18446744073709551615', String(Number(n) * 4097)])}\n` : m,
      );
      break;
    default:
      what = 'addresses and lengths inflated';
      texts[i] = t.replace(/\b(0x)?[0-9a-f]{6,16}\b/g, (m) =>
        r.int(6) === 0 ? r.pick(['ffffffffffffffff', '7fffffffffff', '0x7fffffffffffffff', '1000000000000000']) : m,
      );
  }
  return [what, texts];
}

/**
 * Runs `count` cases with `main` (the CLI's, from src in the tests or dist in the script), writing each input
 * to `dir`. Returns the figures and the problems (a case with another exit code, a throw, or over 10 s).
 */
export async function runFuzz({ main, seed = 1, count = 10000, dir, goodVxt, onCase }) {
  const r = rng(seed);
  const problems = [];
  let maxMs = 0;
  let maxCase = '';
  let totalMs = 0;
  const codes = { 0: 0, 2: 0 };
  const origOut = process.stdout.write;
  const origErr = process.stderr.write;
  const logSets = [TINY_LOGS, ...(PIPE_LOGS.length > 0 ? [PIPE_LOGS] : [])];
  for (let c = 0; c < count; c++) {
    let argv;
    let what;
    if (c % 2 === 0) {
      const [w, bytes] = mutateVxt(goodVxt, r);
      const f = path.join(dir, `case-${c}.vxt`);
      fs.writeFileSync(f, bytes);
      what = `vxt: ${w}`;
      argv = c % 50 === 0 ? ['run', '--workload', f, '--backend', 'none', '--memory', '64M'] : ['trace', 'info', f];
    } else {
      const logs = r.pick(logSets);
      const [w, texts] = mutateLogs(logs, r);
      const sub = path.join(dir, `logs-${c}`);
      fs.mkdirSync(sub);
      const files = logs.map((l, i) => {
        const f = path.join(sub, path.basename(l));
        fs.writeFileSync(f, texts[i], 'latin1');
        return f;
      });
      what = `lackey: ${w}`;
      argv = ['trace', 'import', 'lackey', ...files, '-o', path.join(sub, 'out.vxt'), '--quality', '1'];
    }
    let code;
    let stderr = '';
    if (process.env.FUZZ_DEBUG) origErr.call(process.stderr, `case ${c}: ${what}: ${argv.join(' ')}\n`);
    const t0 = performance.now();
    process.stdout.write = () => true;
    process.stderr.write = (s) => ((stderr += String(s)), true);
    try {
      code = await main(argv);
    } catch (e) {
      code = `threw ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`;
    } finally {
      process.stdout.write = origOut;
      process.stderr.write = origErr;
      process.exitCode = undefined;
    }
    const ms = performance.now() - t0;
    totalMs += ms;
    if (ms > maxMs) {
      maxMs = ms;
      maxCase = `${c} (${what})`;
    }
    if (code === 0 || code === 2) codes[code]++;
    else problems.push({ case: c, what, argv, code, stderr: stderr.slice(0, 2000) });
    if (ms > 10000) problems.push({ case: c, what, argv, code: `took ${ms.toFixed(0)} ms`, stderr: '' });
    if (code === 2 && !/^vmexit: /.test(stderr)) problems.push({ case: c, what, argv, code: 'exit 2 without a message', stderr });
    // keep the temporary directory small
    for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f), { recursive: true, force: true });
    onCase?.(c);
  }
  return { count, totalMs, maxMs, maxCase, codes, problems, maxRssMB: process.resourceUsage().maxRSS / 1024 };
}

/** The valid `.vxt` the mutations start from: the tiny recording, imported. */
export function goodVxtOf(encodeVxt, importLackey) {
  return Buffer.from(encodeVxt(importLackey(TINY_LOGS), { quality: 5 }));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const arg = (name, d) => {
    const i = process.argv.indexOf(name);
    return i < 0 ? d : Number(process.argv[i + 1]);
  };
  const { main } = await import('../dist/program.js');
  const { encodeVxt, importLackey } = await import('@vmexit/guest');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmexit-fuzz-'));
  const count = arg('--count', 10000);
  const t0 = Date.now();
  const res = await runFuzz({
    main,
    seed: arg('--seed', 1),
    count,
    dir,
    goodVxt: goodVxtOf(encodeVxt, importLackey),
    onCase: (c) => {
      if ((c + 1) % 1000 === 0) process.stderr.write(`${c + 1}/${count} cases, ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    },
  });
  fs.rmSync(dir, { recursive: true, force: true });
  const { problems, ...figures } = res;
  process.stdout.write(
    `${JSON.stringify({ ...figures, totalSeconds: +(res.totalMs / 1000).toFixed(1), maxMs: +res.maxMs.toFixed(1), problems: problems.length }, null, 2)}\n`,
  );
  for (const p of problems.slice(0, 20)) process.stdout.write(`PROBLEM ${JSON.stringify(p)}\n`);
  const ok = problems.length === 0 && res.maxRssMB < 512;
  process.exitCode = ok ? 0 : 1;
}
