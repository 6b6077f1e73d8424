import { CR4_PAE, CR4_PGE, DirtyLog, EFER_LME, EFER_NXE } from '@vmexit/core';
import { VmxBackend } from '@vmexit/backend-vmx';
import { describe, expect, it } from 'vitest';
import { handGuest, PDPT, PML4, PT0 } from './hand-guest.js';
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

  it('a guest paging structure is logged only when the processor walks it: a global TLB entry kept across a CR3 load skips the other PML4', async () => {
    // Two guest PML4s share the PDPT (as each process's top table and the kernel's share the kernel half): 0x1000
    // and 0x7000. Linear page 0 is global (PTE.G, CR4.PGE); page 0x1000 is not. With EPT A/D on, the processor
    // sets a guest paging structure's EPT dirty flag, and with PML logs its gpa, when its walk accesses that
    // structure (SDM Vol. 3C §29.3.5, §29.3.6); a translation the TLB completes walks nothing. A MOV to CR3 keeps
    // global translations (Vol. 3A §4.10.4.1; the combined mappings of VMX likewise, Vol. 3C §29.4.3.1), so after
    // the switch to 0x7000 the load from page 0 hits the TLB and 0x7000 is not logged: its D flag stays clear
    // until a walk goes through it. That is why the guest kernel's own PML4 (gfn 1) is not logged in `vmexit
    // migrate --dirty-log pml` (514 pages where write protection gives 515): the exiting task's switch to the
    // kernel's tables keeps the global direct-map translations, where under write protection the EPT violations
    // on direct-map stores had dropped them (an EPT violation drops the combined mappings of its linear address,
    // here every piece of the guest's huge direct-map page), so that the kernel's reads walked its PML4 again.
    const g = await handGuest('vmx');
    const mem = g.vm.machine.memory;
    const PML4_B = 0x7000;
    mem.write32(PML4_B, PDPT | 3);
    g.v.movToCr4(CR4_PAE | CR4_PGE);
    mem.write32(PT0, dataGfn(0) * 4096 + 0x103); // va 0: P | W | G
    g.map(0x1000, dataGfn(1) * 4096);
    g.v.movToCr3(PML4_B);
    expect(g.tryWrite(0x1000, 1)).toBe(true); // the EPT leaf of 0x7000 (first touch) and of the data pages
    g.v.movToCr3(PML4);
    expect(g.tryWrite(0, 1)).toBe(true);
    g.mmu.enableCpuDirtyLog(new VmxBackend());
    const log = new DirtyLog(mem);
    g.mmu.attachDirtyLog(log);
    log.enable(0); // the EPT dirty flags cleared, and every vCPU's TLB flushed
    const violations = g.c()['exits.EPT_VIOLATION'];
    expect(violations).toBe(7); // the first touches: the 5 table pages and the 2 data pages
    // Under 0x1000: the walk logs PML4 0x1000, the PDPT, the PD and PT 0x4000 (a load: the data page is not).
    expect(g.tryRead(0)).toBe(1);
    expect(g.mmu.pmlLogs[0]!.index).toBe(511 - 4);
    // Under 0x7000: the global translation completes the load, no walk, nothing logged.
    g.v.movToCr3(PML4_B);
    expect(g.tryRead(0)).toBe(1);
    expect(g.mmu.pmlLogs[0]!.index).toBe(511 - 4);
    expect(DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0))).toEqual([1, 2, 3, 4]);
    // The harvest cleared the dirty flags it returned and flushed (kvm_flush_remote_tlbs after
    // kvm_arch_mmu_enable_log_dirty_pt_masked): the load walks 0x7000 now, which is logged with the shared tables.
    expect(g.tryRead(0)).toBe(1);
    expect(g.mmu.pmlLogs[0]!.index).toBe(511 - 4);
    expect(DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0))).toEqual([2, 3, 4, 7]);
    expect(g.c()['exits.EPT_VIOLATION']).toBe(violations); // PML: no exit since
    g.mmu.audit();
  });

  it('every VM exit empties the log (vmx_handle_exit -> vmx_flush_pml_buffer), not only EPT violations and PML-full exits', async () => {
    const { g, log, d } = await pmlGuest(600);
    // 300 stores below 2 MiB log 304 entries (PML4, PDPT, PD, PT 0x4000 and 300 data pages). Then WRMSR EFER
    // exits (MSR_WRITE: KVM keeps EFER intercepted); KVM empties the PML log at that exit as at any other, so
    // the 300 stores after it (301 entries with PT 0x6000) fit in the log again: no PML-full exit. Without the
    // flush at the MSR exit the 605 entries would overflow the 512 once.
    for (let i = 0; i < 300; i++) expect(g.tryWrite(i * 4096, 2)).toBe(true);
    g.v.writeEfer(EFER_LME | EFER_NXE);
    expect(d('exits.MSR_WRITE')).toBe(1);
    expect(g.mmu.pmlLogs[0]!.index).toBe(511);
    for (let i = 300; i < 600; i++) expect(g.tryWrite(i * 4096, 2)).toBe(true);
    expect([d('exits.PML_FULL'), d('exits.EPT_VIOLATION'), g.mmu.pmlLogs[0]!.index]).toEqual([0, 0, 511 - 301]);
    const want = [...TABLE_GFNS, ...Array.from({ length: 600 }, (_, i) => dataGfn(i))].sort((a, b) => a - b);
    expect(DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0))).toEqual(want);
  });

  it('PML is on only while a slot logs (vmx_update_cpu_dirty_logging): once the log is off, stores log nothing and never fill the log', async () => {
    const { g, log, d } = await pmlGuest(600);
    // Enabling the log cleared the D flags of the 600 data pages and the guest's tables. KVM_MEM_LOG_DIRTY_PAGES
    // cleared again: nr_memslots_dirty_logging is 0, so KVM clears SECONDARY_EXEC_ENABLE_PML before the vCPU
    // re-enters. The 600 stores set the D flags again (605 of them, with the tables) but log none: no PML-full exit,
    // which 605 logged entries would have caused once (SDM Vol. 3C §29.3.6).
    log.disable(0);
    for (let i = 0; i < 600; i++) expect(g.tryWrite(i * 4096, 2)).toBe(true);
    expect([d('exits.PML_FULL'), d('exits.EPT_VIOLATION'), g.mmu.pmlLogs[0]!.index]).toEqual([0, 0, 511]);
    g.mmu.audit();
  });

  it('KVM_DIRTY_LOG_INITIALLY_SET with 2 MiB host pages: the first clear splits the huge leaf, so each page written is logged', async () => {
    const g = await handGuest('vmx', { hostPages: '2m' });
    g.map(0x1000, 0x400000); // gfns 0x400 and 0x401: one 2 MiB leaf
    g.map(0x2000, 0x401000);
    g.tryWrite(0x1000, 1);
    g.tryWrite(0x2000, 1);
    g.mmu.enableCpuDirtyLog(new VmxBackend());
    const log = new DirtyLog(g.vm.machine.memory);
    g.mmu.attachDirtyLog(log);
    log.enable(0, { manualProtect: true, initiallySet: true });
    // KVM_CLEAR_DIRTY_LOG of gfns 0x400 and 0x401: KVM splits the 2 MiB leaf over them first
    // (kvm_arch_mmu_enable_log_dirty_pt_masked, initially-set), then clears the D flags of the two 4 KiB leaves
    // (clear_dirty_pt_masked skips huge leaves). Clearing the one D flag of the 2 MiB leaf instead would let the
    // processor log only the first store into it (§29.3.6 logs a D flag that goes from 0 to 1), losing 0x401.
    log.clearDirtyLog(0, 0x400, 64, new Uint32Array([3, 0]));
    expect(g.mmu.leaves[2]).toBe(1);
    const before = g.c()['exits.EPT_VIOLATION'] ?? 0;
    expect(g.tryWrite(0x1000, 2)).toBe(true);
    expect(g.tryWrite(0x2000, 2)).toBe(true);
    expect(g.c()['exits.EPT_VIOLATION'] ?? 0).toBe(before); // PML: no store exits
    expect(g.mmu.pmlLogs[0]!.index).toBe(511 - 2); // the two data pages (the guest's tables' 2 MiB leaf kept its D flag)
    const bitmap = log.getDirtyLog(0);
    expect((bitmap[0x400 >>> 5]! >>> (0x400 & 31)) & 3).toBe(3);
    g.mmu.audit();
  });

  it('KVM_CLEAR_DIRTY_LOG kicks the vCPUs first (kvm_arch_sync_dirty_log): a page still in the PML log is cleared and logged again', async () => {
    const g = await handGuest('vmx');
    g.map(0, dataGfn(0) * 4096);
    g.tryWrite(0, 1);
    g.mmu.enableCpuDirtyLog(new VmxBackend());
    const log = new DirtyLog(g.vm.machine.memory);
    g.mmu.attachDirtyLog(log);
    log.enable(0, { manualProtect: true }); // D flags cleared (kvm_mmu_slot_leaf_clear_dirty)
    // The store logs 5 entries (PML4, PDPT, PD, PT 0x4000, the data page) and exits not: they are in the PML log,
    // not in the bitmap. User space clears the data page (as after an earlier KVM_GET_DIRTY_LOG that named it):
    // kvm_clear_dirty_log_protect syncs first, so the page's bit is taken and its D flag cleared. The next
    // KVM_GET_DIRTY_LOG names the 4 table pages only; a store to the data page logs it again.
    expect(g.tryWrite(0, 2)).toBe(true);
    expect(g.mmu.pmlLogs[0]!.index).toBe(511 - 5);
    log.clearDirtyLog(0, 0x400, 64, new Uint32Array([1, 0]));
    expect(DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0))).toEqual([1, 2, 3, 4]);
    expect(g.tryWrite(0, 3)).toBe(true);
    expect(g.mmu.pmlLogs[0]!.index).toBe(511 - 1);
    expect(DirtyLog.gfns(log.slotOf(0), log.getDirtyLog(0))).toEqual([1, 2, 3, 4, 0x400]);
    g.mmu.audit();
  });

  it('dirty rings with PML reserve the 512 entries one PML flush may push (kvm_dirty_ring_get_rsvd_entries): 504 entries fill a 1024-entry ring', async () => {
    const g = await handGuest('vmx');
    for (let i = 0; i < 500; i++) g.map(i * 4096, dataGfn(i) * 4096);
    for (let i = 0; i < 500; i++) g.tryWrite(i * 4096, 1);
    g.mmu.enableCpuDirtyLog(new VmxBackend());
    const log = new DirtyLog(g.vm.machine.memory);
    g.mmu.attachDirtyLog(log);
    // 1024 entries, 64 + 512 reserved (KVM_DIRTY_RING_RSVD_ENTRIES + PML_LOG_NR_ENTRIES): soft limit 448.
    log.enableRing(1, 1024);
    expect(log.rings![0]!.softLimit).toBe(448);
    let harvested = 0;
    log.onRingFull = () => {
      harvested += log.collectRings(() => {});
      log.resetDirtyRings();
    };
    log.enable(0);
    const before = { ...g.c() };
    const d = (key: string): number => (g.c()[key] ?? 0) - (before[key] ?? 0);
    // 500 stores below 2 MiB log 504 entries (PML4, PDPT, PD, PT 0x4000 and 500 data pages): no PML-full exit
    // (512 entries) and no EPT violation. WRMSR EFER exits; the exit empties the PML log into the vCPU's ring
    // (vmx_flush_pml_buffer): 504 pushes, past the soft limit of 448 (with only 64 reserved it would be 960), so
    // the vCPU leaves KVM_RUN with KVM_EXIT_DIRTY_RING_FULL before it re-enters: 1 exit, the 504 entries harvested.
    for (let i = 0; i < 500; i++) expect(g.tryWrite(i * 4096, 2)).toBe(true);
    g.v.writeEfer(EFER_LME | EFER_NXE);
    expect([d('exits.PML_FULL'), d('exits.EPT_VIOLATION'), d('exits.MSR_WRITE'), d('dirty_ring_full_exits'), harvested]).toEqual([0, 0, 1, 1, 504]);
    g.mmu.audit();
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
