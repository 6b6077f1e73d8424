import { DEFAULT_MODULE_SOURCES, type Memslot } from '@vmexit/core';
import { ShadowMmu } from '@vmexit/mmu-shadow';
import { ContainerModule } from 'inversify';
import { describe, expect, it } from 'vitest';
import { InputError, runVariant } from '../src/index.js';

// KVM's dirty_log_test as a run: two vCPUs write 64 random pages of 512 per iteration, 8 iterations; the host
// harvests after each iteration of vCPU 0's thread and once more when the last writer ends (9 harvests), and
// checks every mapped page of the area against the harvest.
const WL = (harvest: string) => `dirty-log-test:pages=512,iterations=8,writes=64,harvest=${harvest},ring=256`;
const O = { seed: 1, overrides: { memory: '16M', vcpus: '2' } };

/** A shadow MMU whose re-protection does nothing: pages written after a harvest go unlogged. */
class ForgetfulShadowMmu extends ShadowMmu {
  override writeProtectMasked(_slot: Memslot, _offset: number, _mask: number): boolean {
    return false;
  }
}
const forgetful = new ContainerModule(({ bind }) => {
  const S = Symbol('forgetful');
  bind(S)
    .toDynamicValue(() => new ForgetfulShadowMmu())
    .inSingletonScope();
  bind(Symbol.for('vmexit.Mmu')).toService(S);
  bind(Symbol.for('vmexit.DirtyLogMmu')).toService(S);
  bind(Symbol.for('vmexit.FastPageFault')).toService(S);
});

describe('dirty-log-test with harvest', () => {
  it.each(['bitmap', 'clear', 'ring'])(
    '%s: no page lost, the same checks and false-dirty count in every mode',
    async (harvest) => {
      const r = await runVariant('vmx shadow fast-page-fault', WL(harvest), O);
      // 9 harvests over the pages mapped at each (2,863 checks). 43 pages were reported dirty with their first 8
      // bytes unchanged: both vCPUs' threads run iteration by iteration, so a page written with iteration N before
      // a harvest and with N again after it is dirty and unchanged; the modes agree, since the dirty set does.
      expect(r.dirtyLog).toMatchObject({ mode: harvest, harvests: 9, checked: 2863, lost: 0, falseDirty: 43 });
      if (harvest === 'ring') {
        // Rings of 256 (soft limit 192): the entries harvested exceed the pages (every mark is a push, the guest
        // kernel's zeroing and page-table A/D updates included); one vCPU filled its ring once before a harvest.
        expect(r.dirtyLog!.ring).toEqual({ entries: 256, harvested: 1778, fullExits: 1 });
      }
    },
    60_000,
  );

  it('catches an MMU that does not re-protect after a harvest: lost pages, in every mode', async () => {
    for (const harvest of ['bitmap', 'clear', 'ring']) {
      const r = await runVariant('vmx shadow', WL(harvest), { ...O, sources: { ...DEFAULT_MODULE_SOURCES, mmus: { shadow: forgetful } } });
      expect(r.dirtyLog!.lost, harvest).toBeGreaterThan(0);
    }
  }, 60_000);

  it('refuses harvest natively (no dirty log), naming the parameter', async () => {
    await expect(runVariant('native', WL('ring'), O)).rejects.toThrow(InputError);
    await expect(runVariant('native', WL('ring'), O)).rejects.toThrow(/harvest=ring needs a VM whose MMU logs dirty pages/);
    await expect(runVariant('vmx shadow', WL('sometimes'), O)).rejects.toThrow(/parameter harvest=sometimes is not one of none, bitmap, clear, ring/);
  });
});
