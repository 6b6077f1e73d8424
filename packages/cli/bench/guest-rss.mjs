#!/usr/bin/env node
/**
 * One run in a process of its own, for main.bench.mjs: `node bench/guest-rss.mjs SPEC WORKLOAD MEMORY_BYTES`
 * runs WORKLOAD on the variant SPEC (lab's runVariant, as `vmexit run` does) with MEMORY_BYTES of guest RAM,
 * and prints one JSON line: the process's peak resident set (process.resourceUsage().maxRSS, KiB, what
 * /usr/bin/time reports as %M), the run's own wall time and the memory digest.
 *
 * Linux keeps ru_maxrss across fork and execve (the forked copy of the parent's address space counts), so
 * the parent must spawn this while it is small: main.bench.mjs runs it first. VmHWM (/proc/self/status,
 * this address space's own peak) is printed too, as a check.
 */
import { readFileSync } from 'node:fs';
import process from 'node:process';
import { tuneV8 } from '@vmexit/core';
import { runVariant } from '@vmexit/lab';

// The V8 flags the CLI runs with (core's tuneV8): the figures are the CLI's.
tuneV8();

const [spec, workload, memory] = process.argv.slice(2);
if (spec === undefined || workload === undefined || !/^\d+$/.test(memory ?? '')) {
  process.stderr.write('usage: node bench/guest-rss.mjs SPEC WORKLOAD MEMORY_BYTES\n');
  process.exit(2);
}
const r = await runVariant(spec, workload, { overrides: { memory }, mode: 'long4', seed: 1 });
const hwm = /VmHWM:\s*(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
const doc = {
  maxRssKiB: process.resourceUsage().maxRSS,
  vmHwmKiB: hwm === null ? null : Number(hwm[1]),
  runSeconds: r.wallSeconds,
  memoryDigest: r.memoryDigest,
};
process.stdout.write(`${JSON.stringify(doc)}\n`);
