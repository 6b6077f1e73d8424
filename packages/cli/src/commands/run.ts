import * as fs from 'node:fs';
import type { Command } from 'commander';
import { PAGING_MODE_NAMES, type PagingModeName } from '@vmexit/core';
import {
  GuestConfigError,
  PERSONALITIES,
  TraceError,
  WorkloadError,
  runWorkload,
  type GuestEventLog,
  type Personality,
  type RunResult,
} from '@vmexit/guest';
import { InputError } from '../errors.js';

/** What runs below the guest; `none` is native (the hypervisor backends add theirs). */
export const RUN_BACKENDS = ['none'] as const;

interface RunFlags {
  workload: string;
  mode: string;
  backend: string;
  vcpus: string;
  memory: string;
  seed: string;
  personality?: string[];
  json?: boolean;
  trace?: string;
}

/**
 * `vmexit run --workload NAME[:k=v,...]|kbuild|FILE.vxt [--mode M] [--backend none] [--vcpus N]
 * [--memory SIZE] [--seed N] [--personality P...] [--json] [--trace FILE]`: boots the guest OS model and
 * runs the workload; prints a summary table (or one RunResult document with --json). A progress bar goes to
 * stderr when it is a terminal and the run takes over a second. Bad input is exit 2 with a message that
 * names it.
 */
export function registerRun(program: Command): void {
  program
    .command('run')
    .description('boot the guest OS model on a machine and run a workload; print its counters')
    .requiredOption('--workload <spec>', 'NAME[:k=v,...] (demand-fault, fork-cow, exec-storm, mprotect-storm, pt-recycle, scan, random-ws, zipf), kbuild, or FILE.vxt')
    .option('--mode <mode>', `paging mode: ${PAGING_MODE_NAMES.join(', ')}`, 'long4')
    .option('--backend <name>', 'what runs below the guest: none (native)', 'none')
    .option('--vcpus <n>', 'number of vCPUs', '1')
    .option('--memory <size>', 'guest RAM, e.g. 256M or 1G', '256M')
    .option('--seed <n>', 'seed of every random choice (scheduler, workload)', '1')
    .option('--personality <names...>', `guest personalities: ${PERSONALITIES.join(', ')}`)
    .option('--json', 'print one RunResult document (schema vmexit.run/1)')
    .option('--trace <file>', 'write the guest-visible events (page faults) as JSON Lines')
    .action((flags: RunFlags) => {
      const opts = checkFlags(flags);
      const progress = new Progress();
      let outcome;
      try {
        outcome = runWorkload({ ...opts, variant: { backend: flags.backend }, onProgress: (n, total) => progress.update(n, total) });
      } catch (e) {
        if (e instanceof WorkloadError || e instanceof TraceError || e instanceof GuestConfigError) throw new InputError(e.message);
        throw e;
      } finally {
        progress.clear();
      }
      if (flags.trace !== undefined) writeEvents(flags.trace, outcome.events);
      process.stdout.write(flags.json === true ? `${JSON.stringify(outcome.result, null, 2)}\n` : summary(outcome.result));
    });
}

function checkFlags(f: RunFlags): { workload: string; mode: PagingModeName; vcpus: number; memory: number; seed: number; personalities: Personality[] } {
  if (!(RUN_BACKENDS as readonly string[]).includes(f.backend)) throw new InputError(`--backend: backend ${f.backend} is not available yet (available: ${RUN_BACKENDS.join(', ')})`);
  if (!(PAGING_MODE_NAMES as readonly string[]).includes(f.mode)) throw new InputError(`--mode: unknown paging mode '${f.mode}' (expected ${PAGING_MODE_NAMES.join(', ')})`);
  const vcpus = Number(f.vcpus);
  if (!/^\d+$/.test(f.vcpus) || vcpus < 1 || vcpus > 256) throw new InputError(`--vcpus: expected an integer from 1 to 256, got '${f.vcpus}'`);
  const seed = Number(f.seed);
  if (!/^\d+$/.test(f.seed) || seed > 0xffffffff) throw new InputError(`--seed: expected an integer from 0 to 4294967295, got '${f.seed}'`);
  const memory = parseSize(f.memory);
  const personalities = (f.personality ?? []).flatMap((p) => p.split(',')).filter((p) => p.length > 0);
  for (const p of personalities) {
    if (!(PERSONALITIES as readonly string[]).includes(p)) throw new InputError(`--personality: unknown personality '${p}' (expected ${PERSONALITIES.join(', ')})`);
  }
  return { workload: f.workload, mode: f.mode as PagingModeName, vcpus, memory, seed, personalities: personalities as Personality[] };
}

/** `256M`, `1G`, `65536K`, `1048576` (bytes); K/M/G are binary (KiB, MiB, GiB). */
export function parseSize(text: string): number {
  const m = /^(\d+)\s*([KMG])?(i?B)?$/i.exec(text.trim());
  if (m === null) throw new InputError(`--memory: '${text}' is not a size (examples: 256M, 1G)`);
  const unit = m[2] === undefined ? 1 : 1024 ** (' KMG'.indexOf(m[2].toUpperCase()));
  const bytes = Number(m[1]) * unit;
  if (bytes < 4096 || bytes % 4096 !== 0) throw new InputError(`--memory: ${text} is not a positive multiple of 4 KiB`);
  return bytes;
}

function writeEvents(file: string, events: GuestEventLog): void {
  const lines: string[] = [];
  for (const e of events) {
    lines.push(JSON.stringify({ type: 'page-fault', seq: e.seq, vcpu: e.vcpu, pid: e.pid, address: hex64(e.address), errorCode: e.errorCode, kind: e.kind }));
  }
  try {
    fs.writeFileSync(file, lines.length === 0 ? '' : `${lines.join('\n')}\n`);
  } catch (e) {
    throw new InputError(`--trace: cannot write ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

/** A signed-canonical linear address as its 64-bit hex form. */
function hex64(va: number): string {
  return `0x${BigInt.asUintN(64, BigInt(va)).toString(16)}`;
}

function num(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

function rate(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} k` : n.toFixed(0);
}

function summary(r: RunResult): string {
  const g = r.guest;
  const t = r.counters.total;
  const kinds = Object.entries(g.faults)
    .filter(([k, n]) => k !== 'total' && n > 0)
    .map(([k, n]) => `${k} ${num(n)}`)
    .join(', ');
  const rows: [string, string][] = [
    ['workload', `${r.workload.input} (${r.workload.kind})`],
    ['variant', `backend ${r.variant.backend}, mode ${r.variant.mode}, ${r.variant.vcpus} vCPU${r.variant.vcpus === 1 ? '' : 's'}, ${r.variant.memory / 2 ** 20} MiB, seed ${r.seed}` + (r.variant.personalities.length > 0 ? `, ${r.variant.personalities.join(' ')}` : '')],
    ['accesses', num(g.accesses)],
    ['processes', num(g.processes)],
    ['guest faults', `${num(g.faults.total)}${kinds.length > 0 ? ` (${kinds})` : ''}`],
    ['SIGSEGVs', num(g.sigsegv)],
    ['TLB misses', num(t.tlb_misses ?? 0)],
    ['TLB flushes', `${num(t.tlb_flush ?? 0)} full, ${num(t.invlpg ?? 0)} INVLPG, ${num(g.tlb.shootdowns)} shootdowns`],
    ['page tables', `${num(sum(g.pageTables.allocated))} allocated, ${num(sum(g.pageTables.freed))} freed, ${num(sum(g.pageTables.reusedAsData))} reused as data`],
    ['wall time', `${r.wallSeconds.toFixed(3)} s`],
    ['accesses/s', rate(r.accessesPerSecond)],
    ['memory digest', r.memoryDigest],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}\n`).join('');
}

function sum(o: Record<string, number>): number {
  return Object.values(o).reduce((a, b) => a + b, 0);
}

/** A progress bar on stderr, drawn only when stderr is a terminal and the run has taken over a second. */
class Progress {
  private readonly start = Date.now();
  private last = 0;
  private drawn = false;
  private readonly tty = process.stderr.isTTY === true;

  update(done: number, total: number | null): void {
    if (!this.tty) return;
    const now = Date.now();
    if (now - this.start < 1000 || now - this.last < 100) return;
    this.last = now;
    const width = 30;
    let line: string;
    if (total !== null && total > 0) {
      const f = Math.min(1, done / total);
      const n = Math.round(f * width);
      line = `[${'#'.repeat(n)}${' '.repeat(width - n)}] ${(f * 100).toFixed(0).padStart(3)}%  ${rate(done)} accesses`;
    } else {
      line = `${rate(done)} accesses`;
    }
    process.stderr.write(`\r${line}\x1b[K`);
    this.drawn = true;
  }

  clear(): void {
    if (this.drawn) process.stderr.write('\r\x1b[K');
  }
}
