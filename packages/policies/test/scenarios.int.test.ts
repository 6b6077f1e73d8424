import { PFERR_USER, PFERR_WRITE, VariantError, type VariantInput } from '@vmexit/core';
import { runWorkload } from '@vmexit/guest';
import type { ShadowMmu, ShadowPage } from '@vmexit/mmu-shadow';
import { describe, expect, it } from 'vitest';
import { exitsPerFault, guestGfn, mode, runOn } from './vm.js';

// Scenario tests against the real guest OS model (packages/guest runWorkload) on a VM built by createVm,
// with the monorepo's backends, the shadow MMU and the built-in policies (kvm-mmu.md §B).

const shadow = (backend: 'vmx' | 'svm', policies: string[], guestMode: 'long4' | 'pae' | 'legacy32' = 'long4'): VariantInput => ({
  backend,
  mmu: 'shadow',
  guest: { mode: guestMode, personality: 'linux' },
  policies: policies.map((use) => ({ use })),
});

describe('policies (scenarios)', () => {
  describe('demand-fault, steady state', () => {
    // `demand-fault` touches 600 new pages once each; every fault after the first of a 2 MiB region finds
    // the shadow level-1 page of its guest PT already there and write-protected (kvm-mmu.md §B, conventions).
    const wl = 'demand-fault:pages=600';
    it('VMX, no policy: 3 exits per fault', async () => {
      // Exit 1: the user store faults (spte not present, P=0) -> the guest walk fails too -> #PF injected.
      // Exit 2: the guest handler's 8-byte pte store hits the write-protected guest PT -> emulated; the write
      //         hook clears the spte (zap-spte, today's KVM).
      // Exit 3: the re-executed store faults again -> the guest walk succeeds -> leaf spte built.
      const h = exitsPerFault(await runOn(shadow('vmx', []), wl));
      expect(mode(h).value).toBe(3);
      expect(mode(h).share).toBeGreaterThan(0.95);
    });
    it('VMX, pte-update: 2 exits per fault', async () => {
      // Exit 1: reflect (as above). Exit 2: the emulated pte store installs the new spte (update-spte: a
      // full, present and accessed gpte in a level-1 page). The re-execution hits: no third exit.
      const h = exitsPerFault(await runOn(shadow('vmx', ['pte-update']), wl));
      expect(mode(h).value).toBe(2);
      expect(mode(h).share).toBeGreaterThan(0.95);
    });
    it('VMX, pte-update + bypass-guest-pf: 1 exit per fault', async () => {
      // The spte is notrap (the shadow PT was built while the gpte was not present): the user store's #PF has
      // P=0, which PFEC_MASK = PFEC_MATCH = 1 sends straight to the guest (0 exits).
      // Exit 1: the pte store, emulated, installs the spte. The re-execution hits.
      const h = exitsPerFault(await runOn(shadow('vmx', ['pte-update', 'bypass-guest-pf']), wl));
      expect(mode(h).value).toBe(1);
      expect(mode(h).share).toBeGreaterThan(0.95);
    });
    it('SVM, pte-update: 2 exits per fault (no error-code filtering, so every #PF exits)', async () => {
      const h = exitsPerFault(await runOn(shadow('svm', ['pte-update']), wl));
      expect(mode(h).value).toBe(2);
      expect(mode(h).share).toBeGreaterThan(0.95);
    });
    it('SVM, bypass-guest-pf: refused, the message names error-code filtering', async () => {
      // The CLI maps this VariantError to exit status 2.
      const p = runOn(shadow('svm', ['bypass-guest-pf']), wl);
      await expect(p).rejects.toThrow(VariantError);
      await expect(p).rejects.toThrow(/policies\.0\.use: policy 'bypass-guest-pf' needs PageFaultFilter \(error-code filtering of #PF exits.*backend 'svm' does not provide/);
    });
  });

  describe('pt-recycle', () => {
    /**
     * User-mode store exits per recycled page directory: the exits of each (user page, frame) episode whose
     * frame was last shadowed as a page directory (the level of the last shadow page looked up for it).
     */
    async function pdExits(policies: VariantInput['policies'], guestMode: 'long4' | 'pae'): Promise<number[]> {
      const episodes: { page: number; gfn: number; n: number; level: number }[] = [];
      const open = new Map<number, { page: number; gfn: number; n: number; level: number }>();
      const lastLevel = new Map<number, number>();
      let hooked = false;
      const run = await runOn({ backend: 'vmx', mmu: 'shadow', guest: { mode: guestMode, personality: 'linux' }, policies }, 'pt-recycle', {
        onExit(vm, e) {
          const mmu = vm.mmu as ShadowMmu;
          if (!hooked) {
            const get = mmu.getPage.bind(mmu);
            mmu.getPage = (gfn: number, role: number): ShadowPage => {
              const sp = get(gfn, role);
              if (!sp.direct) lastLevel.set(gfn, sp.level);
              return sp;
            };
            hooked = true;
          }
          if (e.kind !== 'exception' || (e.errorCode & (PFERR_USER | PFERR_WRITE)) !== (PFERR_USER | PFERR_WRITE)) return;
          const page = Math.floor(e.address / 4096);
          const gfn = guestGfn(vm, e.address);
          let ep = open.get(page);
          // A new episode when the page maps another frame than the one its episode started with.
          if (ep === undefined || (ep.gfn >= 0 && gfn !== ep.gfn)) {
            ep = { page, gfn, n: 0, level: 0 };
            open.set(page, ep);
            episodes.push(ep);
          }
          if (ep.gfn < 0 && gfn >= 0) {
            ep.gfn = gfn;
            ep.level = lastLevel.get(gfn) ?? 0;
          }
          ep.n++;
        },
      });
      expect(run.out.result.memoryDigest).toBe(runWorkload({ workload: 'pt-recycle', mode: guestMode, memory: 64 * 1024 * 1024 }).result.memoryDigest);
      return episodes.filter((ep) => ep.level === 2).map((ep) => ep.n);
    }

    it('without write-flood: 513 exits per recycled page directory (1 demand fault + 512 emulated stores)', async () => {
      // The recycled PD is still shadowed (an orphan level-2 page keeps its gfn write-protected), so the
      // memset's first store takes the demand fault (reflected) and each of its 512 8-byte stores exits and is
      // emulated (its write hook clears one spte of the orphan page).
      const counts = await pdExits([], 'long4');
      expect(counts.length).toBeGreaterThanOrEqual(16);
      expect(new Set(counts)).toEqual(new Set([513]));
    });
    it('with write-flood: at most 4 exits per recycled page directory', async () => {
      // The 3rd consecutive emulated write to a page directory zaps its shadow page (mmu_flooded) - here
      // already while the exiting children's kernel cleared its entries - so the memset takes at most the
      // demand fault, the emulated stores before the zap, and one write fault that maps the page writable.
      const perPage = await pdExits([{ use: 'write-flood', options: {} }], 'long4');
      const perVcpu = await pdExits([{ use: 'write-flood', options: { count: 'per-vcpu' } }], 'pae');
      expect(perPage.length).toBeGreaterThanOrEqual(8);
      expect(perVcpu.length).toBeGreaterThanOrEqual(8);
      expect(Math.max(...perPage, ...perVcpu)).toBeLessThanOrEqual(4);
    });
  });
});
