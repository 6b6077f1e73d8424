import { hexU64 as hex } from '../arch/hex.js';

/**
 * What the hardware reports for one exit, in the backend's own terms: VMX exit reason and VMCS exit fields
 * (SDM Vol. 3C ch. 28), SVM EXITCODE and EXITINFO1/2 (APM Vol. 2 §15.6, Appendix C). `code` is the exit
 * reason (VMX) or exit code (SVM); `name` is the manual's name for it (`EXCEPTION_NMI`, `VMEXIT_NPF`).
 */
export interface HardwareExit {
  readonly backend: 'vmx' | 'svm';
  readonly code: number;
  readonly name: string;
  /** The exit-information fields the hardware filled, by their manual names (exitQualification, exitInfo1, ...). */
  readonly fields: Readonly<Record<string, number>>;
}

/**
 * A `HardwareExit` that its owner refills for every exit it describes (`Backend.exceptionExitInto`): writable,
 * with one `fields` object reused.
 */
export interface HardwareExitBuffer {
  backend: 'vmx' | 'svm';
  code: number;
  name: string;
  fields: Record<string, number>;
}

/**
 * How an exit was resolved:
 * - `resume`: re-enter the guest, the access re-executes (the translation was fixed, or the event handled);
 * - `inject`: re-enter the guest with an exception injected (the guest's own fault);
 * - `emulate`: the hypervisor emulates the access (a write to a write-protected guest page table);
 * - `userspace`: the exit goes on to user space (KVM_EXIT_MMIO), which completes the access.
 */
export type ExitResolution =
  | { readonly kind: 'resume' }
  | { readonly kind: 'inject'; readonly vector: number; readonly errorCode: number }
  | { readonly kind: 'emulate' }
  | { readonly kind: 'userspace'; readonly reason: 'mmio'; readonly gpa: number };

/** Shared resolutions (no allocation per exit). */
export const RESUME: ExitResolution = Object.freeze({ kind: 'resume' });
/** The shared `emulate` resolution: the hypervisor emulates the faulting access (a write to a write-protected guest page table). */
export const EMULATE: ExitResolution = Object.freeze({ kind: 'emulate' });

interface ExitBase {
  /** The vCPU that exited. */
  readonly vcpu: number;
  /** The exit's number on its vCPU, from 1. */
  readonly seq: number;
  readonly hw: HardwareExit;
  /** Set by the policy or handler that resolved the exit; null while unresolved. */
  resolution: ExitResolution | null;
  /** The name of the policy that resolved it, or 'mmu' for the MMU's handler. */
  resolvedBy: string | null;
}

/** An intercepted exception: #PF (vector 14) or another vector the backend intercepts. */
export interface ExceptionExit extends ExitBase {
  readonly kind: 'exception';
  readonly vector: number;
  readonly errorCode: number;
  /** The faulting linear address (CR2 for a #PF; the guest's CR2 is not yet written). */
  readonly address: number;
  /** The PFERR_* kind of the access that faulted. */
  readonly access: number;
}

/**
 * MOV to CR0/CR3/CR4 (`cr` 0, 3, 4) or WRMSR IA32_EFER (`cr` 0xc0000080), after its architectural effect;
 * or, when `faulted`, a MOV to CR whose checks fail (a present PAE PDPTE with a reserved bit): it exits
 * before the fault (SDM Vol. 3C §26.1.1), the register keeps `oldValue`, and the handler injects #GP(0).
 */
export interface CrWriteExit extends ExitBase {
  readonly kind: 'cr-write';
  readonly cr: number;
  readonly value: number;
  readonly oldValue: number;
  readonly faulted: boolean;
}

/** An INVLPG exit: the guest invalidated the TLB entry of linear address `va` (VMX exit reason 14, SVM VMEXIT_INVLPG 0x79). */
export interface InvlpgExit extends ExitBase {
  readonly kind: 'invlpg';
  readonly va: number;
}

/** A second-stage fault: EPT violation or misconfiguration (VMX), NPF (SVM). */
export interface NestedFaultExit extends ExitBase {
  readonly kind: 'nested-fault';
  readonly gpa: number;
  readonly address: number;
  readonly access: number;
  /** PFERR bits of the fault, plus 2^32 (final translation) or 2^33 (guest page-table access), as KVM's. */
  readonly errorCode: number;
  /**
   * Set on a PML-full exit (VMX exit reason 62, SDM Vol. 3C §29.3.6): not a fault but the processor's full
   * page-modification log; `gpa` is the address it could not log, `errorCode` 0.
   */
  readonly pmlFull?: boolean;
}

/** An access that reached a guest-physical address with no RAM (or a write to read-only RAM). */
export interface MmioExit extends ExitBase {
  readonly kind: 'mmio';
  readonly gpa: number;
  readonly address: number;
  readonly access: number;
}

/** One VM exit, as it travels through a vCPU's exit pipeline. */
export type VmExit = ExceptionExit | CrWriteExit | InvlpgExit | NestedFaultExit | MmioExit;
/** The `kind` of a VmExit: exception, cr-write, invlpg, nested-fault or mmio. */
export type VmExitKind = VmExit['kind'];

/** Every VmExitKind, in a fixed order (counters and reports list exits in this order). */
export const VM_EXIT_KINDS: readonly VmExitKind[] = ['exception', 'cr-write', 'invlpg', 'nested-fault', 'mmio'];

/** A one-line description of an exit, for errors and logs. */
export function describeExit(exit: VmExit): string {
  const head = `vCPU ${exit.vcpu} exit #${exit.seq} ${exit.hw.name} (${exit.hw.backend} ${hex(exit.hw.code)})`;
  switch (exit.kind) {
    case 'exception':
      return `${head}: exception ${exit.vector}, error code ${hex(exit.errorCode)}, address ${hex(exit.address)}`;
    case 'cr-write':
      return `${head}: write of ${hex(exit.value)} to ${exit.cr === 0xc0000080 ? 'EFER' : `CR${exit.cr}`}${exit.faulted ? ' (faults: #GP)' : ''}`;
    case 'invlpg':
      return `${head}: INVLPG ${hex(exit.va)}`;
    case 'nested-fault':
      if (exit.pmlFull === true) return `${head}: page-modification log full at gpa ${hex(exit.gpa)}, address ${hex(exit.address)}`;
      return `${head}: second-stage fault at gpa ${hex(exit.gpa)}, error code ${hex(exit.errorCode)}, address ${hex(exit.address)}`;
    case 'mmio':
      return `${head}: MMIO at gpa ${hex(exit.gpa)}, address ${hex(exit.address)}`;
    default:
      return assertNever(exit);
  }
}

/** The JSON form of an exit (one line of an exit trace): addresses as "0x…" strings. */
export function exitToJson(exit: VmExit): Record<string, unknown> {
  const base: Record<string, unknown> = {
    vcpu: exit.vcpu,
    seq: exit.seq,
    kind: exit.kind,
    reason: exit.hw.name,
    code: exit.hw.code,
  };
  switch (exit.kind) {
    case 'exception':
      Object.assign(base, { vector: exit.vector, errorCode: exit.errorCode, address: hex(exit.address), access: exit.access });
      break;
    case 'cr-write':
      Object.assign(base, { cr: exit.cr, value: hex(exit.value), oldValue: hex(exit.oldValue) });
      if (exit.faulted) base.faulted = true;
      break;
    case 'invlpg':
      Object.assign(base, { va: hex(exit.va) });
      break;
    case 'nested-fault':
      Object.assign(base, { gpa: hex(exit.gpa), address: hex(exit.address), access: exit.access, errorCode: hex(exit.errorCode) });
      break;
    case 'mmio':
      Object.assign(base, { gpa: hex(exit.gpa), address: hex(exit.address), access: exit.access });
      break;
    default:
      assertNever(exit);
  }
  const fields: Record<string, string> = {};
  for (const [k, v] of Object.entries(exit.hw.fields)) fields[k] = hex(v);
  base.fields = fields;
  const r = exit.resolution;
  base.resolution =
    r === null
      ? null
      : r.kind === 'inject'
        ? { kind: r.kind, vector: r.vector, errorCode: r.errorCode }
        : r.kind === 'userspace'
          ? { kind: r.kind, reason: r.reason, gpa: hex(r.gpa) }
          : { kind: r.kind };
  base.resolvedBy = exit.resolvedBy;
  return base;
}

export function assertNever(x: never): never {
  throw new Error(`unexpected value ${JSON.stringify(x)}`);
}
