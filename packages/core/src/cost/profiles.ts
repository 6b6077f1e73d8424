import { VM_EXIT_KINDS, type VmExitKind } from '../exits/vm-exit.js';
import type { CostFigure, CostProfile } from './model.js';

// Sources. Each figure says what its source gives; where a source gives no number for what is priced, the
// figure is this project's estimate (basis 'estimate') and says so. docs/cost-models.md explains each figure.
const XEN_SVM =
  'Xen commit f64b7618e11930c5402b02a85db112b72a2beb2b "svm: Avoid VMSAVE/VMLOAD/VMSAVE/VMLOAD sequence on every vmexit/vmentry" (Keir Fraser): a null hypercall costs ~3,300 cycles (after the fix saved ~650) on an AMD Athlon 64 X2, Xen\'s exit + entry with its trivial handler';
const ROTH_2020 =
  'M. Roth, LKML Dec 2020 (lkml.iu.edu/hypermail/linux/kernel/2012.2/00527.html), SVM VMLOAD/VMSAVE rework, AMD (SEV work), "current v2 patch, sample 2": a KVM_RUN ioctl round trip of 2,528 cycles, ioctl entry -> pre-VMRUN +576, pre-VMRUN -> post-VMRUN +1,360, post-VMRUN -> ioctl exit +592 (sample 1: 576 + 1,376 + 576 = 2,528)';
const CPUID_PROBE =
  "a CPUID loop in a user-space program (CPUID always exits, SDM Vol. 3C §26.1.2) on this project's cloud VM (2.1 GHz Xeon, KVM host; docs/cost-models.md): a CPUID round trip from user space 1.30-1.86 us = 2,730-3,900 cycles (6 runs)";
const MEASURED_FAULT =
  "measured on this project's cloud VM (2.1 GHz Xeon, the VM's own kernel; docs/cost-models.md): first write to a fresh anonymous page 1.8-2.6 us incl. zeroing = 3,780-5,460 cycles; first read 0.75-1.0 us";
const UPDATE_PTE_2007 =
  'KVM commit 0028425f647b "KVM: Update shadow pte on write to guest pte" (Avi Kivity, 2007) says only that removing one of three exits per guest fault cut kbuild time ~10%, no cycle figure';
const SPLITX_NO_HANDLER_FIGURE =
  'no source gives the cycles of a shadow page-fault handler: SplitX (Landau, Ben-Yehuda, Gordon, WIOV 2011) gives the direct exit cost (~2,000 cycles, Nehalem X5570) and says only that "the indirect and synchronous cost can in certain cases be an order of magnitude higher"';
const NO_KIND_FIGURES = 'no source on record gives a round trip per exit kind, so every kind is priced at the same figure';

const fig = (cycles: number, basis: CostFigure['basis'], source: string): CostFigure => ({ cycles, basis, source });

/** One figure for every exit kind (see NO_KIND_FIGURES). */
function everyKind(f: CostFigure): Record<VmExitKind, CostFigure> {
  return Object.fromEntries(VM_EXIT_KINDS.map((k) => [k, f])) as Record<VmExitKind, CostFigure>;
}

/**
 * 2007-era hardware: first-generation hardware virtualization without EPT/NPT, KVM as of 2.6.2x (shadow
 * paging only). The only exit round trip on record for that generation in our sources is AMD's (Xen's null
 * hypercall on an Athlon 64 X2); no Core 2 (VT-x) figure is on record, so an Intel host of that era is priced
 * with the AMD figure, which is an estimate for it. The user-space exit and the guest fault are today's
 * figures, estimates too; the walk reference is Core 2's L2 latency.
 */
export const PROFILE_2007: CostProfile = {
  name: 'core2-2007',
  description: '2007-era first-generation VT-x/AMD-V host, no EPT/NPT (exit figure from an AMD Athlon 64 X2; no Core 2 figure on record)',
  exitRoundTrip: everyKind(
    fig(3300, 'published', `${XEN_SVM}; ${NO_KIND_FIGURES}; for a Core 2 (VT-x) host an estimate, no Intel figure of that era is on record`),
  ),
  userspaceExit: fig(
    1200,
    'estimate',
    `no 2007 figure on record; estimate: about the user-space part of today's KVM_RUN round trip (${ROTH_2020}: 2,528 - 1,360 = 1,168)`,
  ),
  handler: {
    pf_fixed: fig(1650, 'estimate', `${SPLITX_NO_HANDLER_FIGURE}; estimate: half this profile's exit round trip`),
    pf_guest: fig(1650, 'estimate', `${SPLITX_NO_HANDLER_FIGURE}; estimate: a guest walk plus the injection, priced like pf_fixed`),
    insn_emulation: fig(3300, 'estimate', `${UPDATE_PTE_2007}; estimate: decoding and emulating one instruction priced as one more exit round trip`),
  },
  guestFault: fig(3780, 'estimate', `no 2007 figure on record; estimate: today's measurement, its lower end (${MEASURED_FAULT})`),
  walkReference: fig(
    14,
    'published',
    'Intel 64 and IA-32 Architectures Optimization Reference Manual, Intel Core microarchitecture: L2 load latency 14 cycles (paging-structure entries mostly hit L2)',
  ),
};

/** A current server (AMD EPYC / Intel Xeon class, KVM with the 2020s exit path). */
export const PROFILE_SERVER: CostProfile = {
  name: 'server-2020s',
  description: 'current server: AMD EPYC / Xeon class host, KVM 5.x-6.x exit path (exit figure from AMD)',
  exitRoundTrip: everyKind(fig(1360, 'published', `${ROTH_2020}: the VMRUN round trip, 1,360; ${NO_KIND_FIGURES}`)),
  userspaceExit: fig(
    1168,
    'derived',
    `${ROTH_2020}: the ioctl round trip less the VMRUN round trip, 2,528 - 1,360 = 1,168 (576 + 592: KVM_RUN's own path around VMRUN; the system call and the VMM's handling are not in it)`,
  ),
  handler: {
    pf_fixed: fig(680, 'estimate', `${SPLITX_NO_HANDLER_FIGURE}; estimate: half this profile's exit round trip`),
    pf_guest: fig(680, 'estimate', `${SPLITX_NO_HANDLER_FIGURE}; estimate: a guest walk plus the injection, priced like pf_fixed`),
    insn_emulation: fig(1360, 'estimate', `${UPDATE_PTE_2007}; estimate: decoding and emulating one instruction priced as one more exit round trip`),
  },
  guestFault: fig(3780, 'measured', `${MEASURED_FAULT}; the lower end`),
  walkReference: fig(
    12,
    'published',
    'AnandTech, "The Intel Skylake-X Review" (2017), cache table: Skylake-SP L2 latency 11-13 cycles, the middle taken (paging-structure entries mostly hit L2)',
  ),
};

/** This project's own cloud VM (a nested or user-space-assisted host): the measured CPUID round trip. */
export const PROFILE_CLOUD_VM: CostProfile = {
  ...PROFILE_SERVER,
  name: 'cloud-vm-measured',
  description: 'the cloud VM this project was measured on (KVM host, 2.1 GHz Xeon): exits as measured by a CPUID loop',
  exitRoundTrip: everyKind(fig(2730, 'measured', `${CPUID_PROBE}; the quietest run; ${NO_KIND_FIGURES} (CPUID's is used for all)`)),
};

/** The built-in cost models by name (`--cost-model`): core2-2007, server-2020s and cloud-vm-measured (docs/cost-models.md). */
export const COST_PROFILES: Readonly<Record<string, CostProfile>> = {
  [PROFILE_2007.name]: PROFILE_2007,
  [PROFILE_SERVER.name]: PROFILE_SERVER,
  [PROFILE_CLOUD_VM.name]: PROFILE_CLOUD_VM,
};

/** The built-in cost model named `name`, or undefined: its own names only (`toString` is in every object, and no model). */
export function builtInCostProfile(name: string): CostProfile | undefined {
  return Object.hasOwn(COST_PROFILES, name) ? COST_PROFILES[name] : undefined;
}

/** The name of the cost model a variant uses when it names none (server-2020s). */
export const DEFAULT_COST_PROFILE = PROFILE_SERVER.name;
