import { CR0_PE, CR0_PG, CR4_LA57, CR4_PAE, CR4_PCIDE, EFER_LMA, EFER_LME, PAGE_SIZE } from '../arch/constants.js';

/**
 * The architectural checks of MOV to CR0/CR4 and WRMSR IA32_EFER: each answers whether the write is #GP(0),
 * with the register unchanged. The vCPU makes them before the write takes effect (and the PDPTE load of PAE
 * paging after them); under a hypervisor that intercepts the write, the handler makes the same checks and
 * injects the #GP (KVM x86.c kvm_set_cr0 / kvm_set_cr4 / set_efer -> kvm_complete_insn_gp), so the guest sees
 * the same fault either way (see VcpuHooks.crWriteFault).
 *
 * Operands are numbers: a 32-bit value (0..2^32-1, or the negative int32 that `1 << 31` makes), or in 64-bit mode
 * a 64-bit one whose bits 63:32 are whatever lies above 2^32. The vCPU models no code segment: IA-32e mode
 * (EFER.LMA = 1) is 64-bit mode, where MOV to CR takes a 64-bit operand; elsewhere the operand is 32 bits
 * (Vol. 2B MOV: "The operand size for these instructions is always 32 bits in non-64-bit modes").
 */
export interface CrState {
  readonly cr0: number;
  readonly cr3: number;
  readonly cr4: number;
  readonly efer: number;
}

/** CR0.NW, bit 29, and CR0.CD, bit 30 (SDM Vol. 3A §2.5). */
const CR0_NW = 1 << 29;
const CR0_CD = 1 << 30;
/**
 * The reserved bits of CR0[31:0]: 6-15, 17, 19-28 (SDM Vol. 3A §2.5, Figure 2-7; KVM CR0_RESERVED_BITS). Setting
 * them is ignored, not a fault (§2.5: "Attempting to set any reserved bits in CR0[31:0] is ignored"; kvm_set_cr0:
 * "Write to CR0 reserved bits are ignored, even on Intel").
 */
export const CR0_RESERVED_LOW = 0x1ffaffc0;
/**
 * The CR4 bits of the modelled processor: VME, PVI, TSD, DE, PSE, PAE, MCE, PGE, PCE, OSFXSR, OSXMMEXCPT, UMIP,
 * LA57, FSGSBASE, PCIDE, OSXSAVE, SMEP, SMAP, PKE (bits 0-12, 16-18, 20-22): KVM's CR4_RESERVED_BITS (kvm_host.h)
 * leaves these and VMXE, CET and LAM_SUP to a guest whose CPUID has them (__cr4_reserved_bits); the model's vCPU
 * has no VMX (no nested virtualization), CET or LAM. Every other bit, 63:32 included, is reserved or belongs to a
 * feature the processor lacks: setting one is #GP(0) (SDM Vol. 3A §2.5, Vol. 2B MOV).
 */
const CR4_SUPPORTED = 0x771fff;
/**
 * The IA32_EFER bits of the modelled processor: SCE (0), LME (8), LMA (10, read-only: a WRMSR leaves it as it
 * is, KVM set_efer), NXE (11) (SDM Vol. 3A §2.2.1, Table 2-1). Every other bit of EDX:EAX is reserved: WRMSR
 * is #GP(0) (Vol. 2B WRMSR; KVM efer_reserved_bits). AMD's SVME, LMSLE, FFXSR, TCE and AUTOIBRS are not the
 * model's (KVM __kvm_valid_efer refuses them to a guest whose CPUID lacks the feature).
 */
const EFER_SUPPORTED = 0xd01;

/** The operand has bits above bit 31 (outside 0..2^32-1 and the int32 range). */
function upper32(value: number): boolean {
  return !(value >= -(2 ** 31) && value < 2 ** 32);
}

/**
 * MOV to CR0 of `value` is #GP(0) (Vol. 2B MOV, Protected Mode and 64-Bit Mode Exceptions; KVM kvm_is_valid_cr0,
 * kvm_set_cr0):
 * - in 64-bit mode, a bit of 63:32 set (§2.5);
 * - NW set with CD clear; PG set with PE clear;
 * - PG clear while CR4.PCIDE = 1, or in IA-32e mode (Vol. 2B MOV: "Attempting to clear CR0.PG" in 64-bit mode;
 *   Vol. 3A §9.8.5.4: IA-32e mode is left from compatibility mode, which the model does not have);
 * - PG set (from 0) with EFER.LME = 1 and CR4.PAE = 0 (§9.8.5: IA-32e mode needs PAE).
 * PAE paging's PDPTE load is the caller's (it needs memory).
 */
export function cr0WriteFaults(s: CrState, value: number): boolean {
  const lma = (s.efer & EFER_LMA) !== 0;
  if (lma && upper32(value)) return true;
  const v = value >>> 0;
  if ((v & CR0_NW) !== 0 && (v & CR0_CD) === 0) return true;
  if ((v & CR0_PG) !== 0 && (v & CR0_PE) === 0) return true;
  if ((v & CR0_PG) === 0 && (lma || (s.cr4 & CR4_PCIDE) !== 0)) return true;
  return (v & ~s.cr0 & CR0_PG) !== 0 && (s.efer & EFER_LME) !== 0 && (s.cr4 & CR4_PAE) === 0;
}

/** What MOV to CR0 of a `value` that passed `cr0WriteFaults` loads: its low 32 bits less the reserved ones. */
export function cr0Loaded(value: number): number {
  return ((value >>> 0) & ~CR0_RESERVED_LOW) >>> 0;
}

/**
 * MOV to CR4 of `value` is #GP(0) (Vol. 2B MOV; KVM kvm_is_valid_cr4, kvm_set_cr4):
 * - a reserved bit, or the bit of a feature the processor lacks, set (`CR4_SUPPORTED`; bits 63:32 in 64-bit mode);
 * - PCIDE set (from 0) outside IA-32e mode or with CR3[11:0] != 0 (§4.10.1: the PCID would not be CR3[11:0]);
 * - in IA-32e mode, PAE cleared or LA57 changed (§4.1.1, §4.5).
 * PAE paging's PDPTE load is the caller's.
 */
export function cr4WriteFaults(s: CrState, value: number): boolean {
  const lma = (s.efer & EFER_LMA) !== 0;
  if (lma && upper32(value)) return true;
  const v = value >>> 0;
  if ((v & ~CR4_SUPPORTED) !== 0) return true;
  if ((v & ~s.cr4 & CR4_PCIDE) !== 0 && (!lma || s.cr3 % PAGE_SIZE !== 0)) return true;
  return lma && ((v & CR4_PAE) === 0 || ((s.cr4 ^ v) & CR4_LA57) !== 0);
}

/**
 * WRMSR IA32_EFER of `value` (EDX:EAX) is #GP(0) (Vol. 2B WRMSR; KVM set_efer): a reserved bit set
 * (`EFER_SUPPORTED`, bits 63:32 included), or LME changed while CR0.PG = 1 (SDM Vol. 3A §9.8.5: "IA32_EFER.LME
 * cannot be modified while paging is enabled").
 */
export function eferWriteFaults(s: CrState, value: number): boolean {
  if (!(value >= 0 && value < 2 ** 32) || (value & ~EFER_SUPPORTED) !== 0) return true;
  return (s.cr0 & CR0_PG) !== 0 && ((value ^ s.efer) & EFER_LME) !== 0;
}

/** The operand of a MOV to CR as the instruction sees it: 64 bits in 64-bit mode (EFER.LMA = 1 here), else its low 32 bits. */
export function crOperand(s: CrState, value: number): number {
  return (s.efer & EFER_LMA) !== 0 ? value : value >>> 0;
}
