import { runWorkload, type GuestEventLog } from '@vmexit/guest';
import type { PagingModeName } from '@vmexit/core';
import { describe, expect, it } from 'vitest';
import { runOn } from './vm.js';

// Every policy combination still passes --check --audit on every bundled workload and mode. One
// test file per paging mode (so that vitest spreads the modes over the cores). Each run is shadow paging with
// the MMU audited after every exit (incremental, as `--audit` does) and at the end, and must show the guest
// exactly what a native run shows it (`--check`): the same #PFs in the same order (address, error code, vCPU,
// process), the same SIGSEGVs, the same final memory.
//
// What runs here, per mode (the literal product does not fit in CI: all 192 variants on all 8 small workloads,
// scripts/every-combination.mjs --small, cost 82 CPU-seconds for long4 alone, ~330 for four modes):
// - one of the page-table-heavy workloads (HEAVY: page tables freed and reused as data, recycled page
//   directories, COW write protection, mprotect rewriting ptes; a different one in each mode) under EVERY
//   subset of the seven policies on VMX (128) and every subset without bypass-guest-pf on SVM (64: SVM
//   refuses it, see scenarios.int.test.ts);
// - the other workloads under a strength-3 covering array of those 192 variants (coveringArray(): every value
//   of every 3 of the 8 factors - the backend and each policy on or off - that a valid variant can have).
// VMEXIT_FULL_MATRIX=1 restores every subset on every heavy workload in every mode.
// scripts/every-combination.mjs runs the whole product: every workload at its default size and the bundled
// kbuild trace, every mode, all 192 variants (see the package README).

export const POLICIES = ['pte-update', 'bypass-guest-pf', 'unsync', 'write-flood', 'misaligned-write', 'prefetch', 'user-write-hint'] as const;

export interface Combination {
  readonly backend: 'vmx' | 'svm';
  readonly policies: readonly string[];
}

/** Every subset of POLICIES on VMX, and every subset without bypass-guest-pf on SVM: 192 variants. */
export function everyCombination(): Combination[] {
  const out: Combination[] = [];
  for (const backend of ['vmx', 'svm'] as const) {
    for (let m = 0; m < 1 << POLICIES.length; m++) {
      const policies = POLICIES.filter((_, i) => (m & (1 << i)) !== 0);
      if (backend === 'svm' && policies.includes('bypass-guest-pf')) continue;
      out.push({ backend, policies });
    }
  }
  return out;
}

/** A variant as 8 binary factors: [svm?, then each of POLICIES on?]. */
export function factors(c: Combination): number[] {
  return [c.backend === 'svm' ? 1 : 0, ...POLICIES.map((p) => (c.policies.includes(p) ? 1 : 0))];
}

/** Every (3 factors, 3 values) that some valid variant has, as "i=a,j=b,k=c" keys. */
export function validTriples(): Set<string> {
  const out = new Set<string>();
  for (const c of everyCombination()) for (const t of triplesOf(factors(c))) out.add(t);
  return out;
}

function triplesOf(f: readonly number[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < f.length; i++)
    for (let j = i + 1; j < f.length; j++) for (let k = j + 1; k < f.length; k++) out.push(`${i}=${f[i]},${j}=${f[j]},${k}=${f[k]}`);
  return out;
}

/**
 * A strength-3 covering array of the 192 valid variants: chosen greedily (each next variant the first one, in
 * everyCombination() order, that covers the most 3-way interactions not yet covered), so it is the same on
 * every run. Every valid interaction of any 3 factors appears in at least one chosen variant.
 */
export function coveringArray(): Combination[] {
  const all = everyCombination().map((c) => ({ c, t: triplesOf(factors(c)) }));
  const uncovered = validTriples();
  const out: Combination[] = [];
  while (uncovered.size > 0) {
    let best = all[0]!;
    let bestN = -1;
    for (const x of all) {
      let n = 0;
      for (const t of x.t) if (uncovered.has(t)) n++;
      if (n > bestN) [best, bestN] = [x, n];
    }
    out.push(best.c);
    for (const t of best.t) uncovered.delete(t);
  }
  return out;
}

/**
 * Small, each still doing its page-table work (4 MiB of guest RAM: the kernel's direct map, built with an
 * exit per pte at boot, is most of a run). Keep in step with SMALL_WORKLOADS in scripts/every-combination.mjs.
 */
export const HEAVY = ['exec-storm:execs=1,text=4,data=2', 'pt-recycle:dirs=1', 'fork-cow:pages=24,forks=2', 'mprotect-storm:pages=24,rounds=4,writes=6'];
export const LIGHT = ['demand-fault:pages=96', 'scan:pages=64,passes=2', 'random-ws:pages=64,accesses=400', 'zipf:pages=64,accesses=400'];
/** Which HEAVY workload runs under every subset in each mode (the others run the covering array). */
const EXHAUSTIVE_IN: Record<PagingModeName, number> = { long4: 0, long5: 1, pae: 2, legacy32: 3 };
const MEMORY = 4 * 1024 * 1024;
const SEED = 5;
/** Per test: the slowest (exec-storm, 128 VMX variants) takes ~10 CPU-seconds; a loaded CI machine, more. */
const TIMEOUT = 180_000;

const observed = (events: GuestEventLog): string => JSON.stringify(events);

/** Runs `combos` on `wl`, each audited after every exit and compared with one native run. */
async function checkAll(mode: PagingModeName, wl: string, combos: readonly Combination[], vcpus = 1, memory = MEMORY): Promise<void> {
  const native = runWorkload({ workload: wl, mode, memory, seed: SEED, vcpus });
  const want = observed(native.events);
  for (const c of combos) {
    const what = `${mode} ${wl} ${c.backend} [${c.policies.join(',') || 'no policy'}]`;
    const run = await runOn(
      { backend: c.backend, mmu: 'shadow', vcpus, guest: { mode, personality: 'linux' }, policies: c.policies.map((use) => ({ use })) },
      wl,
      { auditEvery: 1, memory, seed: SEED, record: false },
    );
    expect(run.out.result.memoryDigest, what).toBe(native.result.memoryDigest);
    expect(run.out.result.guest.sigsegv, what).toBe(native.result.guest.sigsegv);
    expect(observed(run.out.events), what).toBe(want);
    expect(run.exitCount, what).toBeGreaterThan(0);
  }
}

export function describeEveryCombination(mode: PagingModeName): void {
  describe(`every policy combination in ${mode} (--check --audit)`, () => {
    const combos = everyCombination();
    const covering = coveringArray();
    it('has 128 VMX and 64 SVM variants, and a covering array that covers every valid 3-way interaction', () => {
      expect(combos.filter((c) => c.backend === 'vmx')).toHaveLength(128);
      expect(combos.filter((c) => c.backend === 'svm')).toHaveLength(64);
      const covered = new Set(covering.flatMap((c) => triplesOf(factors(c))));
      expect([...validTriples()].filter((t) => !covered.has(t))).toEqual([]);
      // Only svm with bypass-guest-pf is invalid: 56 factor triples x 8 values, less the 6 x 2 with both set.
      expect(validTriples().size).toBe(56 * 8 - 6 * 2);
      expect(covering.length).toBeLessThan(20);
    });
    // Every subset on ONE heavy workload per mode (a different one in each mode, so the four modes together
    // cover all four), the covering array on the other three. VMEXIT_FULL_MATRIX=1 runs every subset on every
    // heavy workload (and scripts/every-combination.mjs --small runs all 192 on every workload).
    const exhaustive = process.env.VMEXIT_FULL_MATRIX === '1' ? HEAVY : [HEAVY[EXHAUSTIVE_IN[mode]]!];
    for (const wl of HEAVY) {
      for (const backend of ['vmx', 'svm'] as const) {
        const every = exhaustive.includes(wl);
        const mine = (every ? combos : covering).filter((c) => c.backend === backend);
        it(
          every
            ? `${wl} on ${backend}: all ${mine.length} policy subsets audit clean after every exit and match the native run`
            : `${wl} on ${backend}: the ${mine.length} subsets of a strength-3 covering array audit clean and match the native run`,
          () => checkAll(mode, wl, mine),
          TIMEOUT,
        );
      }
    }
    for (const wl of LIGHT) {
      for (const backend of ['vmx', 'svm'] as const) {
        const mine = covering.filter((c) => c.backend === backend);
        it(
          `${wl} on ${backend}: the ${mine.length} subsets of a strength-3 covering array audit clean and match the native run`,
          () => checkAll(mode, wl, mine),
          TIMEOUT,
        );
      }
    }
    if (mode === 'long4' || mode === 'pae') {
      // Two vCPUs interleaved by the seeded scheduler (remote TLB flushes, one vCPU's writes to a table the
      // other walks): every policy together on each backend.
      const together = [
        combos.find((c) => c.backend === 'vmx' && c.policies.length === 7)!,
        combos.find((c) => c.backend === 'svm' && c.policies.length === 6)!,
      ];
      for (const wl of ['random-ws:pages=64,accesses=400', 'fork-cow:pages=24,forks=2', 'pt-recycle:dirs=1']) {
        it(
          `${wl} with 2 vCPUs: every policy together audits clean and matches the native run`,
          () => checkAll(mode, wl, together, 2, 8 * 1024 * 1024),
          TIMEOUT,
        );
      }
    }
  });
}
