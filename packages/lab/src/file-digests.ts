import { createHash } from 'node:crypto';
import { closeSync, createReadStream, openSync, readSync, statSync, type BigIntStats } from 'node:fs';
import { resolve } from 'node:path';
import { InputError } from './errors.js';

/**
 * The SHA-256 of files, each hashed once while it stays as it was: a digest is reused as long as the file's
 * (device, inode, size, modification time, change time), in nanoseconds, are those it had when it was hashed.
 * This is git's index check (read-cache.c `ie_match_stat`, with its "racily clean" entries) and ccache's and
 * make's: a write changes the change time (ctime), which no call can set back, so a file rewritten to the same
 * size with its modification time restored (`touch -r`, `utimes`) is hashed again. Two cases are not trusted:
 *
 * - a file that changed while it was hashed (its stat after the read differs from before): the digest is returned
 *   (it is what was read) but not kept;
 * - a file changed too shortly before it was hashed ("racily clean" in git's words): a write in the same tick of
 *   the file system's clock would keep every field, so a file whose ctime is less than `racyNs` before the hash
 *   began is hashed again next time.
 *
 * A sweep's coordinator and each thread that runs cells have one (`fileDigests`), so a cell on a large trace costs
 * a `stat`, not a read of the file, once the file was hashed in that thread.
 */
export interface FileDigests {
  /** The SHA-256 (hex) of a regular file's contents, read as a stream; an InputError naming the file otherwise. */
  sha256(file: string): Promise<string>;
  /** `sha256`, read synchronously in chunks (for callers that cannot wait, such as a trace loader). */
  sha256Sync(file: string): string;
  /**
   * `read(file)` (which reads the whole file), with the SHA-256 of the bytes it returned: the kept digest when the
   * file was the same before and after the read as when it was hashed, else the hash of those bytes.
   */
  readWithSha256<T extends Uint8Array>(file: string, read: (file: string) => T): { bytes: T; sha256: string };
  /** How many times a file's contents were hashed (a digest reused is not counted). */
  readonly hashed: number;
}

/** Options of `createFileDigests` (tests give their own clock and count the hashes). */
export interface FileDigestsOptions {
  /** Wall-clock time in nanoseconds (default `Date.now()`), the clock file times are taken from. */
  readonly now?: () => bigint;
  /** A file changed less than this before its hash began is hashed again next time (default 2 s: see `RACY_NS`). */
  readonly racyNs?: bigint;
  /** Called once per file hashed (a read of its contents), not for a digest reused. */
  readonly onHash?: (file: string) => void;
}

/**
 * How recent a change must be for its file's digest not to be kept. Linux stamps file times from a coarse clock
 * (one tick, at most 10 ms; fs/inode.c `current_time`); 2 s also covers FAT's 2-second times and a file server
 * whose clock is up to 2 s behind this machine's. The check compares the file's ctime, stamped by the file
 * system's clock, with this machine's clock (git compares with its index file's mtime, stamped by the same file
 * system): a server more than 2 s behind stamps a fresh write with a time that looks old, and a file written
 * again in the same tick as it was hashed would then keep a stale digest; a server ahead only costs hashes.
 * The cost: a file written less than 2 s before it was hashed is hashed again.
 */
export const RACY_NS = 2_000_000_000n;

/** Bytes read at a time while hashing. */
const CHUNK = 1 << 20;

/** What identifies one version of a file, for `FileDigests`. */
function statKey(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** A file's stat (bigint), or an InputError saying why it cannot be hashed. */
function statFile(file: string): BigIntStats {
  let st: BigIntStats;
  try {
    st = statSync(file, { bigint: true });
  } catch (e) {
    throw new InputError(`${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  // A FIFO or a device would block the read (or never end): an input is a file.
  if (!st.isFile()) throw new InputError(`${file}: not a regular file (${st.isDirectory() ? 'a directory' : 'a device, FIFO or socket'})`);
  return st;
}

/** The stat of `file`, or null when it cannot be had (the caller's read then says what is wrong). */
function statOrNull(file: string): BigIntStats | null {
  try {
    return statSync(file, { bigint: true });
  } catch {
    return null;
  }
}

/** A cache of file digests for one thread (see FileDigests). */
export function createFileDigests(o: FileDigestsOptions = {}): FileDigests {
  const now = o.now ?? ((): bigint => BigInt(Date.now()) * 1_000_000n);
  const racyNs = o.racyNs ?? RACY_NS;
  const kept = new Map<string, { key: string; sha256: string }>();

  const cached = (file: string, st: BigIntStats): string | undefined => {
    const k = kept.get(file);
    return k !== undefined && k.key === statKey(st) ? k.sha256 : undefined;
  };
  /** Keeps what was hashed between `before` and `after` from `start`, when it can be trusted (see FileDigests). */
  const keep = (file: string, start: bigint, before: BigIntStats, after: BigIntStats | null, sha256: string): void => {
    const key = statKey(before);
    if (after === null || statKey(after) !== key || before.ctimeNs > start - racyNs) kept.delete(file);
    else kept.set(file, { key, sha256 });
  };
  let hashed = 0;
  const hashing = (file: string): void => {
    hashed++;
    o.onHash?.(file);
  };
  const readError = (file: string, e: unknown): InputError =>
    new InputError(`${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);

  return {
    get hashed(): number {
      return hashed;
    },

    sha256(path: string): Promise<string> {
      const file = resolve(path);
      const start = now();
      let before: BigIntStats;
      try {
        before = statFile(file);
      } catch (e) {
        return Promise.reject(e as Error);
      }
      const known = cached(file, before);
      if (known !== undefined) return Promise.resolve(known);
      hashing(file);
      return new Promise((done, fail) => {
        const h = createHash('sha256');
        createReadStream(file, { highWaterMark: CHUNK })
          .on('data', (chunk) => h.update(chunk))
          .on('error', (e) => fail(readError(file, e)))
          .on('end', () => {
            const sha256 = h.digest('hex');
            keep(file, start, before, statOrNull(file), sha256);
            done(sha256);
          });
      });
    },

    sha256Sync(path: string): string {
      const file = resolve(path);
      const start = now();
      const before = statFile(file);
      const known = cached(file, before);
      if (known !== undefined) return known;
      hashing(file);
      const h = createHash('sha256');
      let fd: number;
      try {
        fd = openSync(file, 'r');
      } catch (e) {
        throw readError(file, e);
      }
      try {
        const buf = Buffer.allocUnsafe(CHUNK);
        for (;;) {
          const n = readSync(fd, buf, 0, CHUNK, null);
          if (n === 0) break;
          h.update(buf.subarray(0, n));
        }
      } catch (e) {
        throw readError(file, e);
      } finally {
        closeSync(fd);
      }
      const sha256 = h.digest('hex');
      keep(file, start, before, statOrNull(file), sha256);
      return sha256;
    },

    readWithSha256<T extends Uint8Array>(path: string, read: (file: string) => T): { bytes: T; sha256: string } {
      const file = resolve(path);
      const start = now();
      const before = statOrNull(file);
      const bytes = read(path); // says itself what is wrong with the file
      const after = statOrNull(file);
      const same = before !== null && after !== null && statKey(before) === statKey(after);
      const known = same ? cached(file, before) : undefined;
      if (known !== undefined) return { bytes, sha256: known };
      hashing(file);
      const sha256 = createHash('sha256').update(bytes).digest('hex');
      if (before !== null) keep(file, start, before, after, sha256);
      return { bytes, sha256 };
    },
  };
}

/** This thread's file digests: the sweep's planning, the checks of the cells this thread runs, and provenance. */
export const fileDigests: FileDigests = createFileDigests();
