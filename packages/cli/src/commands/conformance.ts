import type { Command } from 'commander';
import { VectorError, formatFailure, formatSummary, loadVectorFile, reportToJson, runConformance, runVector } from '@vmexit/core';
import type { ConformanceReport, ConformanceVector, ModuleSources, Variant, VectorResult } from '@vmexit/core';
import * as fs from 'node:fs';
import { createVmVectorMachine } from '../conformance-vm.js';
import { turnOfEventLoop } from '../differential.js';
import { InputError } from '../errors.js';
import { addVariantOptions, checkVariantFlags as checkFlagValues, variantFromOptions, type VariantOptions } from '../variant-options.js';

/**
 * `vmexit conformance FILE... [--json]`: runs paging conformance vectors (JSON Lines, the format of
 * @vmexit/core's conformance/FORMAT.md) on the architectural walker of @vmexit/core.
 *
 * Every file is read and validated before any vector runs: a file that cannot be read or a line that is not
 * a valid vector is an InputError (exit 2) naming the file, the line and the field, and nothing is run.
 * Then one line per failed vector (id, where it is, each differing field with expected and observed values)
 * and last `conformance: N passed, M failed`; with --json, one JSON report instead. Exit 0 when all pass, 1
 * when any fails. A file with no vector (empty, or blank lines only) is bad input too.
 *
 * Variant flags without a backend (`--mmu shadow` alone, or with `--backend none`) are an InputError: the
 * vectors would run natively and the flag would be silently ignored.
 */
export function registerConformance(program: Command): void {
  const cmd = program
    .command('conformance')
    .description('run paging conformance vectors (JSON Lines) natively, or as guest accesses under a hypervisor variant')
    .argument('<files...>', 'vector files, one vector per line')
    .option('--json', 'print a machine-readable report instead of the failure lines and summary');
  addVariantOptions(cmd).action(async (files: string[], opts: { json?: boolean } & VariantOptions) => {
    checkFlagValues(opts);
    checkVariantFlags(opts);
    const vectors: ConformanceVector[] = [];
    for (const file of files) {
      checkVectorFile(file);
      try {
        vectors.push(...loadVectorFile(file));
      } catch (e) {
        if (e instanceof VectorError) throw new InputError(e.message);
        throw e;
      }
    }
    // With variant flags, each vector runs as a guest access on a VM of that variant (vCPU 0), and must
    // give exactly the native outcome; without them, on the architectural walker.
    const underVariant = (opts.backend !== undefined && opts.backend !== 'none') || opts.config !== undefined;
    let report: ConformanceReport;
    if (underVariant) {
      const variant = await variantFromOptions(opts);
      if (variant.backend === 'none') {
        // --config chose no backend: the flags that configure one would be ignored.
        const ignored = ignoredFlags(opts);
        if (ignored.length > 0) {
          throw new InputError(`${ignored.join(', ')}: meaningless with backend 'none' (from --config ${opts.config}): the vectors run natively`);
        }
        report = runConformance(vectors);
      } else {
        report = await runVectorsOnVariant(vectors, variant);
      }
    } else {
      report = runConformance(vectors);
    }
    if (opts.json === true) {
      const json = reportToJson(report) as { results: Record<string, unknown>[] };
      for (const [i, r] of report.results.entries()) {
        const stopped = stoppedOf(r);
        if (stopped !== null) json.results[i] = { id: r.id, file: r.file, line: r.line, passed: false, mismatches: r.mismatches, stopped };
      }
      process.stdout.write(`${JSON.stringify(json, null, 2)}\n`);
    } else {
      let text = '';
      for (const r of report.results) if (!r.passed) text += `${formatFailure(r)}\n`;
      process.stdout.write(`${text}${formatSummary(report)}\n`);
    }
    process.exitCode = report.failed > 0 ? 1 : 0;
  });
}

/** The variant flags given that only a hypervisor variant uses (as `--mmu shadow`, for the message). */
function ignoredFlags(opts: VariantOptions): string[] {
  const given: Array<[string, string | undefined]> = [
    ['--mmu', opts.mmu],
    ['--policy', opts.policy],
    ['--cost-model', opts.costModel],
    ['--vcpus', opts.vcpus],
    ['--memory', opts.memory],
    ['--host-pages', opts.hostPages],
  ];
  return given.filter(([, v]) => v !== undefined).map(([flag, v]) => `${flag} ${v}`);
}

/**
 * Without `--backend vmx|svm` (or `--config`), the vectors run natively on the walker: a variant flag such as
 * `--mmu shadow` would be ignored, so it is an error (exit 2), and with `--backend none` it is meaningless.
 */
function checkVariantFlags(opts: VariantOptions): void {
  if (opts.memory !== undefined && opts.backend !== undefined && opts.backend !== 'none') {
    // conformance-vm.ts builds each vector's guest memory from the pages the vector uses: a RAM size has no effect
    throw new InputError(
      `--memory ${opts.memory}: conformance builds each vector's guest memory from the pages the vector uses (one memslot per page); a RAM size would be ignored`,
    );
  }
  const ignored = ignoredFlags(opts);
  if (ignored.length === 0) return;
  if (opts.backend === 'none') {
    throw new InputError(`${ignored.join(', ')}: meaningless with --backend none: the vectors run natively on the architectural walker`);
  }
  if (opts.backend === undefined && opts.config === undefined) {
    const it = ignored.length === 1 ? 'it' : 'they';
    throw new InputError(
      `${ignored.join(', ')}: needs --backend vmx|svm (or --config FILE); without a backend the vectors run natively and ${it} would be ignored`,
    );
  }
}

/** A vector result whose run the machine stopped (a fault loop, a triple fault): why, in `stopped`. */
type StoppedResult = VectorResult & { readonly stopped: string };

function stoppedOf(r: VectorResult): string | null {
  return 'stopped' in r && typeof r.stopped === 'string' ? r.stopped : null;
}

/** The errors with which a layer stops a guest (program.ts has the same list for whole runs). */
const VECTOR_STOPPING = new Set(['MachineError', 'ExitError', 'ShadowMmuError', 'TdpMmuError', 'BackendError']);

/**
 * Runs every vector as guest accesses on a VM of `variant`. A vector whose access the machine stops (a fault
 * loop: the same #PF 64 times in a row under the hypervisor, where the native CPU completes or faults once;
 * a triple fault; an unresolved exit) is that vector's failure, named with the error, and the others still
 * run: one broken class of accesses must not hide the rest.
 */
export async function runVectorsOnVariant(vectors: readonly ConformanceVector[], variant: Variant, sources?: ModuleSources): Promise<ConformanceReport> {
  const results: VectorResult[] = [];
  for (const [i, vector] of vectors.entries()) {
    // One VM per vector: let the event loop turn now and then, so that V8 frees the VMs (see turnOfEventLoop).
    if (i % 64 === 63) await turnOfEventLoop();
    const machine = await createVmVectorMachine(vector, variant, sources);
    try {
      results.push(runVector(vector, () => machine));
    } catch (e) {
      if (!(e instanceof Error) || !VECTOR_STOPPING.has(e.name)) throw e;
      const code = (e as { code?: unknown }).code;
      const stopped = `${e.name}${typeof code === 'string' ? ` ${code}` : ''}: ${e.message}`;
      const r: StoppedResult = {
        id: vector.id,
        file: vector.file,
        line: vector.line,
        passed: false,
        mismatches: [{ field: 'run', expected: 'the access completes or faults, as natively', observed: `stopped by ${stopped}` }],
        // Nothing was observed: the access never ended. The JSON report gives `stopped` instead.
        observation: { pre: null, main: { result: 'ok', errorCode: null, pa: null }, memoryAfter: [] },
        stopped,
      };
      results.push(r);
    }
  }
  const failed = results.filter((r) => !r.passed).length;
  return { results, passed: results.length - failed, failed };
}

/** The largest vector file read (the bundled files are a few hundred KB). */
const MAX_VECTOR_FILE_BYTES = 64 << 20;

/** A vector file is size-checked before it is read: a regular file of at most 64 MiB (not /dev/zero, not a FIFO). */
function checkVectorFile(file: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return; // loadVectorFile says why it cannot read it
  }
  if (!st.isFile())
    throw new InputError(`${file}: not a regular file (${st.isDirectory() ? 'a directory' : 'a device, FIFO or socket'}); a vector file is a file`);
  if (st.size > MAX_VECTOR_FILE_BYTES) throw new InputError(`${file}: ${st.size} bytes, over the ${MAX_VECTOR_FILE_BYTES} bytes a vector file may have`);
}
