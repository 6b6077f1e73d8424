import { MODE_PAE, PFERR_USER, PFERR_WRITE, VariantError, type VariantInput } from '@vmexit/core';
import { runWorkload } from '@vmexit/guest';
import type { ShadowMmu, ShadowPage } from '@vmexit/mmu-shadow';
import { describe, expect, it } from 'vitest';
import { bootGuest, counterDelta, exitsPerFault, guestGfn, mode, runOn } from './vm.js';

// Scenario tests against the real guest OS model (packages/guest runWorkload) on a VM built by createVm,
// with the monorepo's backends, the shadow MMU and the built-in policies (each policy's file names its KVM commit).

const shadow = (backend: 'vmx' | 'svm', policies: string[], guestMode: 'long4' | 'pae' | 'legacy32' = 'long4'): VariantInput => ({
  backend,
  mmu: 'shadow',
  guest: { mode: guestMode, personality: 'linux' },
  policies: policies.map((use) => ({ use })),
});

describe('policies (scenarios)', () => {
  describe('demand-fault, steady state', () => {
    // `demand-fault` touches 600 new pages once each; every fault after the first of a 2 MiB region finds
    // the shadow level-1 page of its guest PT already there and write-protected (KVM mmu.c account_shadowed -> kvm_slot_page_track_add_page).
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
      // SVM's #PF intercept is all or nothing (APM Vol. 2 §15.12), so the not-present fault exits as on VMX
      // without bypass-guest-pf:
      // Exit 1: the user store faults (spte not present) -> VMEXIT_EXCP_PF -> the guest walk fails too ->
      //         #PF injected (EVENTINJ) -> the guest handler runs.
      // Exit 2: the handler's 8-byte pte store hits the write-protected guest PT -> VMEXIT_EXCP_PF (P=1|W) ->
      //         emulated; pte-update installs the new spte (full, present, accessed gpte, level-1 page).
      // The re-executed store hits the new spte: no third exit. bypass-guest-pf, which would remove exit 1,
      // is refused on SVM (next test).
      const h = exitsPerFault(await runOn(shadow('svm', ['pte-update']), wl));
      expect(mode(h).value).toBe(2);
      expect(mode(h).share).toBeGreaterThan(0.95);
    });
    it('SVM, bypass-guest-pf: refused, the message names error-code filtering', async () => {
      // The CLI maps this VariantError to exit status 2.
      const p = runOn(shadow('svm', ['bypass-guest-pf']), wl);
      await expect(p).rejects.toThrow(VariantError);
      await expect(p).rejects.toThrow(
        /policies\.0\.use: policy 'bypass-guest-pf' needs PageFaultFilter \(error-code filtering of #PF exits.*backend 'svm' does not provide/,
      );
    });
  });

  describe('misaligned-write (PAE)', () => {
    // A real PAE guest (packages/guest Kernel on the VM's machine): a process with two pages of anonymous
    // memory, both touched from user mode, so that their page table (gfn T) is shadowed by one level-1
    // shadow page and write-protected. The kernel then stores into T through its direct map, as a kernel
    // writing a pte does, at offset 4: the high half of gpte 0 (KVM's detect_write_misaligned,
    // arch/x86/kvm/mmu/mmu.c). Both stores write the values already there, so the guest's view does not change.
    async function straddle(policies: VariantInput['policies']) {
      const g = await bootGuest(
        { backend: 'vmx', mmu: 'shadow', memory: 4 * 1024 * 1024, guest: { mode: 'pae', personality: 'linux' }, policies },
        MODE_PAE,
        2,
      );
      const { v, kernel, proc, base } = g;
      const mmu = g.vm.mmu as ShadowMmu;
      const pte0 = kernel.inspectPte(proc, base)!;
      const pte1 = kernel.inspectPte(proc, base + 4096)!;
      const t = pte0.table / 4096;
      const at = kernel.directMap(pte0.table) + 4;
      const delta = counterDelta(g.vm);
      const touch = (): void => {
        v.setCpl(3);
        v.read(base, 4);
        v.read(base + 4096, 4);
        v.setCpl(0);
      };
      expect(mmu.indirectPagesOf(t)).toHaveLength(1);
      v.write(at, 4, pte0.hi);
      const fourByte = { ...delta(), pages: mmu.indirectPagesOf(t).length };
      touch();
      const afterFour = delta();
      v.write(at, 8, pte0.hi, pte1.lo);
      const eightByte = { ...delta(), pages: mmu.indirectPagesOf(t).length };
      touch();
      const afterEight = delta();
      mmu.audit();
      return { fourByte, afterFour, eightByte, afterEight };
    }
    const pick = (d: Record<string, number>, ...names: string[]): Record<string, number> => Object.fromEntries(names.map((n) => [n, d[n] ?? 0]));
    const NAMES = ['exits', 'exits.EXCEPTION_NMI', 'insn_emulation', 'mmu_pte_write', 'mmu_flooded', 'mmu_shadow_zapped', 'mmu_cache_miss', 'pf_fixed'];

    it('a misaligned 8-byte store at offset 4 of a PAE page table zaps it; a 4-byte store there does not', async () => {
      const r = await straddle([{ use: 'misaligned-write' }]);
      // The 4-byte store at offset 4 (the high half of gpte 0): exit 1, EXCEPTION_NMI (#PF, P=1|W: T is
      // write-protected) -> the MMU emulates the store (insn_emulation, mmu_pte_write). Widened to the whole
      // 8-byte gpte 0 it is not misaligned, so misaligned-write passes and the MMU's default clears gpte 0's
      // spte (no pte-update). T keeps its shadow page.
      expect({ ...pick(r.fourByte, ...NAMES), pages: r.fourByte.pages }).toEqual({
        exits: 1,
        'exits.EXCEPTION_NMI': 1,
        insn_emulation: 1,
        mmu_pte_write: 1,
        mmu_flooded: 0,
        mmu_shadow_zapped: 0,
        mmu_cache_miss: 0,
        pf_fixed: 0,
        pages: 1,
      });
      // Touching both pages again: page 0's spte is gone -> exit 1 (#PF, P=0) -> the guest pte is present,
      // the spte is rebuilt in the same shadow page (pf_fixed, no cache miss). Page 1's spte was never cleared: no exit.
      expect(pick(r.afterFour, ...NAMES)).toEqual({
        exits: 1,
        'exits.EXCEPTION_NMI': 1,
        insn_emulation: 0,
        mmu_pte_write: 0,
        mmu_flooded: 0,
        mmu_shadow_zapped: 0,
        mmu_cache_miss: 0,
        pf_fixed: 1,
      });
      // The 8-byte store at offset 4: the high half of gpte 0 and the low half of gpte 1, misaligned. Exit 1,
      // EXCEPTION_NMI -> emulated (mmu_pte_write) -> misaligned-write answers zap-page: T's shadow page is
      // zapped (mmu_shadow_zapped, counted as KVM counts it under mmu_flooded), its parent pde in the PD's
      // shadow page cleared, and T no longer write-protected (no shadow page left).
      expect({ ...pick(r.eightByte, ...NAMES), pages: r.eightByte.pages }).toEqual({
        exits: 1,
        'exits.EXCEPTION_NMI': 1,
        insn_emulation: 1,
        mmu_pte_write: 1,
        mmu_flooded: 1,
        mmu_shadow_zapped: 1,
        mmu_cache_miss: 0,
        pf_fixed: 0,
        pages: 0,
      });
      // Touching both pages re-faults: page 0 -> exit 1, the walk needs a shadow page for T again (mmu_cache_miss:
      // a new one, T write-protected again) and maps page 0; page 1 -> exit 2, mapped in that new page.
      expect(pick(r.afterEight, ...NAMES)).toEqual({
        exits: 2,
        'exits.EXCEPTION_NMI': 2,
        insn_emulation: 0,
        mmu_pte_write: 0,
        mmu_flooded: 0,
        mmu_shadow_zapped: 0,
        mmu_cache_miss: 1,
        pf_fixed: 2,
      });
    });
    it('without the policy the same 8-byte store only clears the two sptes it touched', async () => {
      const r = await straddle([]);
      // Exit 1: the emulated store; the MMU clears gpte 0's and gpte 1's sptes; T keeps its shadow page.
      expect({ ...pick(r.eightByte, ...NAMES), pages: r.eightByte.pages }).toEqual({
        exits: 1,
        'exits.EXCEPTION_NMI': 1,
        insn_emulation: 1,
        mmu_pte_write: 1,
        mmu_flooded: 0,
        mmu_shadow_zapped: 0,
        mmu_cache_miss: 0,
        pf_fixed: 0,
        pages: 1,
      });
      // Exits 1 and 2: both pages re-fault and are mapped again in the same shadow page (no cache miss).
      expect(pick(r.afterEight, ...NAMES)).toEqual({
        exits: 2,
        'exits.EXCEPTION_NMI': 2,
        insn_emulation: 0,
        mmu_pte_write: 0,
        mmu_flooded: 0,
        mmu_shadow_zapped: 0,
        mmu_cache_miss: 0,
        pf_fixed: 2,
      });
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
