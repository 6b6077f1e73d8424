import { describe, expect, it } from 'vitest';
import { runNative, runTdp, bootCounters4k, TDP_BACKENDS } from './vm.js';

// fork-cow on TDP, against the real guest OS model on a VM made by createVm (16 MiB = 4096 guest frames):
// a parent writes its 64 pages, then forks 2 children one after the other; each child writes 32 of the pages
// (copy-on-write) and exits, and after each the parent writes all 64 again.
//
// What exits, over the whole run (boot included):
// - the CR0 and CR4 writes whose paging bits the hypervisor owns and the EFER write: 3 exits (VMX:
//   CR_ACCESS x2 + MSR_WRITE; SVM: VMEXIT_CR0_WRITE, VMEXIT_CR4_WRITE, VMEXIT_MSR); the CR3 loads of every
//   fork, exit and context switch do not exit under TDP (no CR3-load exiting / CR3 intercept);
// - one EPT violation (VMX exit 48) / #NPF per guest-physical frame, at the hardware's first access to it,
//   whether as a guest paging-structure entry (the page-table pages of the kernel, of the parent, of each
//   child) or as data. The kernel touches every free frame through its direct map at boot, so that is 4094
//   frames: all but frame 0 (never touched) and frame 4 (the zero page, never written, so never read under
//   the guest's tables). Each maps one 4 KiB leaf (pf_fixed, pages_4k) and never again: the next access to
//   the frame, from any process, hits that leaf. The TDP tables: PML4 + PDPT + PD + 8 PTs = 11 pages.
// What does not exit: the guest's own #PFs, all 256 of the measured window: 64 demand-zero faults of the
// parent's first pass, 2 x 32 COW faults of the children (the guest copies the page into a frame that was
// mapped at boot), 2 x 64 write-protect faults of the parent after each child (it owns the page alone again,
// and makes it writable in place). The guest's handler runs directly (no #PF intercept, no pf_guest), and its
// INVLPGs and pte writes are its own business: the window has no exit at all.
//
// With 2 MiB host pages (`hostPages: '2m'`, `--host-pages 2m`) one leaf maps each 2 MiB of the memslot: 8
// violations for the 16 MiB, 8 pages_2m, and the TDP tables are PML4 + PDPT + PD = 3 pages. The guest sees
// the same machine: the same faults and the same final memory as natively and with 4 KiB host pages.
const WL = 'fork-cow:pages=64,forks=2';
const GUEST_FAULTS = { total: 256, 'demand-zero': 64, cow: 64, 'wp-reuse': 128 };

describe('fork-cow under TDP', () => {
  const native = runNative(WL);

  for (const [backend, crExits, violation] of TDP_BACKENDS) {
    it(`${backend}: 3 control-register exits + 4094 second-stage faults at boot; the 256 guest #PFs of fork and COW exit none`, async () => {
      const { total, window, out } = await runTdp({ backend, mmu: 'tdp' }, WL);
      expect(total).toMatchObject(bootCounters4k(crExits, violation));
      expect(total.pages_2m ?? 0).toBe(0);
      expect(total.pf_guest ?? 0).toBe(0); // nothing injected: the guest takes its own faults
      expect(window.exits).toBe(0);
      expect(window['guest.page_faults']).toBe(256);
      expect(out.result.guest.faults).toMatchObject(GUEST_FAULTS);
      expect(out.result.guest.faults).toEqual(native.result.guest.faults);
      expect(out.result.memoryDigest).toBe(native.result.memoryDigest);
    });

    it(`${backend}: with 2 MiB host pages, 8 huge leaves map the 16 MiB (8 second-stage faults), same faults and memory digest as 4 KiB`, async () => {
      const { total, window, out } = await runTdp({ backend, mmu: 'tdp', hostPages: '2m' }, WL);
      expect(total).toMatchObject({ exits: 3 + 8, ...crExits, [violation]: 8, pf_fixed: 8, pages_2m: 8, tdp_mmu_pages: 3 });
      expect(total.pages_4k ?? 0).toBe(0);
      expect(window.exits).toBe(0);
      expect(out.result.guest.faults).toEqual(native.result.guest.faults);
      expect(out.result.memoryDigest).toBe(native.result.memoryDigest);
      // Fewer references per walk: the final address and each guest table's gpa go through 3 levels, not 4.
      expect(total.walk_refs! / total.walks!).toBeLessThan(24);
    });
  }
});
