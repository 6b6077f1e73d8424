import * as fs from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { InputError } from './errors.js';
import type { CellRecord } from './cell.js';

/**
 * A sweep's output directory: `results.jsonl` (one CellRecord per line, appended one whole line per write),
 * `summary.csv` and `report.html` (each written to a temporary file and renamed). A line cut short by a
 * crash (the only way one can be: each is a single write of the main thread) is dropped when the directory is
 * opened again, so the file always holds whole results and a rerun redoes just that cell. A directory that does
 * not exist yet is made at the first file written: a sweep that fails before any result leaves none behind.
 */
export class ResultStore {
  readonly results: string;
  private readonly done = new Map<string, CellRecord>();

  /** Whether `dir` exists (it is made by the first file written). */
  private made: boolean;

  constructor(readonly dir: string) {
    this.results = join(dir, 'results.jsonl');
    this.made = existingDir(dir);
    if (this.made && fs.existsSync(this.results)) for (const r of readResults(this.results, true)) this.done.set(r.cell.key, r);
  }

  /** Makes the directory before its first file. */
  private ensureDir(): void {
    if (this.made) return;
    try {
      fs.mkdirSync(this.dir, { recursive: true });
    } catch (e) {
      throw new InputError(`--out ${this.dir}: cannot create (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    this.made = true;
  }

  has(key: string): boolean {
    return this.done.has(key);
  }

  records(): CellRecord[] {
    return [...this.done.values()];
  }

  /** Appends one result as one line (a single write); a key already stored is not written again. */
  append(r: CellRecord): boolean {
    if (this.done.has(r.cell.key)) return false;
    this.ensureDir();
    fs.appendFileSync(this.results, `${JSON.stringify(r)}\n`);
    this.done.set(r.cell.key, r);
    return true;
  }

  /** Writes `name` in the directory through a temporary file and a rename: a reader sees the old file or the new one. */
  writeFile(name: string, text: string): string {
    this.ensureDir();
    return writeAtomically(join(this.dir, name), text);
  }
}

/**
 * Whether `dir` is an existing directory (false: it does not exist, and could be made: its nearest existing
 * ancestor is a directory we may write). Anything else is an InputError naming `--out`, before any cell runs.
 */
function existingDir(dir: string): boolean {
  const fail = (code: string): InputError => new InputError(`--out ${dir}: cannot create (${code})`);
  for (let d = resolve(dir), first = true; ; d = dirname(d), first = false) {
    let st: fs.Stats;
    try {
      st = fs.statSync(d);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      if (code === 'ENOENT' && dirname(d) !== d) continue;
      throw fail(code);
    }
    if (!st.isDirectory()) throw first ? new InputError(`--out ${dir}: not a directory`) : fail('ENOTDIR');
    if (first) return true;
    try {
      fs.accessSync(d, fs.constants.W_OK | fs.constants.X_OK);
    } catch (e) {
      throw fail((e as NodeJS.ErrnoException).code ?? (e as Error).message);
    }
    return false;
  }
}

/** Writes `file` through `file.tmp-<pid>` and a rename; on any error the temporary file is removed. */
export function writeAtomically(file: string, text: string): string {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw new InputError(`${file}: cannot write (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  return file;
}

/**
 * The records of a results.jsonl. A last line without its newline (a write cut short) is dropped, and with
 * `repair` cut from the file; any other line that is not a result is an InputError naming the line.
 */
export function readResults(file: string, repair = false): CellRecord[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new InputError(`${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const end = text.lastIndexOf('\n') + 1;
  if (end < text.length && repair) fs.truncateSync(file, Buffer.byteLength(text.slice(0, end)));
  const out: CellRecord[] = [];
  const lines = text.slice(0, end).split('\n');
  for (const [i, line] of lines.entries()) {
    if (line.trim().length === 0) continue;
    let r: CellRecord;
    try {
      r = JSON.parse(line) as CellRecord;
    } catch (e) {
      throw new InputError(`${file}:${i + 1}: not a JSON line (${(e as Error).message})`);
    }
    if (typeof r !== 'object' || r === null || typeof r.cell?.key !== 'string' || typeof r.counters?.total !== 'object')
      throw new InputError(`${file}:${i + 1}: not a sweep result (no cell.key or counters)`);
    out.push(r);
  }
  return out;
}
