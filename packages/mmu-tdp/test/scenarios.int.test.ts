import { describe, expect, it } from 'vitest';
import { auditTdpMmu } from '../src/index.js';
import { handGuest, PD } from './hand-guest.js';

// Scenarios on the hand-built guest (test/hand-guest.ts), each exit named. Boot exits, on every scenario:
// VMX: CR_ACCESS for CR4 (PAE is host-owned in the CR4 guest/host mask), MSR_WRITE for EFER, CR_ACCESS for
// CR0 (PG); the CR3 load does not exit under EPT. SVM: VMEXIT_CR4_WRITE, VMEXIT_MSR, VMEXIT_CR0_WRITE.
const BOOT = 3;
const DATA = 0x5000; // gpa of a data page
const MMIO = 0x8000_0000; // a gpa no memslot holds (RAM is 16 MiB from 0)
const pick = (c: Record<string, number>, ...names: string[]): Record<string, number> => Object.fromEntries(names.map((n) => [n, c[n] ?? 0]));

for (const backend of ['vmx', 'svm'] as const) {
  const VIOLATION = backend === 'vmx' ? 'exits.EPT_VIOLATION' : 'exits.VMEXIT_NPF';
  const MISCONFIG = backend === 'vmx' ? 'exits.EPT_MISCONFIG' : 'exits.VMEXIT_NPF';

  describe(`TDP scenarios on ${backend}`, () => {
    it('the first access maps each guest-physical page it uses once: 4 guest tables + the data page', async () => {
      const g = await handGuest(backend);
      g.map(0x1000, DATA);
      expect(g.tryRead(0x1000)).toBe(0);
      // Exits 4-8: the 2D walk of VA 0x1000 is refused at the PML4 (gpa 0x1000), then, each time the
      // access is re-executed, at the next guest table (PDPT 0x2000, PD 0x3000, PT 0x4000), then at the
      // final address (DATA): 5 violations, each mapping one 4 KiB leaf.
      expect(pick(g.c(), 'exits', VIOLATION, 'pf_taken', 'pf_fixed', 'pages_4k', 'tdp_mmu_pages')).toEqual({
        exits: BOOT + 5,
        [VIOLATION]: 5,
        pf_taken: 5,
        pf_fixed: 5,
        pages_4k: 5,
        tdp_mmu_pages: 4, // root (PML4) + PDPT + PD + PT of the TDP tables
      });
      // Another page behind the same guest tables: only its own data page faults.
      g.map(0x2000, DATA + 0x1000);
      g.tryRead(0x2000);
      expect(g.c()[VIOLATION]).toBe(6);
      // The guest's own #PF (VA 0x3000 is not mapped in its tables) does not exit: its handler runs directly.
      expect(g.tryRead(0x3000)).toBeNull();
      expect(g.guestFaults).toBe(1);
      expect(pick(g.c(), 'exits', 'pf_guest')).toEqual({ exits: BOOT + 6, pf_guest: 0 });
      auditTdpMmu(g.mmu, { full: true });
    });

    it('MMIO: the first access caches an MMIO spte, the next exits as a misconfiguration / RSVD fault, a memslot change makes it stale', async () => {
      const g = await handGuest(backend);
      g.map(0x1000, MMIO);
      // Exits 4-7: PML4, PDPT, PD, PT are mapped as above (4 violations); exit 8: the final gpa has no
      // memslot: the MMU installs an MMIO spte (pf_mmio_spte_created) and the access is emulated as MMIO
      // (an exit to user space: the load reads all ones).
      expect(g.tryRead(0x1000)).toBe(0xffffffff);
      expect(pick(g.c(), 'exits', VIOLATION, 'pf_mmio_spte_created', 'mmio_exits', 'insn_emulation')).toEqual({
        exits: BOOT + 5,
        [VIOLATION]: 5,
        pf_mmio_spte_created: 1,
        mmio_exits: 1,
        insn_emulation: 1,
      });
      // Exit 9: the MMIO spte (EPT: W|X without R; NPT: P and reserved bit 51) faults as a misconfiguration
      // (VMX exit 49) / an #NPF with RSVD; the MMU finds its MMIO spte of the current generation and the
      // access goes to emulation without a page fault (no pf_taken).
      const taken = g.c().pf_taken;
      expect(g.tryRead(0x1000)).toBe(0xffffffff);
      expect(g.c()[MISCONFIG]).toBe(backend === 'vmx' ? 1 : 6); // on SVM both kinds are VMEXIT_NPF: 5 + this one
      expect(pick(g.c(), 'exits', 'pf_taken', 'mmio_exits')).toEqual({ exits: BOOT + 6, pf_taken: taken, mmio_exits: 2 });
      // A memslot change: the generation moves on; exit 10 finds a stale MMIO spte, takes the fault again
      // and makes a new MMIO spte.
      g.mmu.memslotChanged(0x100, 1);
      expect(g.tryRead(0x1000)).toBe(0xffffffff);
      expect(pick(g.c(), 'exits', 'pf_taken', 'pf_mmio_spte_created', 'mmio_exits')).toEqual({
        exits: BOOT + 7,
        pf_taken: taken + 1,
        pf_mmio_spte_created: 2,
        mmio_exits: 3,
      });
      auditTdpMmu(g.mmu, { full: true });
    });

    it('a memslot change zaps the leaves of its range and flushes: the next access faults again', async () => {
      const g = await handGuest(backend);
      g.map(0x1000, DATA);
      g.tryRead(0x1000);
      expect(g.c()[VIOLATION]).toBe(5);
      g.mmu.memslotChanged(DATA / 4096, 1);
      // One leaf zapped, one remote flush (every vCPU's combined mappings), no page table freed.
      expect(pick(g.c(), 'pages_4k', 'remote_tlb_flush', 'tlb_flush', 'mmu_shadow_zapped')).toEqual({
        pages_4k: 4,
        remote_tlb_flush: 1,
        tlb_flush: 1,
        mmu_shadow_zapped: 0,
      });
      // The TLB was flushed, so the access walks again; only the data page faults (exit 9).
      g.tryRead(0x1000);
      expect(pick(g.c(), 'exits', VIOLATION, 'pages_4k')).toEqual({ exits: BOOT + 6, [VIOLATION]: 6, pages_4k: 5 });
      auditTdpMmu(g.mmu, { full: true });
    });

    it('--host-pages 2m: one 2 MiB leaf maps the guest tables and the data; splitting it changes no translation', async () => {
      const g = await handGuest(backend, { hostPages: '2m' });
      g.map(0x1000, DATA);
      g.map(0x200000, 0x1ff000);
      // Exit 4 only: the walk is refused at the PML4 (gfn 1), whose 2 MiB range [0, 2 MiB) lies in the memslot:
      // one 2 MiB leaf, which also maps the PDPT, PD, PT and the data page.
      g.tryRead(0x1000);
      expect(pick(g.c(), 'exits', VIOLATION, 'pages_4k', 'pages_2m', 'tdp_mmu_pages')).toEqual({
        exits: BOOT + 1,
        [VIOLATION]: 1,
        pages_4k: 0,
        pages_2m: 1,
        tdp_mmu_pages: 3, // root + PDPT + PD: no PT
      });
      // Eager split (KVM kvm_tdp_mmu_try_split_huge_pages): 512 4 KiB leaves, one more page, no flush.
      g.mmu.splitHugePages(0, 512);
      expect(pick(g.c(), 'pages_4k', 'pages_2m', 'tdp_mmu_pages', 'split_huge_pages', 'remote_tlb_flush')).toEqual({
        pages_4k: 512,
        pages_2m: 0,
        tdp_mmu_pages: 4,
        split_huge_pages: 1,
        remote_tlb_flush: 0,
      });
      // Every gfn of the range is mapped by the split leaves: accesses there (through PT1 at 0x6000, and
      // the page at 0x1ff000) make no exit, after a TLB flush too.
      g.v.tlb.flushAll(false);
      g.tryRead(0x1000);
      g.tryRead(0x200000);
      expect(g.c().exits).toBe(BOOT + 1);
      auditTdpMmu(g.mmu, { full: true });
    });

    it('a guest page table in read-only RAM: each access through it exits and is emulated, its A/D flags stay as they are', async () => {
      const ROM = 16 * 1024 * 1024 - 0x10000;
      const g = await handGuest(backend, {
        memslots: [
          { base: 0, size: ROM },
          { base: ROM, size: 0x10000, readonly: true },
        ],
      });
      const mem = g.vm.machine.memory;
      mem.write32(PD + 16, (ROM | 3) >>> 0); // VA 4-6 MiB: its page table is the ROM's first page
      mem.write32(ROM, (DATA | 3) >>> 0); // VA 4 MiB -> DATA, P|W, A = D = 0
      // Exits 4-6: the 2D walk is refused at the PML4, PDPT and PD (each a write to the second stage: guest
      // paging-structure accesses are writes with EPT A/D, SDM Vol. 3C §29.3.3.2, and user writes to NPT, as
      // KVM's nested walker makes them: core's npt.ts), each mapped. Exit 7: at the page table in read-only RAM, a write the second stage never
      // allows: KVM emulates the instruction (RET_PF_EMULATE), whose own walk leaves the ROM's flags alone
      // (FNAME(update_accessed_dirty_bits): a gpte whose memslot is not writable) and whose store is to RAM:
      // no exit to user space. Every later access through that page table takes the same exit (exits 8, 9).
      expect(g.tryWrite(0x400000, 0x77)).toBe(true);
      expect(g.tryRead(0x400000)).toBe(0x77);
      expect(g.tryRead(0x400000)).toBe(0x77);
      expect(mem.read32(DATA)).toBe(0x77);
      expect(mem.read32(ROM)).toBe((DATA | 3) >>> 0);
      expect(pick(g.c(), 'exits', VIOLATION, 'pf_fixed', 'pf_emulate', 'insn_emulation', 'mmio_exits')).toEqual({
        exits: BOOT + 6,
        [VIOLATION]: 6,
        pf_fixed: 3,
        pf_emulate: 3,
        insn_emulation: 3,
        mmio_exits: 0,
      });
      auditTdpMmu(g.mmu, { full: true });
    });

    it('read-only RAM: a load maps the page without write access; a store is emulated as MMIO and dropped', async () => {
      const g = await handGuest(backend, {
        memslots: [
          { base: 0, size: 16 * 1024 * 1024 - 4096 },
          { base: 16 * 1024 * 1024 - 4096, size: 4096, readonly: true },
        ],
      });
      const rom = 16 * 1024 * 1024 - 4096;
      g.vm.machine.memory.write32(rom, 0x1234);
      g.map(0x1000, rom);
      expect(g.tryRead(0x1000)).toBe(0x1234); // exits 4-8 as in the first test
      expect(g.tryWrite(0x1000, 0x5678)).toBe(true); // exit 9: a write violation on the read-only leaf
      expect(g.tryRead(0x1000)).toBe(0x1234);
      expect(pick(g.c(), 'exits', VIOLATION, 'pf_emulate', 'mmio_exits')).toEqual({ exits: BOOT + 6, [VIOLATION]: 6, pf_emulate: 1, mmio_exits: 1 });
      auditTdpMmu(g.mmu, { full: true });
    });
  });
}

describe('a guest told a smaller MAXPHYADDR than the host has (KVM allow_smaller_maxphyaddr)', () => {
  it('VMX: a leaf with bit 40 set, legal to the host (46) but reserved to the guest (36), is a reserved-bit #PF to the guest', async () => {
    const g = await handGuest('vmx', { maxPhyAddr: 36, hostMaxPhyAddr: 46 });
    g.map(0x1000, 2 ** 40 + 0x5000);
    // Exits 4-7: the guest tables (4 violations, 4 pf_taken). Exit 8: the final gpa 2^40 + 0x5000 is refused
    // by EPT (nothing maps it); it is not a legal gpa for the guest, so KVM's handle_ept_violation emulates the
    // access at once (!kvm_vcpu_is_legal_gpa -> kvm_emulate_instruction), without kvm_mmu_page_fault: no
    // pf_taken, no pf_emulate (both are counted there), no mmu_lock. The emulator's walk of the guest's tables,
    // under MAXPHYADDR 36, raises #PF with P|RSVD (a supervisor read: 0x9) to the guest. No MMIO spte is made.
    expect(g.tryRead(0x1000)).toBeNull();
    expect(g.lastErrorCode).toBe(0x9);
    expect(pick(g.c(), 'exits', 'exits.EPT_VIOLATION', 'pf_taken', 'pf_emulate', 'pf_mmio_spte_created', 'insn_emulation', 'pf_guest')).toEqual({
      exits: BOOT + 5,
      'exits.EPT_VIOLATION': 5,
      pf_taken: 4,
      pf_emulate: 0,
      pf_mmio_spte_created: 0,
      insn_emulation: 1,
      pf_guest: 1,
    });
  });

  it('VMX: a write to a read-only page whose pte has bit 40 set exits as an intercepted #PF, and the guest gets P|W|RSVD', async () => {
    const g = await handGuest('vmx', { maxPhyAddr: 36, hostMaxPhyAddr: 46 });
    g.map(0x1000, 2 ** 40 + 0x5000, false);
    // Exits 4-7: the guest tables (4 violations, 4 pf_taken). The processor, walking with MAXPHYADDR 46, finds
    // the leaf legal and read-only: a protection #PF (P|W, 0x3) before the final gpa is translated. KVM
    // intercepts present, non-reserved #PFs on VMX when the guest's MAXPHYADDR is the smaller
    // (vmx_need_pf_intercept; PFEC_MASK = P|RSVD, PFEC_MATCH = P), so exit 8 is EXCEPTION_NMI, which does not
    // reach the MMU (no pf_taken): kvm_fixup_and_inject_pf_error walks the guest's tables under MAXPHYADDR 36,
    // meets the reserved bit 40, and injects that walk's error code, P|W|RSVD (0xb).
    expect(g.tryWrite(0x1000, 1)).toBe(false);
    expect(g.lastErrorCode).toBe(0xb);
    expect(pick(g.c(), 'exits', 'exits.EPT_VIOLATION', 'exits.EXCEPTION_NMI', 'pf_taken', 'pf_emulate', 'pf_guest')).toEqual({
      exits: BOOT + 5,
      'exits.EPT_VIOLATION': 4,
      'exits.EXCEPTION_NMI': 1,
      pf_taken: 4,
      pf_emulate: 0,
      pf_guest: 1,
    });
    auditTdpMmu(g.mmu, { full: true });
  });

  it('SVM: no such check (KVM turns allow_smaller_maxphyaddr off with NPT): the #NPF is an ordinary fault on a gpa no memslot holds', async () => {
    const g = await handGuest('svm', { maxPhyAddr: 36, hostMaxPhyAddr: 46 });
    g.map(0x1000, 2 ** 40 + 0x5000);
    g.tryRead(0x1000);
    // Exits 4-7: the guest tables. Exit 8: npf_interception -> kvm_mmu_page_fault (pf_taken) -> no memslot:
    // an MMIO spte is cached (the gfn is below the host's MAXPHYADDR, kvm_mmu_max_gfn) and the access is
    // emulated (pf_emulate). What the emulator then does is core's: its walk of the guest's tables, under the
    // guest's MAXPHYADDR, injects the reserved-bit #PF (KVM's emulator would use the #NPF's gpa, gpa_available).
    expect(pick(g.c(), 'exits', 'exits.VMEXIT_NPF', 'pf_taken', 'pf_emulate', 'pf_mmio_spte_created', 'insn_emulation')).toEqual({
      exits: BOOT + 5,
      'exits.VMEXIT_NPF': 5,
      pf_taken: 5,
      pf_emulate: 1,
      pf_mmio_spte_created: 1,
      insn_emulation: 1,
    });
    auditTdpMmu(g.mmu, { full: true });
  });
});

describe('TDP with a host MAXPHYADDR of 52 on SVM', () => {
  it('has no reserved bit for MMIO sptes: no MMIO caching, every MMIO access is a not-present #NPF', async () => {
    // kvm_mmu_reset_all_pte_masks: bit 51 is reserved only when the host MAXPHYADDR is below 52.
    const g = await handGuest('svm', { hostMaxPhyAddr: 52 });
    g.map(0x1000, MMIO);
    g.tryRead(0x1000);
    g.tryRead(0x1000);
    expect(pick(g.c(), 'exits.VMEXIT_NPF', 'pf_mmio_spte_created', 'pf_taken', 'mmio_exits')).toEqual({
      'exits.VMEXIT_NPF': 6, // 4 guest tables + 2 MMIO accesses
      pf_mmio_spte_created: 0,
      pf_taken: 6,
      mmio_exits: 2,
    });
  });
});
