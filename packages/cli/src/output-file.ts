import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError } from './errors.js';

/**
 * How every command writes a file it was asked for (`trace import -o`, `run --trace`):
 *
 * - The target is checked before anything runs: it must be a regular file or not exist yet. A device
 *   (`/dev/full`, `/dev/stdout`), a FIFO, a socket, a directory or a symbolic link is refused (exit 2): the
 *   command would otherwise replace the node or the link with a regular file. (To stream to a pipe, write to a
 *   file and `cat` it; a program's output that silently replaced `/dev/stdout` helps no one.)
 * - The target must not be one of the command's inputs (same device and inode, or the same path): writing it
 *   would destroy what is being read.
 * - The bytes go to `TARGET.partial-<pid>` beside it (same directory, so the rename is atomic), created with
 *   the old file's mode (a mode-600 file stays 600), and are renamed over the target only when the command
 *   succeeds. On bad input the partial file is removed and the old target is untouched; a command that fails
 *   with something worth keeping (a run's trace up to its failure) leaves the partial file, and the target untouched.
 */
export class OutputFile {
  /** The file being written (renamed to `target` by `commit`). */
  readonly partial: string;
  private fd: number | null;

  private constructor(
    /** The option that named the file, for messages (`-o`, `--trace`). */
    readonly option: string,
    readonly target: string,
    mode: number | undefined,
  ) {
    this.partial = path.join(path.dirname(target), `${path.basename(target)}.partial-${process.pid}`);
    try {
      this.fd = fs.openSync(this.partial, 'wx', mode ?? 0o666);
      // openSync applies the umask: the old file's mode exactly.
      if (mode !== undefined) fs.fchmodSync(this.fd, mode);
    } catch (e) {
      throw new InputError(`${option}: cannot write ${target} (${errCode(e)} on ${this.partial})`);
    }
  }

  /**
   * Checks `target` (see the class) and opens its partial file. `inputs` are the files the command reads;
   * `option` names the flag in messages.
   */
  static open(option: string, target: string, inputs: readonly string[] = []): OutputFile {
    const mode = checkOutputTarget(option, target, inputs);
    return new OutputFile(option, target, mode);
  }

  /** Writes `data` at the end of what was written (or at `position`). */
  write(data: string | Uint8Array, position?: number): void {
    if (this.fd === null) throw new Error(`${this.option} ${this.target}: written after it was closed`);
    try {
      if (typeof data === 'string') fs.writeSync(this.fd, data, position ?? null, 'utf8');
      else {
        let off = 0;
        while (off < data.length) off += fs.writeSync(this.fd, data, off, data.length - off, position === undefined ? null : position + off);
      }
    } catch (e) {
      throw new InputError(`${this.option}: cannot write ${this.target} (${errCode(e)})`);
    }
  }

  /** Cuts the partial file to `length` bytes. */
  truncate(length: number): void {
    if (this.fd !== null) fs.ftruncateSync(this.fd, length);
  }

  /** Success: closes the partial file and renames it over the target. */
  commit(): void {
    this.closeFd();
    try {
      fs.renameSync(this.partial, this.target);
    } catch (e) {
      fs.rmSync(this.partial, { force: true });
      throw new InputError(`${this.option}: cannot write ${this.target} (${errCode(e)})`);
    }
  }

  /** Failure with something worth keeping: closes the partial file and leaves it beside the untouched target. */
  keepPartial(): void {
    this.closeFd();
  }

  /** Failure before anything worth keeping: removes the partial file; the target is untouched. */
  discard(): void {
    this.closeFd();
    fs.rmSync(this.partial, { force: true });
  }

  private closeFd(): void {
    if (this.fd === null) return;
    const fd = this.fd;
    this.fd = null;
    fs.closeSync(fd);
  }
}

/** Writes `bytes` to `target` through an OutputFile: all of it, or nothing. */
export function writeOutputFile(option: string, target: string, bytes: Uint8Array, inputs: readonly string[] = []): void {
  const out = OutputFile.open(option, target, inputs);
  try {
    out.write(bytes);
  } catch (e) {
    out.discard();
    throw e;
  }
  out.commit();
}

/**
 * Checks an output target (see OutputFile) without writing anything; returns the mode of the existing file
 * (undefined when there is none). Commands call it before they run, so that a bad target costs nothing.
 */
export function checkOutputTarget(option: string, target: string, inputs: readonly string[] = []): number | undefined {
  if (target.length === 0) throw new InputError(`${option}: the file name is empty`);
  // '-' reads as standard output in most tools; here it would silently be a file named '-' in the working directory.
  if (target === '-') throw new InputError(`${option} -: writes a file, not standard output; give a file name (./- for a file named -)`);
  let st: fs.Stats | null = null;
  try {
    st = fs.lstatSync(target);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new InputError(`${option}: cannot write ${target} (${errCode(e)})`);
  }
  if (st !== null && !st.isFile()) {
    throw new InputError(`${option} ${target}: ${kindOf(st)}, not a regular file; the output is written only to a regular file (or a new one)`);
  }
  let dir: fs.Stats;
  try {
    dir = fs.statSync(path.dirname(path.resolve(target)));
  } catch (e) {
    throw new InputError(`${option}: cannot write ${target} (${errCode(e)})`);
  }
  if (!dir.isDirectory()) throw new InputError(`${option}: cannot write ${target} (ENOTDIR: ${path.dirname(target)} is not a directory)`);
  for (const input of inputs) {
    if (sameFile(target, st, input)) throw new InputError(`${option} ${target}: it is also an input of this command (${input}); writing it would destroy it`);
  }
  return st === null ? undefined : st.mode & 0o7777;
}

function sameFile(target: string, st: fs.Stats | null, input: string): boolean {
  if (path.resolve(target) === path.resolve(input)) return true;
  if (st === null) return false;
  try {
    const i = fs.statSync(input);
    return i.dev === st.dev && i.ino === st.ino;
  } catch {
    return false;
  }
}

export function kindOf(st: fs.Stats): string {
  if (st.isSymbolicLink()) return 'a symbolic link';
  if (st.isDirectory()) return 'a directory';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  return 'a special file';
}

export function errCode(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e instanceof Error ? e.message : String(e));
}
