import { DirtyLog } from '@vmexit/core';
import { VmxBackend } from '@vmexit/backend-vmx';
import { describe, expect, it } from 'vitest';
import { handGuest } from './hand-guest.js';
import { sources } from './vm.js';
import { createVm, VariantError } from '@vmexit/core';
import policies from '@vmexit/policies';

/** The guest's table pages (hand-guest.ts): PML4 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000 (va 0-2 MiB), PT 0x6000 (va 2-4 MiB). */
const TABLE_GFNS = [1, 2, 3, 4, 6];
/** Data page i: va i * 4 KiB -> gpa 4 MiB + i * 4 KiB. */
const dataGfn = (i: number): number => 0x400 + i;

/** `k` data pages written once (their EPT leaves exist, writable), then PML on and the log enabled on slot 0. */
async function pmlGuest(k: number) {
  const g = await handGuest('vmx');
  for (let i = 0; i < k; i++) g.map(i * 4096, dataGfn(i) * 4096);
  for (let i = 0; i < k; i++) g.tryWrite(i * 4096, 1);
  g.mmu.enableCpuDirtyLog(new VmxBackend());
  const log = new DirtyLog(g.vm.machine.memory);
  g.mmu.attachDirtyLog(log);
  log.enable(0);
  const before = { ...g.c() };
  const d = (key: string): number => (g.c()[key] ?? 0) - (before[key] ?? 0);
  const reset = (): void => void Object.assign(before, g.c());
  return { g, log, d, reset };
}

describe('PML (page-modification logging) under the TDP MMU on VMX', () => {
  // Enabling the log under PML clears the EPT dirty flags of every 4 KiB leaf (KVM kvm_mmu_slot_leaf_clear_dirty)
  // and flushes; nothing is write-protected, so no store exits with an EPT violation. Then the guest writes each
  // of its k data pages once. The first store's walk reads the PML4, PDPT, PD and PT pages, and with EPT A/D on
  // every guest paging-structure access is a write to EPT (SDM Vol. 3C §29.3.5): their EPT dirty flags are set
  // again, and each is logged (§29.3.6); so is the data page. PT 0x6000 is logged at the first store above
  // 2 MiB. Later stores' walks find the tables' dirty flags set: one entry each. So k stores log k + 5
  // entries. The log holds 512: the 513th entry finds the PML index out of range, a PML-full exit (reason 62),
  // after which the MMU empties the log into the dirty log (vmx_flush_pml_buffer) and the store is repeated and
  // logged; the 1025th entry is the second exit. k = 1019 logs 1024 entries: 1 exit; k = 1020 logs 1025: 2.
  for (const [k, exits] of [
    [1019, 1],
    [1020, 2],
  ] as const) {
    it(`${k} pages written: ${exits} PML-full exit(s), no EPT violation, every page in the next KVM_GET_DIRTY_LOG`, async () => {
      const { g, log, d, reset } = await pmlGuest(k);
      for (let i = 0; i < k; i++) expect(g.tryWrite(i * 4096, 2)).toBe(true);
      expect([d('exits.PML_FULL'), d('exits.EPT_VIOLATION'), d('pf_fixed')]).toEqual([exits, 0, 0]);
      // The harvest kicks the vCPU first (kvm_arch_sync_dirty_log: its log is emptied), then clears the dirty
      // flags of the pages it returns (kvm_tdp_mmu_clear_dirty_pt_masked) and flushes.
      const want = [...TABLE_GFNS, ...Array.from({ length: k }, (_, i) => dataGfn(i))].sort((a, b) => a - b);
      expect(DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0))).toEqual(want);
      // The next round logs the same k + 5 pages again, with as many PML-full exits.
      reset();
      for (let i = 0; i < k; i++) expect(g.tryWrite(i * 4096, 3)).toBe(true);
      expect(d('exits.PML_FULL')).toBe(exits);
      expect(DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0))).toEqual(want);
      g.mmu.audit();
    });
  }

  it('a store to a page whose dirty flag is set logs nothing: the TLB entry of a logged write is dirty', async () => {
    const { g, log, d } = await pmlGuest(4);
    expect(g.tryWrite(0, 2)).toBe(true);
    expect(g.tryWrite(8, 3)).toBe(true);
    expect(g.mmu.pmlLogs[0]!.index).toBe(511 - 5); // PML4, PDPT, PD, PT 0x4000 and the data page
    expect(d('exits.PML_FULL')).toBe(0);
    expect(DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0))).toEqual([1, 2, 3, 4, 0x400]);
  });

  it('composition: the pml policy needs VMX (SVM has no PML) and the TDP MMU (the shadow MMU has no CPU dirty log), each refusal naming the capability', async () => {
    const src = { ...sources(), policies: [policies] };
    await expect(createVm({ backend: 'svm', mmu: 'tdp', policies: [{ use: 'pml' }] }, { sources: src })).rejects.toThrow(
      /policy 'pml' needs PageModificationLogging \(.*SVM has no PML\)\), which backend 'svm' does not provide/,
    );
    await expect(createVm({ backend: 'vmx', mmu: 'shadow', policies: [{ use: 'pml' }] }, { sources: src })).rejects.toThrow(VariantError);
    await expect(createVm({ backend: 'vmx', mmu: 'shadow', policies: [{ use: 'pml' }] }, { sources: src })).rejects.toThrow(
      /policy 'pml' needs CpuDirtyLogging .* which mmu 'shadow' does not provide/,
    );
    const vm = await createVm({ backend: 'vmx', mmu: 'tdp', policies: [{ use: 'pml' }] }, { sources: src });
    expect((vm.mmu as unknown as { cpuDirtyLog: boolean }).cpuDirtyLog).toBe(true);
  });
});
