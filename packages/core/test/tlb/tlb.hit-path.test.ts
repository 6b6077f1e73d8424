import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CR0_PG, CR0_WP, CR4_PAE, CR4_PGE, EFER_LME, EFER_NXE } from '../../src/arch/constants.js';
import { Machine } from '../../src/machine/machine.js';
// Its own module, not the testing entry: that one loads core's whole public entry, whose larger heap collects less often.
import { GcWatch } from '../../src/testing/gc-watch.js';
import { TLB_NEED, Tlb } from '../../src/tlb/tlb.js';

/*
 * "The hit path allocates nothing and uses no BigInt" (core's DESIGN.md, "Speed"), pinned without
 * timing anything: a few million TLB hits must not make V8 collect garbage. A hit that allocated even one
 * 16-byte object (a boxed number, a result object) would fill the young generation (at most a few tens of
 * MiB) many times over in 5 M hits and cause dozens of scavenges; an allocation-free loop causes none. GCs
 * are counted with a PerformanceObserver on 'gc' entries; a control loop that does allocate shows the
 * detector sees them. A tolerance of one GC covers a collection that something before the loop (JIT
 * compilation, the test runner) made due. And the source of the hit path is checked for BigInt.
 */

const HITS = 5_000_000;
let gcs: GcWatch;
beforeAll(() => (gcs = new GcWatch()));
afterAll(() => gcs.stop());

/** Runs `loop` once to warm it up (optimized code), then again and returns the GCs the second run caused. */
async function gcsDuring(loop: (n: number) => number): Promise<number> {
  loop(200_000);
  gcs.collectNow();
  const from = performance.now();
  loop(HITS);
  return gcs.between(from, performance.now());
}

/** 256 filled entries: half at low addresses, half in the upper half (negative signed-canonical vas, doubles). */
function filledTlb(): { tlb: Tlb; vas: Float64Array } {
  const tlb = new Tlb(4096);
  const vas = new Float64Array(256);
  for (let i = 0; i < 256; i++) {
    vas[i] = (i % 2 === 0 ? 0x40_0000 : -0x7780_0000_0000) + i * 4096;
    tlb.fill(vas[i]!, 0, 0x10_0000 + i * 4096, 0x7e /* every permission */, 4096);
  }
  return { tlb, vas };
}

describe('Tlb', () => {
  describe('.lookup (the hit path)', () => {
    it('allocates nothing: 5 M hits of every access kind, low and upper-half addresses, cause no GC', async () => {
      const { tlb, vas } = filledTlb();
      const hits = (n: number): number => {
        let sum = 0;
        for (let i = 0; i < n; i++) sum = (sum + tlb.lookup(vas[i & 255]! + (i & 0xfff), i & 0x16, 0)) | 0;
        return sum;
      };
      const misses = tlb.misses;
      expect(await gcsDuring(hits)).toBeLessThanOrEqual(1);
      expect([tlb.hits, tlb.misses - misses]).toEqual([200_000 + HITS, 0]); // every lookup was a hit
    });

    it('(the detector) sees the GCs of a loop that allocates one small object per lookup', async () => {
      const { tlb, vas } = filledTlb();
      const kept: Array<{ off: number }> = [];
      const allocating = (n: number): number => {
        let sum = 0;
        for (let i = 0; i < n; i++) {
          const box = { off: tlb.lookup(vas[i & 255]! + (i & 0xfff), 0, 0) };
          if ((i & 0xfffff) === 0) kept.push(box); // escapes, so V8 cannot optimize the allocation away
          sum = (sum + box.off) | 0;
        }
        return sum;
      };
      expect(await gcsDuring(allocating)).toBeGreaterThan(10);
      expect(kept.length).toBeGreaterThan(0);
    });

    it('uses no BigInt, creates no object and no closure, and reads only typed arrays', () => {
      const noComments = (code: string) => code.replace(/\/\/.*$/gm, '').replace(/\/\*[\s\S]*?\*\//g, '');
      const body = noComments(Tlb.prototype.lookup.toString()); // the function as it runs
      expect(body).toMatch(/^lookup\(va, access, pcid\)/);
      expect(body).not.toMatch(/BigInt|\b\d+n\b|0x[0-9a-f]+n\b/i);
      expect(body).not.toMatch(/\bnew\b|=>|\bfunction\b|`/);
      // The same in the TypeScript source, comments stripped (what a reader sees).
      const src = readFileSync(new URL('../../src/tlb/tlb.ts', import.meta.url), 'utf8');
      const start = src.indexOf('  lookup(va: number, access: number, pcid: number): number {');
      const end = src.indexOf('\n  }\n', start);
      expect([start, end].every((i) => i > 0)).toBe(true);
      const code = noComments(src.slice(start, end));
      expect(code).not.toMatch(/BigInt|\b\d+n\b|\bnew\b|=>/);
      const { tlb } = filledTlb();
      for (const a of [TLB_NEED, tlb.tag, tlb.data, tlb.pcid]) expect(ArrayBuffer.isView(a)).toBe(true);
    });
  });
});

describe('Vcpu', () => {
  describe('.read/.write on TLB hits', () => {
    it('allocate nothing: 5 M 8-byte loads and 4-byte stores that hit the TLB cause no GC and no walk', async () => {
      // 4-level tables by hand: PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 (entry 2: va 0x400000) -> PT 0x4000,
      // 16 user pages at 0x200000, with A and D already set so that writes hit too (SDM Vol. 3A §4.8).
      const m = new Machine({ memoryBytes: 4 * 1024 * 1024 });
      const mem = m.memory;
      mem.write32(0x1000, 0x2007);
      mem.write32(0x2000, 0x3007);
      mem.write32(0x3000 + 2 * 8, 0x4007);
      for (let i = 0; i < 16; i++) mem.write32(0x4000 + i * 8, (0x20_0000 + i * 4096) | 0x67);
      const v = m.vcpus[0]!;
      v.writeEfer(EFER_LME | EFER_NXE);
      v.movToCr4(CR4_PAE | CR4_PGE);
      v.movToCr3(0x1000);
      v.movToCr0(CR0_PG | CR0_WP | 1);
      const accesses = (n: number): number => {
        let sum = 0;
        for (let i = 0; i < n; i++) {
          const va = 0x40_0000 + (i & 15) * 4096 + ((i >> 4) & 0x1ff) * 8;
          if ((i & 1) !== 0) v.write(va, 4, i);
          else sum = (sum + v.read(va, 8) + v.valueHi) | 0;
        }
        return sum;
      };
      accesses(16); // fill the 16 entries
      const walks = v.walks;
      expect(await gcsDuring(accesses)).toBeLessThanOrEqual(1);
      expect(v.walks).toBe(walks);
    });
  });
});
