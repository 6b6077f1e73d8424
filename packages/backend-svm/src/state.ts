import { PF_VECTOR, type MmuMode } from '@vmexit/core';
import {
  CR0_CD,
  CR0_NW,
  CR0_RESET,
  INTERCEPT_CR0_WRITE,
  INTERCEPT_CR3_READ,
  INTERCEPT_CR3_WRITE,
  INTERCEPT_CR4_WRITE,
  INTERCEPT_INVLPG,
  INTERCEPT_MSR_PROT,
  INTERCEPT_SELECTIVE_CR0,
  MSR_EFER,
} from './constants.js';
import { CR0_PG, CR0_WP } from '@vmexit/core';

/**
 * The VMCB fields that decide MMU-related exits, and the exit fields the processor writes (APM Vol. 2
 * Appendix B, "Layout of VMCB"). Field names follow the APM (and KVM's `struct vmcb_control_area`). One per vCPU.
 */
export class Vmcb {
  // Control area
  /** Offset 000h: bits 15:0 intercept reads of CR0-15, bits 31:16 writes of CR0-15. */
  interceptCr = 0;
  /** Offset 008h: bit n intercepts exception vector n. No error-code filtering exists (APM §15.12). */
  interceptExceptions = 0;
  /** Offset 00Ch: intercept vector 3 (selective CR0 write bit 5, INVLPG bit 25, MSR_PROT bit 28, ...). */
  interceptMisc1 = 0;
  /** The MSR permission map's write bits (offset 048h MSRPM_BASE_PA, §15.11), as a set of MSR numbers. */
  readonly msrpmWrite = new Set<number>();
  /** Offset 090h bit 0: NP_ENABLE; offset 0B0h: N_CR3 (§15.25.3). */
  npEnable = false;
  nCr3 = 0;
  /**
   * Not a VMCB field: the host's paging mode at VMRUN, which the nested tables follow (§15.25.5): 4-level, or
   * 5-level with the host's CR4.LA57. Kept here because it is per-VMRUN state the second stage depends on.
   */
  nptLevels: 4 | 5 = 4;
  /**
   * State save area offset 558h: CR0, the value the guest runs with (KVM's `hcr0`, see `hostCr0`), which the
   * selective CR0 write intercept compares a write with.
   */
  cr0 = 0;
  /** Offset 0A8h: EVENTINJ, low half (vector, type, EV, V) and high half (error code). */
  eventInj = 0;
  eventInjErr = 0;
  /** Offsets 070h/078h/080h: EXITCODE, EXITINFO1, EXITINFO2. */
  exitCode = 0;
  exitInfo1 = 0;
  exitInfo2 = 0;
}

/**
 * The CR0 KVM puts in the VMCB for a guest CR0 of `cr0` (svm.c `svm_set_cr0`): with shadow paging PG and WP
 * forced on, and CD and NW cleared (KVM_X86_QUIRK_CD_NW_CLEARED, on by default).
 */
export function hostCr0(cr0: number, shadow: boolean): number {
  let h = cr0 >>> 0;
  if (shadow) h = (h | CR0_PG | CR0_WP) >>> 0;
  return (h & ~(CR0_CD | CR0_NW)) >>> 0;
}

/**
 * A VMCB set up as KVM sets it up (arch/x86/kvm/svm/svm.c `init_vmcb`):
 * - shadow paging: #PF intercepted (`set_exception_intercept(svm, PF_VECTOR)` when !npt_enabled), CR3 reads and
 *   writes intercepted, INVLPG intercepted, CR0 and CR4 writes intercepted;
 * - nested paging (NPT): none of #PF, CR3, INVLPG intercepted ("clr_intercept(svm, INTERCEPT_INVLPG)",
 *   "clr_cr_intercept(svm, INTERCEPT_CR3_READ/WRITE)"), NP_ENABLE set (nCR3 when the MMU has a root);
 *   CR0 and CR4 writes stay intercepted.
 * Both intercept writes of IA32_EFER through the MSR permission map, and set the selective CR0 write intercept.
 * The save area's CR0 is the RESET CR0 (6000_0010h) as `svm_set_cr0` makes it, which differs from the guest's
 * (CD, NW cleared; PG, WP set under shadow paging), so the CR0 write intercept is on until a CR0 write is handled.
 */
export function createVmcb(mmu: MmuMode): Vmcb {
  const v = new Vmcb();
  v.interceptMisc1 = INTERCEPT_MSR_PROT | INTERCEPT_SELECTIVE_CR0;
  v.cr0 = hostCr0(CR0_RESET, mmu === 'shadow');
  v.msrpmWrite.add(MSR_EFER);
  v.interceptCr = INTERCEPT_CR0_WRITE | INTERCEPT_CR4_WRITE;
  if (mmu === 'shadow') {
    v.interceptExceptions = 1 << PF_VECTOR;
    v.interceptCr |= INTERCEPT_CR3_WRITE | INTERCEPT_CR3_READ;
    v.interceptMisc1 |= INTERCEPT_INVLPG;
  } else {
    v.npEnable = true;
  }
  return v;
}
