import { resolve } from 'node:path';
import { createTraceLoader, decodeVxt, readVxtFile, type TraceLoader, type VxtTrace } from '@vmexit/guest';
import { InputError } from './errors.js';
import { fileDigests, type FileDigests } from './file-digests.js';

/** Options of a `CellTraceLoader` (tests count the decodes, or give digests of their own). */
export interface CellTraceLoaderOptions {
  /** Decodes a trace file's bytes (default `decodeVxt`). */
  readonly decode?: (bytes: Uint8Array, file: string) => VxtTrace;
  /** The digests the loader reads through (default this thread's `fileDigests`). */
  readonly digests?: FileDigests;
}

/**
 * The traces of the cells one thread runs, keyed by the SHA-256 of their contents: `load(file, sha256)` gives the
 * trace whose file held exactly `sha256`, so that a cell replays the trace its key names. The loader keeps the last
 * trace it decoded (cells on one trace, the most common case, decode it once per thread) and gives it again for
 * that digest, whatever the file holds now; another digest is read from the file, and refused with an InputError
 * when the bytes read are not that content (the file changed since the sweep was planned). Runs only read a trace
 * it gave out. Drop the loader to let its trace go.
 */
export class CellTraceLoader {
  private kept: { sha256: string; trace: VxtTrace } | null = null;
  private readonly decode: (bytes: Uint8Array, file: string) => VxtTrace;
  private readonly digests: FileDigests;

  constructor(o: CellTraceLoaderOptions = {}) {
    this.decode = o.decode ?? decodeVxt;
    this.digests = o.digests ?? fileDigests;
  }

  /**
   * The trace of `path` whose contents have the SHA-256 `sha256` (hex); without one, the trace of what the file
   * holds now (its digest found through `digests`: a stat once it was hashed).
   */
  load(path: string, sha256?: string): VxtTrace {
    // Without a digest to match, what the file holds now decides (nothing to compare with when no trace is kept).
    const wanted = sha256 ?? (this.kept === null ? undefined : this.digestNow(path));
    if (this.kept !== null && this.kept.sha256 === wanted) return this.kept.trace;
    this.kept = null; // the earlier trace can go before the next one is read
    // The digest of the very bytes decoded (readVxtFile checks the size and header before it reads the rest).
    const { bytes, sha256: read } = this.digests.readWithSha256(path, readVxtFile);
    if (wanted !== undefined && read !== wanted) {
      throw new InputError(
        `${resolve(path)} changed since the sweep was planned (sha256 ${read.slice(0, 12)}… now, ${wanted.slice(0, 12)}… then): rerun the sweep`,
      );
    }
    // createTraceLoader marks the trace as shared, so that a run keeps with it what it works out from all its records
    // (its highest address, its represented accesses). A new one for each decode, called once: its own key (path,
    // inode, size, mtime) never picks the trace; the digest does.
    const trace = createTraceLoader(() => this.decode(bytes, path))(path);
    this.kept = { sha256: read, trace };
    return trace;
  }

  /** The digest of what `path` holds now; a file that cannot be hashed is refused as the trace reader refuses it (TraceError). */
  private digestNow(path: string): string {
    try {
      return this.digests.sha256Sync(path);
    } catch (e) {
      readVxtFile(path); // throws the reader's own error, naming what is wrong with the file
      throw e;
    }
  }

  /** A `TraceLoader` for the runs of one cell: `load(path, sha256)` with the digest the cell names for `path`'s file. */
  forCell(planned: (file: string) => string | undefined): TraceLoader {
    return (path) => this.load(path, planned(resolve(path)));
  }
}
