import { describe, expect, it } from 'vitest';
import { InputError, runVariant } from '../src/index.js';
import { forgetfulSources } from './helpers/forgetful-mmu.js';

// KVM's dirty_log_test as a run: two vCPUs write 64 random pages of 512 per iteration, 8 iterations; the host
// harvests after each iteration of vCPU 0's thread and once more when the last writer ends (9 harvests), and
// checks every mapped page of the area against the harvest.
const WL = (harvest: string) => `dirty-log-test:pages=512,iterations=8,writes=64,harvest=${harvest},ring=256`;
const O = { seed: 1, overrides: { memory: '16M', vcpus: '2' } };

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
        expect(r.dirtyLog!.ring).toEqual({ entries: 256, harvested: 1779, fullExits: 1 });
      }
    },
    60_000,
  );

  it('on the TDP MMU (EPT and NPT) and with PML: no page lost, the same checks and false-dirty count as on shadow paging', async () => {
    // The same 9 harvests and 2,863 checks, and the same 43 unchanged dirty pages: the dirty set is the guest's.
    // Write-protection costs 947 EPT violations / #NPFs in the measured window, each fixed by the fast path when it
    // is composed (pf_fast 947, no mmu_lock) or under the read lock (947 acquisitions); with PML the same harvests
    // cost no exit at all: no harvest window dirties 512 pages, so no vCPU's log fills (no PML_FULL exit).
    for (const [variant, harvest, exits, fast, locks] of [
      ['vmx tdp fast-page-fault', 'bitmap', 947, 947, 0],
      ['svm tdp fast-page-fault', 'clear', 947, 947, 0],
      ['svm tdp', 'ring', 947, 0, 947],
      ['vmx tdp', 'pml', 0, 0, 0],
    ] as const) {
      const r = await runVariant(variant, WL(harvest), O);
      expect(r.dirtyLog, variant).toMatchObject({ mode: harvest, harvests: 9, checked: 2863, lost: 0, falseDirty: 43 });
      const t = r.counters.total;
      const got = [t['exits.EPT_VIOLATION'] ?? t['exits.VMEXIT_NPF'] ?? 0, t['pf_fast'] ?? 0, t['mmu_lock.acquired'] ?? 0, t['exits.PML_FULL'] ?? 0];
      expect(got, `${variant} ${harvest}`).toEqual([exits, fast, locks, 0]);
      if (harvest === 'pml') expect(r.variant).toMatchObject({ policies: ['pml'] }); // composed for harvest=pml
    }
  }, 120_000);

  it('harvest=pml composes the pml policy, refused where there is no PML, naming the capability', async () => {
    await expect(runVariant('svm tdp', WL('pml'), O)).rejects.toThrow(/policy 'pml' needs PageModificationLogging .*SVM has no PML/);
    await expect(runVariant('vmx shadow', WL('pml'), O)).rejects.toThrow(/policy 'pml' needs CpuDirtyLogging .*mmu 'shadow' does not provide/);
  });

  it('harvest=ring with PML: a ring smaller than its 576 reserved entries is refused, as KVM_CAP_DIRTY_LOG_RING is (-EINVAL)', async () => {
    // KVM reserves KVM_DIRTY_RING_RSVD_ENTRIES (64) plus kvm_cpu_dirty_log_size() (PML's 512 entries) in each ring:
    // 256 entries is too small once PML is on (it was accepted with 64 reserved, and a PML flush could overflow it).
    await expect(runVariant('vmx tdp pml', WL('ring'), O)).rejects.toThrow(InputError);
    await expect(runVariant('vmx tdp pml', WL('ring'), O)).rejects.toThrow(/parameter ring=256: .*smaller than the 576 reserved entries/);
  });

  it('catches an MMU that does not re-protect after a harvest: lost pages, in every mode', async () => {
    for (const harvest of ['bitmap', 'clear', 'ring']) {
      const r = await runVariant('vmx shadow', WL(harvest), { ...O, sources: forgetfulSources });
      expect(r.dirtyLog!.lost, harvest).toBeGreaterThan(0);
    }
  }, 60_000);

  it('refuses harvest natively (no dirty log), naming the parameter', async () => {
    await expect(runVariant('native', WL('ring'), O)).rejects.toThrow(InputError);
    await expect(runVariant('native', WL('ring'), O)).rejects.toThrow(/harvest=ring needs a VM whose MMU logs dirty pages/);
    await expect(runVariant('vmx shadow', WL('sometimes'), O)).rejects.toThrow(/parameter harvest=sometimes is not one of none, bitmap, clear, ring, pml/);
  });
});
