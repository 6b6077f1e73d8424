import { describe, expect, it } from 'vitest';
import { runTdp, bootCounters4k, TDP_BACKENDS } from './vm.js';

// demand-fault on TDP, against the real guest OS model on a VM made by createVm (16 MiB = 4096 guest frames).
//
// Boot (guest/src/os/state.ts, kernel.ts): frame 0 is reserved, frames 1-3 hold the idle top table and the
// direct map's tables, frame 4 is the zero page; the kernel then programs CR4, EFER, CR3, CR0 and touches
// every free frame through its direct map (a read and the same value written back).
// Under TDP nothing of the guest's own paging exits: its #PFs, its CR3 loads (no CR3-load exiting / CR3
// intercept) and INVLPGs go straight to the guest. What exits:
// - the CR0 and CR4 writes whose paging bits the hypervisor owns (VMX: CR_ACCESS through the guest/host
//   masks; SVM: VMEXIT_CR0_WRITE, VMEXIT_CR4_WRITE), and the EFER write (MSR intercept): 3 exits;
// - one EPT violation / #NPF per guest frame at the first access of the hardware to it, as a guest
//   paging-structure entry (frames 1-3, the process's page tables) or as data: 4094 = every frame but
//   frame 0 (never touched) and frame 4 (the zero page: demand-fault writes, so it is never read). Each maps
//   one 4 KiB leaf (pf_fixed, pages_4k), never twice: the next access to the frame hits the leaf.
// The TDP tables for 16 MiB: 1 PML4 + 1 PDPT + 1 PD + 8 PTs = 11 pages (tdp_mmu_pages).
// The workload's window (the touching of N pages after the warm-up) has no exit at all: every frame it
// uses is mapped already, and its N guest #PFs are the guest's own.
const N = 600;
const WL = `demand-fault:pages=${N}`;

describe('demand-fault under TDP', () => {
  for (const [backend, crExits, violation] of TDP_BACKENDS) {
    it(`${backend}: 3 control-register exits + 4094 second-stage faults, none in the window of ${N} guest #PFs`, async () => {
      const { total, window, out } = await runTdp({ backend, mmu: 'tdp' }, WL);
      expect(total).toMatchObject(bootCounters4k(crExits, violation));
      expect(total['exits.EXCEPTION_NMI'] ?? total['exits.VMEXIT_EXCP_PF'] ?? 0).toBe(0);
      expect(total.pf_guest ?? 0).toBe(0); // nothing injected: the guest takes its own faults
      expect(window.exits).toBe(0);
      expect(window['guest.page_faults']).toBe(N);
      expect(out.result.guest.faults.total).toBe(N);
    });
  }
});
