/**
 * @vmexit/backend-vmx: Intel VMX (SDM Vol. 3C) for vmexit. Public: the module, the backend class, its VMCS
 * state, its error class, and the basic exit reasons (SDM Vol. 3C Appendix C) with their names; the VM-execution control and
 * qualification bits are internal.
 *
 * @module
 */
export {
  EXIT_REASON_APIC_ACCESS,
  EXIT_REASON_CPUID,
  EXIT_REASON_CR_ACCESS,
  EXIT_REASON_DR_ACCESS,
  EXIT_REASON_EPT_MISCONFIG,
  EXIT_REASON_EPT_VIOLATION,
  EXIT_REASON_EXCEPTION_NMI,
  EXIT_REASON_EXTERNAL_INTERRUPT,
  EXIT_REASON_HLT,
  EXIT_REASON_INTERRUPT_WINDOW,
  EXIT_REASON_INVALID_STATE,
  EXIT_REASON_INVD,
  EXIT_REASON_INVEPT,
  EXIT_REASON_INVLPG,
  EXIT_REASON_INVPCID,
  EXIT_REASON_INVVPID,
  EXIT_REASON_IO_INSTRUCTION,
  EXIT_REASON_MSR_READ,
  EXIT_REASON_MSR_WRITE,
  EXIT_REASON_NMI_WINDOW,
  EXIT_REASON_PML_FULL,
  SECONDARY_EXEC_ENABLE_PML,
  EXIT_REASON_TASK_SWITCH,
  EXIT_REASON_TRIPLE_FAULT,
  EXIT_REASON_VMCALL,
  EXIT_REASON_XSETBV,
  exitReasonName,
  VMX_EXIT_REASON_NAMES,
} from './constants.js';
export { BackendError, type BackendErrorCode } from './errors.js';
export { Vmcs } from './state.js';
export { VmxBackend } from './backend.js';
export { vmxModule, vmxModule as default } from './module.js';
