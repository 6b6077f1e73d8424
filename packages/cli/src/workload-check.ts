import * as fs from 'node:fs';
import { SYNTHETIC_WORKLOADS, TraceError, WorkloadError, parseWorkloadRef, readVxtHeader, resolveParams } from '@vmexit/guest';
import { InputError } from './errors.js';

/**
 * Checks a workload spec before anything runs (`run` before it opens its trace file, `main` before its
 * conformance vectors): a known synthetic workload with parameters in range, `kbuild`, or a `.vxt` file that
 * is a regular file whose header agrees with its size. The run reads and decodes the trace again, in full.
 * Problems are InputErrors (exit 2) naming the option.
 */
export function checkWorkloadSpec(spec: string, option: string): void {
  try {
    const ref = parseWorkloadRef(spec);
    if (ref.kind === 'synthetic') {
      const w = SYNTHETIC_WORKLOADS.get(ref.name);
      if (w === undefined) {
        throw new WorkloadError(
          'unknown-workload',
          spec,
          `no workload '${ref.name}' (known: ${[...SYNTHETIC_WORKLOADS.keys()].join(', ')}, kbuild, or a .vxt file)`,
        );
      }
      resolveParams(spec, ref.name, w.params, ref.raw);
    } else if (ref.path !== null) {
      checkTraceFile(ref.path);
    }
  } catch (e) {
    if (e instanceof WorkloadError || e instanceof TraceError) throw new InputError(`${option}: ${e.message}`);
    throw e;
  }
}

/** The files a workload spec reads (a `.vxt` path), for the output checks (an output must not be an input). */
export function workloadInputs(spec: string): string[] {
  try {
    const ref = parseWorkloadRef(spec);
    return ref.kind === 'trace' && ref.path !== null ? [ref.path] : [];
  } catch {
    return [];
  }
}

/** The header of a `.vxt` file against its size, without reading the rest (readVxtHeader; TraceError). */
function checkTraceFile(file: string): void {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new TraceError('io', file, `cannot read the trace file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile())
      throw new TraceError('io', file, `not a regular file (${st.isDirectory() ? 'a directory' : 'a device, FIFO or socket'}); a .vxt trace is a file`);
    const head = new Uint8Array(Math.min(24, st.size));
    fs.readSync(fd, head, 0, head.length, 0);
    readVxtHeader(head, file, st.size);
  } finally {
    fs.closeSync(fd);
  }
}
