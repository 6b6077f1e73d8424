import type { CostFigure, CostProfile } from './model.js';

// Sources (see /work/shared/reference/perf.md §1.1-1.2 for the excerpts):
const XEN_SVM =
  'Xen commit f64b7618e11930c5402b02a85db112b72a2beb2b "svm: Avoid VMSAVE/VMLOAD/VMSAVE/VMLOAD sequence on every vmexit/vmentry" (Keir Fraser): null hypercall ~3,300 cycles on an AMD Athlon 64 X2';
const ROTH_2020 =
  'M. Roth, LKML Dec 2020 (lkml.iu.edu/hypermail/linux/kernel/2012.2/00527.html), SVM VMLOAD/VMSAVE rework on AMD EPYC: pre-VMRUN -> post-VMRUN 1,344-1,376 cycles; KVM_RUN ioctl entry/exit around it +560..+656 cycles each side, 2,528-2,576 in total';
const MEASURED_FAULT =
  'measured on this project\'s machine (perf.md §1.1, 2.1 GHz Xeon): first write to a fresh anonymous page 1.8-2.6 us incl. zeroing = 3,780-5,460 cycles; first read 0.75-1.0 us';
const UPDATE_PTE_2007 =
  'KVM commit 0028425f647b "KVM: Update shadow pte on write to guest pte" (Avi Kivity, 2007): removing one of three exits per guest fault cut kbuild time ~10%';
const SPLITX =
  'Landau, Ben-Yehuda, Gordon, "SplitX", WIOV 2011: direct exit cost ~2,000 cycles on a Nehalem X5570; "the indirect and synchronous cost can in certain cases be an order of magnitude higher"';

const fig = (cycles: number, basis: CostFigure['basis'], source: string): CostFigure => ({ cycles, basis, source });

/**
 * 2007-era hardware: first-generation AMD-V / VT-x without EPT/NPT, KVM as of 2.6.2x (shadow paging only).
 * The only exit round trip on record for that generation in our sources is Xen's null hypercall on an
 * Athlon 64 X2 (3,300 cycles after the fix, including Xen's trivial handler).
 */
export const PROFILE_2007: CostProfile = {
  name: 'core2-2007',
  description: '2007-era first-generation VT-x/AMD-V host (Athlon 64 X2 / Core 2 class), no EPT/NPT',
  exitRoundTrip: {
    exception: fig(3300, 'published', XEN_SVM),
    'cr-write': fig(3300, 'published', XEN_SVM),
    invlpg: fig(3300, 'published', XEN_SVM),
    'nested-fault': fig(3300, 'published', `${XEN_SVM} (no NPT on this generation; priced as any exit)`),
    mmio: fig(3300, 'published', XEN_SVM),
  },
  userspaceExit: fig(1200, 'derived', `${ROTH_2020}: the ioctl entry + exit part (~1,150-1,230), no 2007 figure on record, so a lower bound`),
  handler: {
    // A shadow fault handler walks the guest table (4 references) and installs an spte: SplitX's "order of
    // magnitude" indirect cost bounds it from above; half the exit round trip is the figure used.
    pf_fixed: fig(1650, 'derived', `${SPLITX}; taken as half the exit round trip of this profile`),
    pf_guest: fig(1650, 'derived', `${SPLITX}; a guest walk plus the injection, priced like pf_fixed`),
    insn_emulation: fig(3300, 'derived', `${UPDATE_PTE_2007}; decode + emulate of one instruction priced as one more exit round trip`),
  },
  guestFault: fig(3780, 'measured', `${MEASURED_FAULT}; the lower end (no 2007 figure on record)`),
  walkReference: fig(14, 'published', 'Intel 64 and IA-32 Architectures Optimization Reference Manual, Intel Core microarchitecture: L2 load latency 14 cycles (paging-structure entries mostly hit L2)'),
};

/** A current server (AMD EPYC / Intel Xeon class, KVM with the 2020s exit path). */
export const PROFILE_SERVER: CostProfile = {
  name: 'server-2020s',
  description: 'current server: AMD EPYC / Xeon class host, KVM 5.x-6.x exit path',
  exitRoundTrip: {
    exception: fig(1360, 'published', ROTH_2020),
    'cr-write': fig(1360, 'published', ROTH_2020),
    invlpg: fig(1360, 'published', ROTH_2020),
    'nested-fault': fig(1360, 'published', ROTH_2020),
    mmio: fig(1360, 'published', ROTH_2020),
  },
  userspaceExit: fig(1180, 'published', `${ROTH_2020}: ioctl entry -> pre-VMRUN plus post-VMRUN -> ioctl exit`),
  handler: {
    pf_fixed: fig(680, 'derived', `${SPLITX}; taken as half the exit round trip of this profile`),
    pf_guest: fig(680, 'derived', `${SPLITX}; a guest walk plus the injection, priced like pf_fixed`),
    insn_emulation: fig(1360, 'derived', `${UPDATE_PTE_2007}; decode + emulate of one instruction priced as one more exit round trip`),
  },
  guestFault: fig(3780, 'measured', MEASURED_FAULT),
  walkReference: fig(12, 'published', 'Intel 64 and IA-32 Architectures Optimization Reference Manual, Skylake server microarchitecture: L2 load latency ~12-14 cycles (paging-structure entries mostly hit L2)'),
};

/** This project's own cloud VM (a nested or user-space-assisted host): the measured CPUID round trip. */
export const PROFILE_CLOUD_VM: CostProfile = {
  ...PROFILE_SERVER,
  name: 'cloud-vm-measured',
  description: 'the cloud VM this project was measured on (KVM host, 2.1 GHz Xeon): exits as measured by a CPUID loop',
  exitRoundTrip: Object.fromEntries(
    Object.keys(PROFILE_SERVER.exitRoundTrip).map((k) => [
      k,
      fig(2730, 'measured', 'perf-scripts/vmexit_probe.c on this machine (perf.md §1.1): CPUID round trip 1.30-1.86 us = 2,730-3,900 cycles; the quietest run'),
    ]),
  ),
};

export const COST_PROFILES: Readonly<Record<string, CostProfile>> = {
  [PROFILE_2007.name]: PROFILE_2007,
  [PROFILE_SERVER.name]: PROFILE_SERVER,
  [PROFILE_CLOUD_VM.name]: PROFILE_CLOUD_VM,
};

export const DEFAULT_COST_PROFILE = PROFILE_SERVER.name;
