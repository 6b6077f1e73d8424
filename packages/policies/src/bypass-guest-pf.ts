import { PFERR_PRESENT, type FaultPolicy, type NonPresentSpteEncoding, type PageFaultFilter } from '@vmexit/core';
import { z } from 'zod';
import { PolicyError } from './errors.js';

/**
 * KVM's trap value (`shadow_trap_nonpresent_pte = ~0xffeull` = 0xFFFFFFFFFFFFF001): P=1 and every bit from
 * 12 up set, so each reserved address bit is set and the hardware walk faults with P=1|RSVD. As 32-bit halves.
 */
export const SHADOW_TRAP_NONPRESENT_PTE_LO = 0xfffff001;
export const SHADOW_TRAP_NONPRESENT_PTE_HI = 0xffffffff;
/** KVM's notrap value (`shadow_notrap_nonpresent_pte = 0`): P=0, a fault that no longer exits. */
export const SHADOW_NOTRAP_NONPRESENT_PTE = 0;

/** The options of the `bypass-guest-pf` policy: none (an unknown key is an error naming it). */
export const bypassGuestPfOptions = z.strictObject({});
/** The options `bypass-guest-pf` runs with (see `bypassGuestPfOptions`). */
export type BypassGuestPfOptions = z.output<typeof bypassGuestPfOptions>;

/**
 * `bypass-guest-pf` (KVM c7addb902054, "Allow not-present guest page faults to bypass kvm", 2007: vmx.c
 * vmx_vcpu_setup, mmu.c kvm_mmu_set_nonpresent_ptes). VMX only: PFEC_MASK = PFEC_MATCH = 1 with exception-bitmap
 * bit 14 set, so by the SDM's rule (Vol. 3C
 * §25.6.3: a #PF exits iff EB[14] XOR ((PFEC & MASK) != MATCH)) only faults with P=1 exit; a P=0 fault goes
 * straight to the guest's IDT. The shadow MMU then encodes a non-present spte two ways: notrap (0, P=0) where
 * it knows the guest pte is not present, so the guest's own fault costs no exit, and trap (P=1 with reserved
 * bits, a P=1|RSVD fault that exits) everywhere else.
 *
 * A bypassed fault carries the error code the hardware computed on the shadow tables, with the EFER in effect
 * in the guest, and KVM runs a shadow-paged guest with EFER.NX set whatever the guest wrote (vmx.c
 * `update_transition_efer` keeps the host's NX without EPT; svm.c `svm_set_efer`: "Shadow paging assumes NX
 * to be available"). So on KVM an instruction fetch from a not-present page reached a PAE or 4-level guest with
 * EFER.NXE = 0 with I/D = 1 (SDM Vol. 3A §4.7), where its own hardware gives I/D = 0. The model follows the
 * SDM: shadow pages of a guest with EFER.NXE = 0 stay all-trap (mmu-shadow `notrapAllowed`), so such a guest's
 * not-present faults exit and are injected with the guest walk's own error code, as every exiting fault is.
 *
 * Refused on SVM, which cannot filter #PF intercepts by error code (APM Vol. 2 §15.12: the intercept is all
 * or nothing; the composition fails because backend-svm binds no `PageFaultFilter`), and under two-dimensional
 * paging (KVM set `bypass_guest_pf = 0` with EPT: there are no shadow ptes to encode, and #PF is not intercepted).
 *
 * @example
 * // vmexit.config.json
 * { "backend": "vmx", "mmu": "shadow", "policies": [{ "use": "pte-update" }, { "use": "bypass-guest-pf" }] }
 */
export const bypassGuestPf: FaultPolicy<BypassGuestPfOptions> = {
  name: 'bypass-guest-pf',
  description: 'VMX: not-present guest #PFs go straight to the guest (PFEC_MASK = PFEC_MATCH = 1); trap / notrap non-present sptes (KVM 2007)',
  needs: ['PageFaultFilter', 'NonPresentSpteEncoding'],
  optionsSchema: bypassGuestPfOptions,
  // It programs the hardware and counts nothing of its own: its effect is in the exits (fewer #PF exits).
  counters: [],
  setup(ctx) {
    if (ctx.mmu.name !== 'shadow') {
      throw new PolicyError(
        `policy 'bypass-guest-pf' needs shadow paging: under two-dimensional paging (mmu '${ctx.mmu.name}') #PF is not intercepted and there are no shadow ptes to encode (KVM forces bypass_guest_pf = 0 with EPT)`,
      );
    }
    const filter = ctx.capability<PageFaultFilter>('PageFaultFilter');
    for (const state of ctx.backendStates) filter.setPfecMaskMatch(state, PFERR_PRESENT, PFERR_PRESENT);
    ctx
      .capability<NonPresentSpteEncoding>('NonPresentSpteEncoding')
      .setNonPresentSptes(SHADOW_TRAP_NONPRESENT_PTE_LO, SHADOW_TRAP_NONPRESENT_PTE_HI, SHADOW_NOTRAP_NONPRESENT_PTE, SHADOW_NOTRAP_NONPRESENT_PTE);
  },
};
