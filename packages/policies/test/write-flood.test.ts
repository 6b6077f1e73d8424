import { MODE_LONG4 } from '@vmexit/core';
import type { ShadowMmu } from '@vmexit/mmu-shadow';
import { describe, expect, it } from 'vitest';
import { writeFlood } from '../src/index.js';
import { decide, flood, parse, pick } from './helpers.js';
import { bootGuest, counterDelta } from './vm.js';

describe('writeFlood', () => {
  describe('.optionsSchema', () => {
    it('defaults to 3 per page, and rejects a threshold of 0 and unknown keys', () => {
      expect(parse(writeFlood, {})).toEqual({ threshold: 3, count: 'per-page' });
      expect(() => parse(writeFlood, { threshold: 0 })).toThrow(/threshold/);
      expect(() => parse(writeFlood, { count: 'per-cpu' })).toThrow(/count/);
      expect(writeFlood.optionsSchema!.safeParse({ treshold: 3 }).success).toBe(false);
    });
  });
  describe('.mmuEvents', () => {
    it('per page: floods an upper-level page at its 3rd write, never a level-1 page', async () => {
      const o = parse(writeFlood, {});
      expect(await decide(writeFlood, flood(2, 2, 9), o)).toBeNull();
      expect(await decide(writeFlood, flood(2, 3, 0), o)).toBe(true);
      expect(await decide(writeFlood, flood(1, 50, 50), o)).toBeNull();
    });
    it('per vCPU: counts consecutive writes of the vCPU at every level, with the threshold given', async () => {
      const o = parse(writeFlood, { count: 'per-vcpu', threshold: 5 });
      expect(await decide(writeFlood, flood(1, 1, 4), o)).toBeNull();
      expect(await decide(writeFlood, flood(1, 1, 5), o)).toBe(true);
    });
  });

  describe('on a VM (createVm, the guest kernel)', () => {
    // A long4 guest process has touched one page, so its page directory D is shadowed by a level-2 shadow
    // page and write-protected. The kernel then stores 0 into an empty entry of D through the direct map, 7
    // times in a row; no fault walks through D in between, so its write_flooding_count only grows.
    async function storesToPd(options: Record<string, unknown>): Promise<{ perStore: Record<string, number>[]; pages: number[] }> {
      const g = await bootGuest(
        { backend: 'vmx', mmu: 'shadow', memory: 4 * 1024 * 1024, guest: { mode: 'long4', personality: 'linux' }, policies: [{ use: 'write-flood', options }] },
        MODE_LONG4,
        1,
      );
      const { v, kernel, proc, base } = g;
      const mmu = g.vm.mmu as ShadowMmu;
      for (const h of g.vm.hooks) h.afterExit = () => mmu.audit();
      const pd = kernel.tableFor(v, proc, base, 2, false);
      const delta = counterDelta(g.vm);
      const perStore: Record<string, number>[] = [];
      const pages: number[] = [];
      for (let i = 0; i < 7; i++) {
        v.write(kernel.directMap(pd) + 300 * 8, 8, 0, 0);
        perStore.push(pick(delta(), ['exits', 'insn_emulation', 'mmu_flooded', 'mmu_shadow_zapped', 'pf_fixed']));
        pages.push(mmu.indirectPagesOf(pd / 4096).length);
      }
      return { perStore, pages };
    }
    const emulated = { exits: 1, insn_emulation: 1, mmu_flooded: 0, mmu_shadow_zapped: 0, pf_fixed: 0 };
    const flooded = { exits: 1, insn_emulation: 1, mmu_flooded: 1, mmu_shadow_zapped: 1, pf_fixed: 0 };
    const mappedWritable = { exits: 1, insn_emulation: 0, mmu_flooded: 0, mmu_shadow_zapped: 0, pf_fixed: 1 };
    const none = { exits: 0, insn_emulation: 0, mmu_flooded: 0, mmu_shadow_zapped: 0, pf_fixed: 0 };

    it('threshold 5: four stores are emulated, the 5th zaps D, the 6th maps it writable, the 7th does not exit', async () => {
      // Stores 1-4: an exit each (#PF P=1|W on write-protected D), emulated. Store 5: exit, emulated, and the
      // flood count reaches 5: D's shadow page is zapped (mmu_flooded) and D is no longer write-protected.
      // Store 6: the direct-map spte is still read-only -> exit -> mapped writable (pf_fixed), no emulation.
      // Store 7: no exit.
      const r = await storesToPd({ threshold: 5 });
      expect(r.perStore).toEqual([emulated, emulated, emulated, emulated, flooded, mappedWritable, none]);
      expect(r.pages).toEqual([1, 1, 1, 1, 0, 0, 0]);
    });
    it('the default threshold (3) zaps D at the 3rd store', async () => {
      const r = await storesToPd({});
      expect(r.perStore).toEqual([emulated, emulated, flooded, mappedWritable, none, none, none]);
    });
    it('per vCPU with threshold 2 zaps D at the 2nd store', async () => {
      const r = await storesToPd({ count: 'per-vcpu', threshold: 2 });
      expect(r.perStore).toEqual([emulated, flooded, mappedWritable, none, none, none, none]);
    });
  });
});
